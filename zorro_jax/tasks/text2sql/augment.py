"""Literal swapping: an SFT augmentation that teaches a small policy to copy values.

A text-to-SQL training set names a few hundred values (cities, names, years). A small policy
trained on it memorises them: asked about a city it never saw, it writes one it did. Swapping
makes memorising useless: every value the question and the gold SQL share is replaced, in both, by
a fresh value each time the example is seen. The only way to predict the literal is then to copy
it from the question — which is what a held-out question needs.

The replacement is drawn from a `ValuePool` (values seen elsewhere in the training set, of the
same shape: one word for one word, a date for a date, a 4-digit number for a 4-digit number) when
one is given — the tokens stay familiar, only their pairing with the question changes — else it is
a random look-alike (same length, same pattern of case, vowels, consonants and digits).

Shared values are: quoted string literals of the SQL that occur verbatim in the question
(`'Madrid'` / "... from Madrid?"; for a LIKE pattern, its text without the `%` wildcards:
`'C%'` / "starting with C"), and whole-number literals of the SQL that occur as a whole word in
the question (`= 2020` / "in 2020"). Anything else (`LIMIT 1` for "the most") is left alone, so a
swapped example stays a correct translation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

_VOWELS = "aeiou"
_CONSONANTS = "bcdfghjklmnprstvwz"
# A single-quoted SQL string ('' is an escaped quote inside it).
_STRING = re.compile(r"'((?:[^']|'')*)'")
# A whole-number literal: digits not part of an identifier, a decimal or a string.
_NUMBER_EDGES = (r"(?<![\w.'])", r"(?![\w.'])")
_NUMBER = re.compile(r"\d+".join(_NUMBER_EDGES))


def look_alike(value: str, rng: random.Random) -> str:
    """A random string shaped like `value`: each vowel, consonant and digit replaced by a random one
    of its kind (case kept, a leading digit stays non-zero); other characters kept.
    """
    out = []
    for i, ch in enumerate(value):
        low = ch.lower()
        if ch.isdigit() and ch.isascii():
            out.append(rng.choice("123456789" if i == 0 and ch != "0" else "0123456789"))
        elif low in _VOWELS:
            out.append(_case(rng.choice(_VOWELS), ch))
        elif low.isascii() and low.isalpha():
            out.append(_case(rng.choice(_CONSONANTS), ch))
        else:
            out.append(ch)
    return "".join(out)


def _case(letter: str, like: str) -> str:
    return letter.upper() if like.isupper() else letter


def _word(value: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(value) + r"(?!\w)")


def shared_values(question: str, sql: str) -> tuple[list[str], list[str]]:
    """(string literals, number literals) of `sql` that also occur in `question`, each once."""
    strings, numbers = [], []
    for m in _STRING.finditer(sql):
        value = m.group(1).replace("''", "'").strip("%")
        if value and value not in strings and _word(value).search(question):
            strings.append(value)
    in_strings = {m.span() for m in _STRING.finditer(sql)}
    for m in _NUMBER.finditer(sql):
        inside = any(s <= m.start() < e for s, e in in_strings)
        if not inside and m.group() not in numbers and _word(m.group()).search(question):
            numbers.append(m.group())
    return strings, numbers


def shape(value: str) -> str:
    """The shape of a value: runs of letters -> "a", digits -> "9" (e.g. "Tagus Air" -> "a a",
    "2021-10-01" -> "9999-99-99"); single letters keep their own shape "A"."""
    if len(value) == 1 and value.isalpha():
        return "A"
    return re.sub(r"[^\W\d_]+", "a", re.sub(r"\d", "9", value))


class ValuePool:
    """Values grouped by `shape`, for drawing same-shaped replacements."""

    def __init__(self, values: Iterable[str]):
        self.by_shape: dict[str, list[str]] = {}
        for v in dict.fromkeys(values):
            self.by_shape.setdefault(shape(v), []).append(v)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> ValuePool:
        """The shared values of (question, sql) pairs (e.g. a training set)."""
        values = []
        for question, sql in pairs:
            strings, numbers = shared_values(question, sql)
            values += strings + numbers
        return cls(values)

    def draw(self, value: str, rng: random.Random) -> str:
        """Another value of the same shape, or a look-alike when the pool has none."""
        others = [v for v in self.by_shape.get(shape(value), ()) if v != value]
        return rng.choice(others) if others else look_alike(value, rng)


def swap_literals(question: str, sql: str, rng: random.Random,
                  pool: ValuePool | None = None) -> tuple[str, str]:
    """`(question, sql)` with every shared value replaced in both, by a value drawn from `pool`
    or (without one) a fresh look-alike.

    Returns the inputs unchanged when they share no value.
    """
    strings, numbers = shared_values(question, sql)
    fresh = pool.draw if pool is not None else look_alike
    taken = set(strings) | set(numbers)
    for value in strings:
        new = _unused(fresh, value, rng, taken)
        question = _word(value).sub(lambda _, new=new: new, question)
        sql = _STRING.sub(lambda m, value=value, new=new: _swap_in_literal(m.group(1), value, new), sql)
    for value in numbers:
        new = _unused(fresh, value, rng, taken)
        question = _word(value).sub(lambda _, new=new: new, question)
        sql = _number_sub(value, new, sql)
    return question, sql


def _unused(fresh, value: str, rng: random.Random, taken: set) -> str:
    """A replacement for `value` that is none of the example's other values (so two values never
    merge into one); falls back to a look-alike."""
    for _ in range(8):
        new = fresh(value, rng)
        if new not in taken:
            break
    else:
        new = look_alike(value, rng)
    taken.add(new)
    return new


def _swap_in_literal(literal: str, value: str, new: str) -> str:
    """The quoted SQL literal with body `literal`, `value` replaced by `new` when the body is
    `value` up to leading/trailing `%` wildcards."""
    text = literal.replace("''", "'")
    if text.strip("%") == value:
        lead = len(text) - len(text.lstrip("%"))
        text = text[:lead] + new + text[lead + len(value):]
    return "'" + text.replace("'", "''") + "'"


def _number_sub(value: str, new: str, sql: str) -> str:
    """Replace the number literal `value` by `new` in `sql`, outside string literals."""
    number = re.escape(value).join(_NUMBER_EDGES)
    # String literals match first and are kept; only a bare number is replaced.
    return re.sub(f"{_STRING.pattern}|{number}",
                  lambda m: new if m.group(1) is None else m.group(), sql)
