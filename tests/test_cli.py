"""Config options on the command line: parsing, validation through the dataclasses, and help
text taken from each field's comment."""

import argparse
import dataclasses

import pytest

from zorro_jax.cli import add_config_args, config_from_args, field_comments


@dataclasses.dataclass(frozen=True)
class Inner:
    # Two lines of
    # explanation.
    rate: float = 0.5
    shared: int = 1  # trailing note
    also: int = 2

    unexplained: bool = False

    def __post_init__(self):
        if self.rate <= 0:
            raise ValueError("rate must be positive")


@dataclasses.dataclass(frozen=True)
class Outer:
    # Nested options.
    inner: Inner = Inner()
    # Comma-separated.
    ids: tuple[int, ...] = ()
    # Or none.
    name: str | None = None


def test_comments_become_help():
    c = field_comments(Inner)
    assert c["rate"] == "Two lines of explanation."
    assert c["shared"] == "trailing note"
    assert c["also"] == "trailing note"  # right below a commented field: shares its comment
    assert "unexplained" not in c  # a blank line ends the sharing
    ap = argparse.ArgumentParser()
    add_config_args(ap, Outer)
    text = ap.format_help()
    assert "Two lines of explanation. (default: 0.5)" in text and "Or none. (default: None)" in text


def test_values_parse_and_validate():
    ap = argparse.ArgumentParser()
    add_config_args(ap, Outer)
    cfg = config_from_args(Outer, ap.parse_args(["--inner.rate", "2", "--ids", "1,2", "--name", "none",
                                                 "--inner.unexplained", "true"]))
    assert cfg == Outer(Inner(rate=2.0, unexplained=True), (1, 2), None)
    with pytest.raises(ValueError, match="rate must be positive"):
        config_from_args(Outer, ap.parse_args(["--inner.rate", "-1"]))
