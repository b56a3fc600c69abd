"""SQLite-dialect gold SQL to DuckDB: sqlglot's transpile plus fix-ups for the semantic
differences that change results.

  * Type affinity: TEXT columns of numbers compared or sorted as text, text read as numbers
    beside numeric columns, MIN/MAX/SUM/AVG over text (affinity.py; needs the copy's column
    types).
  * `a / b` on integers truncates in SQLite, DuckDB returns a double -> typed integer division;
    SQLite also yields NULL on division by zero, DuckDB an error or inf -> NULLIF(b, 0).
  * SQLite LIKE ignores ASCII case, DuckDB LIKE does not -> ILIKE.
  * SQLite accepts bare columns beside aggregates and takes them from the row of a lone MIN/MAX
    -> ARG_MIN/ARG_MAX, otherwise ANY_VALUE (DuckDB rejects them outright).
  * SQLite reads an unknown "double-quoted" identifier as a string -> string literal.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from zorro_jax.tasks.text2sql.affinity import apply_affinity
from zorro_jax.tasks.text2sql.sqlite_copy import ColumnType

# Part of the gold cache key (spider.py): bump when a fix-up changes what a query becomes.
TRANSPILER_VERSION = 2


def _fix_double_quoted_strings(tree: exp.Expression, columns: set[str]) -> exp.Expression:
    def fix(node):
        if (
            isinstance(node, exp.Column)
            and not node.table
            and node.this.args.get("quoted")
            and node.name.lower() not in columns
        ):
            return exp.Literal.string(node.name)
        return node

    return tree.transform(fix)


def _fix_bare_columns(tree: exp.Expression) -> exp.Expression:
    for select in list(tree.find_all(exp.Select)):
        projections = select.expressions
        aggs = [a for p in projections for a in p.find_all(exp.AggFunc)]
        group = select.args.get("group")
        if not aggs and not group:
            continue
        keys = {g.sql() for g in group.expressions} if group else set()
        group_names = (
            {g.name for g in group.expressions if isinstance(g, exp.Column)} if group else set()
        )
        lone = aggs[0] if len(aggs) == 1 and isinstance(aggs[0], (exp.Max, exp.Min)) else None
        for proj in projections:
            inner = proj.unalias()
            if inner.find(exp.AggFunc) or inner.sql() in keys or not inner.find(exp.Column):
                continue
            if isinstance(inner, exp.Column) and inner.name in group_names:
                continue
            if lone is not None:
                cls = exp.ArgMax if isinstance(lone, exp.Max) else exp.ArgMin
                wrapped = cls(this=inner.copy(), expression=lone.this.copy())
            else:
                wrapped = exp.AnyValue(this=inner.copy())
            inner.replace(wrapped)
    return tree


def _fix_division(tree: exp.Expression) -> exp.Expression:
    for div in list(tree.find_all(exp.Div)):
        den = div.expression
        if isinstance(den, exp.Literal) and not den.is_string and float(den.this) != 0:
            continue
        div.set("expression", exp.Nullif(this=den.copy(), expression=exp.Literal.number(0)))
        div.set("safe", False)
    return tree


def transpile_sqlite(
    sql: str,
    schema: Mapping[str, Mapping[str, str]],
    fixups: bool = True,
    columns: Mapping[str, Mapping[str, ColumnType]] | None = None,
) -> str:
    """SQLite-dialect SQL -> DuckDB SQL for a database with `schema` (table -> column ->
    declared type). `columns` are the DuckDB copy's column types (`sqlite_copy`); without them
    the copy is taken to follow the declared types. `fixups=False` gives sqlglot's plain
    transpile.
    """
    if not fixups:
        return sqlglot.transpile(sql, read="sqlite", write="duckdb")[0]
    if columns is None:
        columns = {
            t: {c: ColumnType.from_declared(d) for c, d in cols.items()}
            for t, cols in schema.items()
        }
    names = {c.lower() for cols in schema.values() for c in cols}
    tree = sqlglot.parse_one(sql, read="sqlite")
    tree = _fix_double_quoted_strings(tree, names)
    try:  # qualification is what lets the type annotator see integer columns
        tree = qualify(
            tree, schema=schema, dialect="sqlite", validate_qualify_columns=False, identify=False
        )
    except Exception:  # noqa: BLE001, S110 - unqualifiable SQL is still transpiled, untyped
        pass
    try:  # on a copy, so that a tree the analysis rejects stays whole
        tree = apply_affinity(tree.copy(), columns)
    except Exception:  # noqa: BLE001, S110 - such a tree keeps SQLite's typing unmodelled
        pass
    tree = tree.transform(
        lambda n: exp.ILike(this=n.this, expression=n.expression) if isinstance(n, exp.Like) else n
    )
    tree = _fix_bare_columns(tree)
    tree = _fix_division(tree)
    try:
        tree = annotate_types(tree, schema=schema, dialect="sqlite")
    except Exception:  # noqa: BLE001, S110 - without types, divisions stay float divisions
        pass
    return tree.sql(dialect="duckdb")
