"""DuckDB expressions that read values the way SQLite does, for the affinity rewrite.

SQLite text becomes a number when it reads as one (`NUMBER_PATTERN`) and numbers become text in
SQLite's own spelling (`as_text`, `as_number`); arithmetic reads text by its numeric prefix
(`as_real`); text and numbers compared without conversion order text above every number. A
`Kind` records what is known of an expression on both sides: SQLite affinity and storage
classes, DuckDB type after transpilation.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sqlite3

from sqlglot import exp

from zorro_jax.tasks.text2sql.sqlite_copy import NUMERIC_AFFINITIES, ColumnType, number_text

# Text SQLite's NUMERIC affinity turns into a number, and the numeric prefix arithmetic reads.
NUMBER_PATTERN = r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*"
PREFIX_PATTERN = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?"
NUMBER_TYPES = ("BIGINT", "DOUBLE")
_INT_TEXT = re.compile(r"0|-?[1-9]\d*")
_DECIMAL_TEXT = re.compile(r"-?\d+(\.\d+)?(e[+-]\d+)?")


@dataclasses.dataclass(frozen=True)
class Kind:
    """What is known of an expression's values: SQLite affinity, storage classes, DuckDB type."""

    # SQLite affinity; None for none (literals, functions, arithmetic).
    affinity: str | None
    # Storage classes in SQLite: "number", "text", "mixed" or "any" (unknown).
    stored: str
    # DuckDB type after transpilation: BIGINT, DOUBLE, VARCHAR or ANY.
    duck: str
    # Every value's SQLite text is `number_text` of its DuckDB number (TEXT columns the copy made
    # numeric, integer literals): text equality is then number equality.
    canonical: bool = False


ANY = Kind(None, "any", "ANY")


def column_kind(ct: ColumnType) -> Kind:
    """The Kind of a reference to a copied column."""
    if ct.stored == "blob":
        return Kind(ct.affinity, "any", "ANY")
    stored = ct.stored
    if stored == "empty":
        stored = "number" if ct.duckdb in NUMBER_TYPES else "text"
    canonical = stored == "text" and ct.duckdb in NUMBER_TYPES
    return Kind(ct.affinity, stored, ct.duckdb, canonical)


def canonical_number(text: str) -> int | float | None:
    """The number whose canonical text (`sqlite_copy.number_text`) is exactly `text`, or None."""
    if _INT_TEXT.fullmatch(text):
        value = int(text)
        return value if -(2**63) <= value < 2**63 else None
    if not _DECIMAL_TEXT.fullmatch(text):
        return None
    value = float(text)
    shown = repr(value)
    return value if shown.removesuffix(".0") == text and "inf" not in shown else None


@functools.lru_cache(maxsize=4096)
def _sqlite_value(sql: str):
    conn = sqlite3.connect(":memory:")
    try:
        return conn.execute(f"SELECT {sql}").fetchone()[0]
    finally:
        conn.close()


def literal_kind(lit: exp.Literal) -> Kind:
    """The Kind of a literal, its texts and numbers worked out by SQLite itself."""
    if lit.is_string:
        return Kind(None, "text", "VARCHAR", canonical_number(lit.this) is not None)
    value = _sqlite_value(lit.this)
    if isinstance(value, int):
        return Kind(None, "number", "BIGINT", True)
    text = _sqlite_value(f"CAST({lit.this} AS TEXT)")
    return Kind(None, "number", "DOUBLE", canonical_number(text) == value)


def _cast(node: exp.Expression, to: str) -> exp.Expression:
    return exp.Cast(this=node, to=exp.DataType.build(to))


def _nan() -> exp.Expression:
    return _cast(exp.Literal.string("NaN"), "DOUBLE")


def as_text(node: exp.Expression, kind: Kind) -> exp.Expression:
    """`node` as SQLite's text of its values (TEXT affinity applied)."""
    if isinstance(node, exp.Literal) and not node.is_string:
        return exp.Literal.string(_sqlite_value(f"CAST({node.this} AS TEXT)"))
    if kind.duck not in NUMBER_TYPES:
        return node
    if kind.stored == "text":
        return number_text(node, kind.duck)
    return _cast(node, "VARCHAR")


def as_number(node: exp.Expression, kind: Kind) -> exp.Expression:
    """`node` with NUMERIC affinity applied: numbers stay, numeric text becomes its number, other
    text becomes NaN (above every number, like text in SQLite)."""
    if kind.duck != "VARCHAR":
        return node
    if isinstance(node, exp.Literal):
        if re.fullmatch(NUMBER_PATTERN, node.this):
            return exp.Literal.number(node.this.strip())
        return _nan()
    return (
        exp.Case()
        .when(matches_number(node), _cast(exp.Trim(this=node.copy()), "DOUBLE"))
        .when(exp.Not(this=exp.Is(this=node.copy(), expression=exp.Null())), _nan())
    )


def as_real(node: exp.Expression, kind: Kind) -> exp.Expression:
    """`node` as arithmetic, SUM and AVG read it: text by its numeric prefix, else 0."""
    if kind.duck != "VARCHAR":
        return node
    prefix = exp.RegexpExtract(this=node.copy(), expression=exp.Literal.string(PREFIX_PATTERN))
    parsed = exp.func("COALESCE", exp.TryCast(this=prefix, to=exp.DataType.build("DOUBLE")),
                      exp.Literal.number("0.0"))
    return exp.Case().when(exp.Not(this=exp.Is(this=node, expression=exp.Null())), parsed)


def numeric_or_null(node: exp.Expression) -> exp.Expression:
    """The number a VARCHAR holds, or NULL when it holds none."""
    return exp.Case().when(matches_number(node), _cast(exp.Trim(this=node.copy()), "DOUBLE"))


def comparison_affinity(a: str | None, b: str | None) -> str | None:
    """The affinity SQLite applies to both operands of a comparison (None: no conversion)."""
    if a is not None and b is not None:
        return "NUMERIC" if a in NUMERIC_AFFINITIES or b in NUMERIC_AFFINITIES else None
    return a if a is not None else b


def _verdict(node: exp.Expression, left_is_text: bool) -> bool:
    """The result of comparing text with a number (text is greater), for non-NULL operands."""
    if isinstance(node, (exp.EQ, exp.NullSafeEQ)):
        return False
    if isinstance(node, (exp.NEQ, exp.NullSafeNEQ)):
        return True
    return left_is_text == isinstance(node, (exp.GT, exp.GTE))


def text_beside_number(node: exp.Expression, left_is_text: bool) -> exp.Expression:
    """A comparison of text with a number where SQLite converts neither."""
    either_null = exp.Or(this=exp.Is(this=node.this.copy(), expression=exp.Null()),
                         expression=exp.Is(this=node.expression.copy(), expression=exp.Null()))
    verdict = exp.Boolean(this=_verdict(node, left_is_text))
    return exp.Paren(this=exp.Case().when(either_null, exp.Null()).else_(verdict))


def is_text_literal(node: exp.Expression) -> bool:
    """A string literal that NUMERIC affinity leaves as text."""
    return (isinstance(node, exp.Literal) and node.is_string
            and not re.fullmatch(NUMBER_PATTERN, node.this))


def matches_number(node: exp.Expression) -> exp.Expression:
    """Whether a VARCHAR reads as a number under NUMERIC affinity."""
    return exp.RegexpFullMatch(this=node.copy(), expression=exp.Literal.string(NUMBER_PATTERN))


def against_text_literal(node: exp.Expression, column_on_left: bool) -> exp.Expression:
    """VARCHAR `x op 'T'` under NUMERIC affinity: a numeric x is below any text, a text x
    compares as text (the comparison as written)."""
    x = node.this if column_on_left else node.expression
    below = exp.Boolean(this=_verdict(node, left_is_text=not column_on_left))
    return exp.Paren(this=exp.Case().when(matches_number(x), below).else_(node))


def in_mixed_list(node: exp.In) -> exp.Expression:
    """VARCHAR `x IN (1, 'T')` under NUMERIC affinity: numeric x against the numbers, text x
    against the texts."""
    x = node.this
    texts = [v for v in node.expressions if is_text_literal(v)]
    numbers = [as_number(v, Kind(None, "text", "VARCHAR")) if v.is_string else v
               for v in node.expressions if not is_text_literal(v)]
    by_number = (exp.In(this=_cast(exp.Trim(this=x.copy()), "DOUBLE"), expressions=numbers)
                 if numbers else exp.false())
    by_text = exp.In(this=x.copy(), expressions=texts)
    return exp.Paren(this=exp.Case()
                     .when(exp.Is(this=x.copy(), expression=exp.Null()), exp.Null())
                     .when(matches_number(x), by_number)
                     .else_(by_text))


def mixed_extreme(node: exp.Expression) -> exp.Expression:
    """MAX/MIN over a column holding numbers and text: text sorts above every number."""
    x = node.this
    if isinstance(node, exp.Max):
        texts = exp.Max(this=exp.Case().when(exp.Not(this=matches_number(x)), x.copy()))
        top_number = exp.ArgMax(this=x.copy(), expression=numeric_or_null(x))
        return exp.func("COALESCE", texts, top_number)
    low_number = exp.ArgMin(this=x.copy(), expression=numeric_or_null(x))
    return exp.func("COALESCE", low_number, exp.Min(this=x.copy()))


def equality_key(node: exp.Expression) -> exp.Expression:
    """A VARCHAR under NUMERIC affinity as a text equal to another's exactly when SQLite finds
    the two equal: numbers by value, other text as itself, never a number equal to a text."""
    number = _cast(_cast(exp.Trim(this=node.copy()), "DOUBLE"), "VARCHAR")
    return (
        exp.Case()
        .when(matches_number(node), exp.DPipe(this=exp.Literal.string("n"), expression=number))
        .else_(exp.DPipe(this=exp.Literal.string("t"), expression=node.copy()))
    )


def mixed_comparison(node: exp.Expression) -> exp.Expression:
    """`a op b` for two VARCHARs under NUMERIC affinity: numbers compare as numbers, texts as
    texts, and a number is below any text."""
    a, b = node.this, node.expression
    num_a, num_b = matches_number(a), matches_number(b)
    as_numbers = node.copy()
    as_numbers.set("this", _cast(exp.Trim(this=a.copy()), "DOUBLE"))
    as_numbers.set("expression", _cast(exp.Trim(this=b.copy()), "DOUBLE"))
    return exp.Paren(
        this=exp.Case()
        .when(exp.and_(num_a, num_b), as_numbers)
        .when(exp.and_(exp.not_(num_a.copy()), exp.not_(num_b.copy())), node.copy())
        .when(num_a.copy(), exp.Boolean(this=_verdict(node, left_is_text=False)))
        .when(num_b.copy(), exp.Boolean(this=_verdict(node, left_is_text=True)))
    )
