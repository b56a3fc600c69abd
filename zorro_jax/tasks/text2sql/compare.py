"""Result-set comparison for execution accuracy, with the two rules used in the literature.

`bird` (BIRD's official evaluation): the results are compared as *sets* of row tuples. Duplicate
rows and row order are ignored; column order is significant.

`spider` (the Spider test-suite evaluation): the results are compared as *bags* (multisets) of
rows, so duplicates count. Row order matters only when the gold query has a top-level ORDER BY.
The prediction's columns may be any permutation of the gold columns.

Both rules first normalise every value: NULL stays NULL (and equals NULL), booleans become
integers, decimals and integers become numbers, dates and timestamps become ISO strings (a
midnight timestamp equals the date), bytes become hex. Numbers compare with a relative tolerance
`rel_tol` (and `abs_tol` near zero), so `0.1 + 0.2` matches `0.3` and `3` matches `3.0`.

Bags and sets are matched by sorting rows on a key where floats are rounded to `key_digits`
significant digits, then comparing the sorted rows pairwise with the tolerance. Two rows whose
only difference is a float straddling a rounding boundary can in principle sort differently;
with 9 significant digits this does not arise for aggregate noise in practice.
"""

from __future__ import annotations

import datetime
import decimal
import itertools
import math
import uuid
from collections.abc import Sequence
from typing import Any

import sqlglot
from sqlglot import exp

RULES = ("bird", "spider")
# Column permutations tried by the spider rule before giving up (the search is pruned by
# per-column value bags first, so real results rarely need more than one).
MAX_PERMUTATIONS = 5040
# Floats this close to zero get the key of zero (matches the default abs_tol).
_ZERO = 1e-9


def normalise_value(value: Any) -> Any:
    """Map a DuckDB/SQLite Python value to a comparable canonical form."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, decimal.Decimal):
        if value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, datetime.datetime):
        if value.time() == datetime.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return tuple(normalise_value(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), normalise_value(v)) for k, v in value.items()))
    return value


def normalise_rows(rows: Sequence[Sequence[Any]]) -> list[tuple]:
    """Result rows as tuples of normalised values (see `normalise_value`), ready to compare."""
    return [tuple(normalise_value(v) for v in row) for row in rows]


def _key(value: Any, digits: int) -> tuple:
    """Total-order sort key across types; floats rounded so tolerance-equal values sort together."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        if isinstance(value, float):
            if math.isnan(value):
                return (1, float("inf"), 1)
            # Values within the absolute tolerance of zero must share zero's key.
            value = 0.0 if abs(value) <= _ZERO else float(f"{value:.{digits}g}")
        return (1, value, 0)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, tuple):
        return (3, tuple(_key(v, digits) for v in value))
    return (4, repr(value))


def _row_key(row: tuple, digits: int) -> tuple:
    return tuple(_key(v, digits) for v in row)


def values_equal(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    """Whether two cells match: NULL only with NULL, integers exactly, other numbers within the
    tolerances, the rest by equality.
    """
    if a is None or b is None:
        return a is None and b is None
    a_num = isinstance(a, (int, float))
    b_num = isinstance(b, (int, float))
    if a_num and b_num:
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        if isinstance(a, float) and math.isnan(a) or isinstance(b, float) and math.isnan(b):
            return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    if a_num or b_num:
        return False
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(values_equal(x, y, rel_tol, abs_tol) for x, y in zip(a, b))
    return a == b


def _rows_equal(a: tuple, b: tuple, rel_tol: float, abs_tol: float) -> bool:
    return len(a) == len(b) and all(values_equal(x, y, rel_tol, abs_tol) for x, y in zip(a, b))


def _lists_equal(a: list[tuple], b: list[tuple], rel_tol: float, abs_tol: float) -> bool:
    return len(a) == len(b) and all(_rows_equal(x, y, rel_tol, abs_tol) for x, y in zip(a, b))


def _dedupe_sorted(rows: list[tuple], rel_tol: float, abs_tol: float) -> list[tuple]:
    out: list[tuple] = []
    for row in rows:
        if not out or not _rows_equal(out[-1], row, rel_tol, abs_tol):
            out.append(row)
    return out


def _unordered_equal(pred, gold, as_set, rel_tol, abs_tol, digits) -> bool:
    pred_sorted = sorted(pred, key=lambda r: _row_key(r, digits))
    gold_sorted = sorted(gold, key=lambda r: _row_key(r, digits))
    if as_set:
        pred_sorted = _dedupe_sorted(pred_sorted, rel_tol, abs_tol)
        gold_sorted = _dedupe_sorted(gold_sorted, rel_tol, abs_tol)
    return _lists_equal(pred_sorted, gold_sorted, rel_tol, abs_tol)


def _column_permutations(pred: list[tuple], gold: list[tuple], digits: int):
    """Yield pred-column orders whose per-column value bags match the gold columns."""
    n_cols = len(gold[0])

    def column_bag(rows, j):
        return sorted(_key(r[j], digits) for r in rows)

    pred_bags = [column_bag(pred, j) for j in range(n_cols)]
    gold_bags = [column_bag(gold, j) for j in range(n_cols)]
    candidates = [[i for i in range(n_cols) if pred_bags[i] == gold_bags[j]] for j in range(n_cols)]
    if any(not c for c in candidates):
        return
    count = 0
    for perm in itertools.product(*candidates):
        if len(set(perm)) != n_cols:
            continue
        yield perm
        count += 1
        if count >= MAX_PERMUTATIONS:
            return


def results_match(
    pred_rows: Sequence[Sequence[Any]],
    gold_rows: Sequence[Sequence[Any]],
    rule: str = "spider",
    order_matters: bool = False,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    key_digits: int = 9,
) -> bool:
    """Whether the predicted result equals the gold result under `rule` (see module docstring).

    `order_matters` is used by the spider rule only (pass `gold_orders_rows(gold_sql)`); the
    bird rule compares sets and never looks at order.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    pred = normalise_rows(pred_rows)
    gold = normalise_rows(gold_rows)
    if rule == "bird":
        widths = {len(r) for r in pred} | {len(r) for r in gold}
        if len(widths) > 1:
            return False
        return _unordered_equal(pred, gold, True, rel_tol, abs_tol, key_digits)
    if len(pred) != len(gold):
        return False
    if not gold:
        return True
    if len(pred[0]) != len(gold[0]):
        return False
    for perm in _column_permutations(pred, gold, key_digits):
        permuted = [tuple(r[i] for i in perm) for r in pred]
        if order_matters:
            if _lists_equal(permuted, gold, rel_tol, abs_tol):
                return True
        elif _unordered_equal(permuted, gold, False, rel_tol, abs_tol, key_digits):
            return True
    return False


def gold_orders_rows(gold_sql: str, dialect: str = "duckdb") -> bool:
    """True when the outermost query has ORDER BY (order is then part of the answer)."""
    try:
        tree = sqlglot.parse_one(gold_sql, read=dialect)
    except Exception:  # noqa: BLE001 - unparsable gold: fall back to a textual check
        return "order by" in gold_sql.lower()
    while isinstance(tree, exp.Subquery):
        tree = tree.this
    return tree is not None and tree.args.get("order") is not None
