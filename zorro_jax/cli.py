"""Command-line options from (nested) frozen dataclass configs.

Every field becomes `--path.to.field VALUE` (e.g. `--grpo.steps 40 --grpo.loss.kl_coef 0.01`);
tuples take comma-separated values, booleans take true/false, optional fields take "none".
Validation stays in each dataclass's __post_init__, so a bad value fails with its message.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _leaf_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _leaf_type(args[0]), True
    return tp, False


def _parser_for(tp, optional):
    base = typing.get_origin(tp) or tp

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
            return text.lower() in ("true", "1", "yes")
        if base is tuple:
            (inner, *_) = typing.get_args(tp) or (str,)
            return tuple(inner(x) for x in text.split(",") if x.strip())
        return base(text)

    return parse


def _walk(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        leaf, optional = _leaf_type(tp)
        if dataclasses.is_dataclass(leaf):
            yield from _walk(leaf, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", leaf, optional


def add_config_args(parser: argparse.ArgumentParser, cls, defaults=None):
    """Add one `--a.b.c` option per leaf field of the (nested, frozen) dataclass `cls`; the help
    shows the value in `defaults`.
    """
    defaults = defaults or cls()
    for path, tp, optional in _walk(cls):
        value = defaults
        for part in path.split("."):
            value = getattr(value, part)
        parser.add_argument(f"--{path}", dest=path, type=_parser_for(tp, optional), default=None,
                            help=f"(default: {value!r})")


def _apply(obj, overrides: dict):
    """One dataclasses.replace per level, so each config validates once with all its changes."""
    changes = {k: _apply(getattr(obj, k), v) if isinstance(v, dict) else v for k, v in overrides.items()}
    return dataclasses.replace(obj, **changes)


def config_from_args(cls, args: argparse.Namespace, defaults=None):
    """Apply every option given on the command line to `defaults` (validated on the way)."""
    tree: dict = {}
    for path, _, _ in _walk(cls):
        value = getattr(args, path, None)
        if value is None:
            continue
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _apply(defaults or cls(), tree)
