"""Command-line options from (nested) frozen dataclass configs.

Every field becomes `--path.to.field VALUE` (e.g. `--grpo.steps 40 --grpo.loss.kl_coef 0.01`);
tuples take comma-separated values, booleans take true/false, optional fields take "none".
Validation stays in each dataclass's __post_init__, so a bad value fails with its message.
`--help` shows each field's comment from the config's source (the `# ...` lines above the field
or after it on its line) with its default: the configs document themselves in one place, which is
why this small module is extended rather than a CLI library added that would need the same text
again as docstrings or annotations.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
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


@functools.cache
def field_comments(cls) -> dict[str, str]:
    """{field name: its comment} from the dataclass's source: the `#` lines directly above the
    field and a comment at the end of its line; a field right below a commented one (no blank
    line between) shares that comment. Empty when the source cannot be read."""
    try:
        lines = textwrap.dedent(inspect.getsource(cls)).splitlines()
    except (OSError, TypeError):
        return {}
    out, prev_end, prev_text = {}, -2, ""
    for node in ast.parse("\n".join(lines)).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            prev_end = -2
            continue
        above, i = [], node.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            above.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        line = lines[node.end_lineno - 1]
        trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
        text = " ".join(x for x in (*above, trailing) if x)
        if not text and node.lineno - 1 == prev_end + 1:
            text = prev_text
        if text:
            out[node.target.id] = text
        prev_end, prev_text = node.end_lineno - 1, text
    return out


def _walk(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        leaf, optional = _leaf_type(tp)
        if dataclasses.is_dataclass(leaf):
            yield from _walk(leaf, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", leaf, optional, field_comments(cls).get(f.name, "")


def add_config_args(parser: argparse.ArgumentParser, cls, defaults=None, prefix: str = ""):
    """Add one `--<prefix>a.b.c` option per leaf field of the (nested, frozen) dataclass `cls`;
    the help shows the value in `defaults`.
    """
    defaults = defaults or cls()
    for path, tp, optional, comment in _walk(cls, prefix):
        value = defaults
        for part in path[len(prefix):].split("."):
            value = getattr(value, part)
        help_text = f"{comment} (default: {value!r})" if comment else f"(default: {value!r})"
        parser.add_argument(f"--{path}", dest=path, type=_parser_for(tp, optional), default=None,
                            help=help_text.replace("%", "%%"))


def _apply(obj, overrides: dict):
    """One dataclasses.replace per level, so each config validates once with all its changes."""
    changes = {k: _apply(getattr(obj, k), v) if isinstance(v, dict) else v for k, v in overrides.items()}
    return dataclasses.replace(obj, **changes)


def config_from_args(cls, args: argparse.Namespace, defaults=None, prefix: str = ""):
    """Apply every option given on the command line (under `prefix`) to `defaults` (validated on
    the way)."""
    tree: dict = {}
    for path, *_ in _walk(cls, prefix):
        value = getattr(args, path, None)
        if value is None:
            continue
        node = tree
        *parents, leaf = path[len(prefix):].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _apply(defaults or cls(), tree)
