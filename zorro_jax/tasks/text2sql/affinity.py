"""SQLite's type affinity reproduced in DuckDB, for gold queries run on DuckDB copies.

The rules relied on ("Datatypes In SQLite", sections 3-4 and 7, and sqlite3CompareAffinity):

  * A column reference has its column's affinity (`sqlite_copy.declared_affinity`); so does a
    scalar subquery, that of its result column; CAST(x AS T) has T's affinity. Literals and every
    other expression (functions, aggregates, arithmetic, CASE) have none.
  * Before a comparison (=, <>, <, <=, >, >=, IS, BETWEEN's two halves, IN): if both operands have
    an affinity, NUMERIC is applied to both when either is INTEGER, REAL or NUMERIC, else
    nothing; if only one has an affinity, it is applied to the other. NUMERIC affinity turns text
    that reads as a number into that number; TEXT affinity turns numbers into text. So TEXT
    `horsepower > 150` compares '150' as text ('88' > '150'), while TEXT `concert.stadium_id`
    against INTEGER `stadium.stadium_id` compares numbers.
  * `x IN (a, b)` compares x with each value as if the values had no affinity;
    `x IN (SELECT y ...)` compares like `x = y`.
  * Values then compare by storage class: NULL < numbers < text < blob; numbers by value, text
    byte-wise. Text that is not a number is therefore greater than every number.
  * ORDER BY, MIN and MAX use the same storage-class order: a TEXT column of numbers sorts as text.
  * Arithmetic, SUM and AVG read text as the longest numeric prefix ('12abc' -> 12, 'abc' -> 0).
  * CAST(real AS INTEGER) truncates toward zero (DuckDB rounds).

The DuckDB copy stores a TEXT column of canonical numbers as BIGINT/DOUBLE (`sqlite_copy`), so
this module turns it back into its exact text (`sqlite_copy.number_text`) where SQLite treats it
as text, and reads VARCHAR columns as numbers where SQLite does (sqlite_values.py): text that is
not a number becomes NaN beside a number (DuckDB orders NaN above every number and equal to
none, as SQLite orders such text), is compared as text beside a text literal, and two VARCHARs
compare by a key that keeps numbers and texts apart. Equalities of canonical numbers are left as
written (`year = 2014`), since their texts are equal exactly when their numbers are.

Known gaps: two VARCHARs under NUMERIC affinity in BETWEEN, or a VARCHAR against column values in
an IN list, compare non-numeric texts as equal NaNs; a BLOB-affinity column holding both the
number 12 and the text '12' treats both as 12; integer-looking text in arithmetic becomes a
double, so `'7' / 2` is 3.5, not 3; a number compared as text is spelled by DuckDB, which writes
reals with up to 17 significant digits where SQLite writes 15.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, traverse_scope

from zorro_jax.tasks.text2sql.sqlite_copy import NUMERIC_AFFINITIES, ColumnType, declared_affinity
from zorro_jax.tasks.text2sql.sqlite_values import (
    ANY,
    NUMBER_TYPES,
    Kind,
    against_text_literal,
    as_number,
    as_real,
    as_text,
    column_kind,
    comparison_affinity,
    equality_key,
    in_mixed_list,
    is_text_literal,
    literal_kind,
    mixed_comparison,
    mixed_extreme,
    text_beside_number,
)

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ)
_EQUALITIES = (exp.EQ, exp.NEQ, exp.NullSafeEQ, exp.NullSafeNEQ)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)
_TEXT_RESULTS = (exp.Substring, exp.Upper, exp.Lower, exp.Trim, exp.Replace, exp.DPipe,
                 exp.GroupConcat)
# Functions that read their arguments as text; DuckDB refuses numbers for most of them.
_STRING_ARGS = (exp.Like, exp.ILike, exp.Glob, exp.Length, exp.StrPosition, *_TEXT_RESULTS)


def _form(mode: str | None, kinds: list[Kind], equality: bool) -> str | None:
    """How operands compared under `mode` are realised: "number", "text" or None (as they are)."""
    if mode in NUMERIC_AFFINITIES:
        return "number"
    text_mode = mode == "TEXT" or (mode is None and all(k.stored == "text" for k in kinds))
    if not text_mode:
        return None
    if equality and all(k.canonical for k in kinds):
        return "number"  # canonical texts are equal exactly when their numbers are
    return "text"


def _realise(node: exp.Expression, kind: Kind, form: str | None) -> exp.Expression:
    if form == "number":
        if kind.canonical and isinstance(node, exp.Literal) and node.is_string:
            return exp.Literal.number(node.this)
        return as_number(node, kind)
    if form == "text":
        return as_text(node, kind)
    return node


def _set(parent: exp.Expression, key: str, build: Callable[[exp.Expression], exp.Expression]):
    child = parent.args.get(key)
    if child is not None:
        parent.set(key, build(child))


def _replace(node: exp.Expression, build: Callable[[exp.Expression], exp.Expression]):
    parent, key, index = node.parent, node.arg_key, node.index
    new = build(node)
    if parent is not None:
        parent.set(key, new, index)


class _Rewriter:
    def __init__(self, tree: exp.Expression, tables: Mapping[str, Mapping[str, ColumnType]]):
        self.tables = {t.lower(): {c.lower(): ct for c, ct in cols.items()}
                       for t, cols in tables.items()}
        self.scope_of: dict[int, Scope] = {}
        for scope in traverse_scope(tree):
            for col in scope.columns:
                self.scope_of[id(col)] = scope
        self.kinds: dict[int, Kind] = {}
        # Edits that copy a part of the tree outside their node: applied after all others.
        self.late: list[Callable[[], None]] = []

    # -- kinds ---------------------------------------------------------------------------------

    def kind(self, node: exp.Expression | None) -> Kind:
        if node is None:
            return ANY
        cached = self.kinds.get(id(node))
        if cached is None:
            cached = self.kinds[id(node)] = self._kind(node)
        return cached

    def _kind(self, node: exp.Expression) -> Kind:
        if isinstance(node, (exp.Paren, exp.Alias)):
            return self.kind(node.this)
        if isinstance(node, exp.Column):
            return self._column(node)
        if isinstance(node, exp.Literal):
            return literal_kind(node)
        if isinstance(node, exp.Cast):
            return self._cast_kind(node)
        if isinstance(node, exp.Subquery):
            return self._query_kind(node.this)
        if isinstance(node, exp.Count):
            return Kind(None, "number", "BIGINT")
        if isinstance(node, (exp.Avg, exp.Sum)):
            arg = self.kind(node.this)
            ints = isinstance(node, exp.Sum) and arg.stored == "number" and arg.duck == "BIGINT"
            return Kind(None, "number", "BIGINT" if ints else "DOUBLE")
        if isinstance(node, (exp.Max, exp.Min)):
            arg = self.kind(node.this)
            return Kind(None, arg.stored, arg.duck, arg.canonical)
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
            return self.kind(node.this)
        if isinstance(node, (*_ARITHMETIC, exp.Neg)):
            args = [self.kind(a) for a in (node.this, node.args.get("expression")) if a]
            ints = all(a.stored == "number" and a.duck == "BIGINT" for a in args)
            return Kind(None, "number", "BIGINT" if ints else "DOUBLE")
        if isinstance(node, (exp.Length, exp.StrPosition)):
            return Kind(None, "number", "BIGINT")
        if isinstance(node, _TEXT_RESULTS):
            return Kind(None, "text", "VARCHAR")
        if isinstance(node, (exp.Case, exp.If, exp.Coalesce)):
            branches = [self.kind(b) for b in _branches(node)]
            first = branches[0] if branches else ANY
            if all((b.stored, b.duck) == (first.stored, first.duck) for b in branches):
                return Kind(None, first.stored, first.duck, all(b.canonical for b in branches))
        return ANY

    def _cast_kind(self, node: exp.Cast) -> Kind:
        to = node.to.this.value if isinstance(node.to.this, exp.DataType.Type) else str(node.to)
        affinity = declared_affinity(to)
        if affinity == "TEXT":
            return Kind("TEXT", "text", "VARCHAR")
        if affinity == "INTEGER":
            return Kind("INTEGER", "number", "BIGINT")
        if affinity == "REAL" or (affinity == "NUMERIC" and to in ("DECIMAL", "NUMERIC")):
            return Kind(affinity, "number", "DOUBLE")
        return Kind(affinity, "any", "ANY")

    def _query_kind(self, query: exp.Expression) -> Kind:
        while isinstance(query, exp.SetOperation):
            query = query.this
        if not isinstance(query, exp.Select) or not query.expressions:
            return ANY
        return self.kind(query.expressions[0].unalias())

    def _column(self, col: exp.Column) -> Kind:
        scope = self.scope_of.get(id(col))
        name = col.name.lower()
        while scope is not None:
            source = scope.sources.get(col.table) if col.table else self._owner(scope, name)
            if source is not None:
                break
            scope = scope.parent
        else:
            return ANY
        if isinstance(source, exp.Table):
            ct = self.tables.get(source.name.lower(), {}).get(name)
            return column_kind(ct) if ct else ANY
        query = source.expression
        while isinstance(query, exp.SetOperation):
            query = query.this
        if isinstance(query, exp.Select):
            for proj in query.expressions:
                if proj.alias_or_name.lower() == name:
                    return self.kind(proj.unalias())
        return ANY

    def _owner(self, scope: Scope, name: str):
        """The one table of `scope` with a column `name` (for unqualified columns)."""
        owners = [s for s in scope.sources.values()
                  if isinstance(s, exp.Table) and name in self.tables.get(s.name.lower(), {})]
        return owners[0] if len(owners) == 1 else None

    # -- edits ---------------------------------------------------------------------------------

    def edit(self, node: exp.Expression) -> Callable[[], None] | None:
        if isinstance(node, _COMPARISONS):
            return self._comparison(node)
        if isinstance(node, exp.Between):
            return self._between(node)
        if isinstance(node, exp.In):
            return self._in(node)
        if isinstance(node, (exp.Max, exp.Min)):
            return self._min_max(node)
        if isinstance(node, (exp.Sum, exp.Avg, *_ARITHMETIC, exp.Neg)):
            return self._numeric_args(node)
        if isinstance(node, _STRING_ARGS):
            return self._string_args(node)
        if isinstance(node, exp.Ordered):
            return self._ordered(node)
        if isinstance(node, exp.Cast):
            return self._cast(node)
        return None

    def _comparison(self, node):
        ka, kb = self.kind(node.this), self.kind(node.expression)
        mode = comparison_affinity(ka.affinity, kb.affinity)
        if mode in NUMERIC_AFFINITIES:
            a, b = node.this, node.expression
            if ka.duck == "VARCHAR" and is_text_literal(b) and not isinstance(a, exp.Literal):
                return lambda: _replace(node, lambda n: against_text_literal(n, True))
            if kb.duck == "VARCHAR" and is_text_literal(a) and not isinstance(b, exp.Literal):
                return lambda: _replace(node, lambda n: against_text_literal(n, False))
            if ka.duck == kb.duck == "VARCHAR" and not isinstance(a, exp.Literal) and not isinstance(
                    b, exp.Literal):  # both may hold text that is not a number
                if not isinstance(node, _EQUALITIES):
                    return lambda: _replace(node, mixed_comparison)

                def apply_keys():
                    _set(node, "this", equality_key)
                    _set(node, "expression", equality_key)

                return apply_keys
        form = _form(mode, [ka, kb], isinstance(node, _EQUALITIES))
        if form is None and mode is None and {ka.stored, kb.stored} == {"number", "text"}:
            return lambda: _replace(node, lambda n: text_beside_number(n, ka.stored == "text"))
        if form is None:
            return None

        def apply():
            _set(node, "this", lambda c: _realise(c, ka, form))
            _set(node, "expression", lambda c: _realise(c, kb, form))

        return apply

    def _between(self, node):
        kx, klo, khi = self.kind(node.this), self.kind(node.args["low"]), self.kind(node.args["high"])
        forms = [_form(comparison_affinity(kx.affinity, k.affinity), [kx, k], False)
                 for k in (klo, khi)]
        if forms == [None, None]:
            return None

        def apply():
            if forms[0] == forms[1]:
                _set(node, "this", lambda c: _realise(c, kx, forms[0]))
                _set(node, "low", lambda c: _realise(c, klo, forms[0]))
                _set(node, "high", lambda c: _realise(c, khi, forms[1]))
                return
            x = node.this
            low = exp.GTE(this=_realise(x.copy(), kx, forms[0]),
                          expression=_realise(node.args["low"], klo, forms[0]))
            high = exp.LTE(this=_realise(x.copy(), kx, forms[1]),
                           expression=_realise(node.args["high"], khi, forms[1]))
            _replace(node, lambda _: exp.Paren(this=exp.And(this=low, expression=high)))

        return apply

    def _in(self, node):
        kx = self.kind(node.this)
        query = node.args.get("query")
        if query is not None:
            projections = _first_projections(query)
            if not projections:
                return None
            kinds = [self.kind(p.unalias()) for p in projections]
            mode = comparison_affinity(kx.affinity, kinds[0].affinity)
            if mode in NUMERIC_AFFINITIES and all(k.duck == "VARCHAR" for k in [kx, *kinds]):
                def apply_keys():
                    _set(node, "this", equality_key)
                    for proj in _first_projections(query):
                        _replace(proj.unalias(), equality_key)

                return apply_keys
            form = _form(mode, [kx, *kinds], True)
            if form is None:
                return None

            def apply_query():
                _set(node, "this", lambda c: _realise(c, kx, form))
                for proj, kind in zip(_first_projections(query), kinds):
                    inner = proj.unalias()
                    _replace(inner, lambda c, kind=kind: _realise(c, kind, form))

            return apply_query
        values = node.expressions
        kinds = [dataclasses.replace(self.kind(v), affinity=None) for v in values]
        if (kx.affinity in NUMERIC_AFFINITIES and kx.duck == "VARCHAR"
                and any(is_text_literal(v) for v in values)
                and all(isinstance(v, exp.Literal) for v in values)):
            return lambda: _replace(node, in_mixed_list)
        form = _form(kx.affinity, [kx, *kinds], True)
        if form is None:
            return None

        def apply_list():
            _set(node, "this", lambda c: _realise(c, kx, form))
            node.set("expressions", [_realise(v, k, form) for v, k in zip(node.expressions, kinds)])

        return apply_list

    def _min_max(self, node):
        kind = self.kind(node.this)
        if kind.stored == "text" and kind.duck in NUMBER_TYPES:
            def apply_text():
                _set(node, "this", lambda c: as_text(c, kind))
                _replace(node, lambda n: exp.Cast(this=n, to=exp.DataType.build(kind.duck)))

            return apply_text
        if kind.stored == "mixed":
            return lambda: _replace(node, mixed_extreme)
        return None

    def _numeric_args(self, node):
        return self._cast_args(node, [k for k in ("this", "expression")
                                      if self.kind(node.args.get(k)).duck == "VARCHAR"], as_real)

    def _string_args(self, node):
        keys = [k for k in ("this", "expression")
                if self.kind(node.args.get(k)).duck in NUMBER_TYPES]
        if isinstance(node, exp.GroupConcat):
            keys = [k for k in keys if k == "this"]
        return self._cast_args(node, keys, as_text)

    def _cast_args(self, node, keys, cast):
        """A rewrite applying `cast` (as_real / as_text) to the arguments `keys` of node, or None
        when there are none; the kinds are read before any rewrite."""
        if not keys:
            return None
        kinds = {k: self.kind(node.args[k]) for k in keys}

        def apply():
            for k in keys:
                _set(node, k, lambda c, k=k: cast(c, kinds[k]))

        return apply

    def _ordered(self, node):
        key = node.this
        kind = self.kind(key)
        query = node.parent.parent if node.parent is not None else None
        while isinstance(query, exp.SetOperation):
            query = query.this
        projection = None
        if kind is ANY and isinstance(query, exp.Select):
            projection = _projection_for(query, key)
            if projection is not None:
                kind = self.kind(projection.unalias())
        if kind.stored not in ("text", "mixed") or kind.stored == "text" and kind.duck == "VARCHAR":
            return None

        def apply():
            # An ordinal cannot be wrapped: it is replaced by the expression it names.
            target = projection.unalias().copy() if _is_ordinal(key) else node.this
            if kind.stored == "text":
                node.set("this", as_text(target, kind))
                return
            node.set("this", target)
            first = node.copy()
            first.set("this", as_number(target.copy(), kind))
            order = node.parent
            order.set("expressions", [*order.expressions[: node.index], first,
                                      *order.expressions[node.index :]])

        if _is_ordinal(key):
            self.late.append(apply)  # after the projection it copies has been rewritten
            return None
        return apply

    def _cast(self, node):
        arg = self.kind(node.this)
        target = self._cast_kind(node)
        if target.duck == "BIGINT" and arg.duck == "DOUBLE":
            return lambda: _set(node, "this", lambda c: exp.Trunc(this=c))
        if target.duck == "BIGINT" and arg.duck == "VARCHAR":
            return lambda: _set(node, "this", lambda c: exp.Trunc(this=as_real(c, arg)))
        if target.duck == "DOUBLE" and arg.duck == "VARCHAR":
            return lambda: _set(node, "this", lambda c: as_real(c, arg))
        if target.duck == "VARCHAR" and arg.duck in NUMBER_TYPES and arg.stored == "text":
            return lambda: _set(node, "this", lambda c: as_text(c, arg))
        return None


def _branches(node: exp.Expression) -> list[exp.Expression]:
    if isinstance(node, exp.Case):
        out = [w.args["true"] for w in node.args.get("ifs", [])]
        return out + ([node.args["default"]] if node.args.get("default") else [])
    if isinstance(node, exp.If):
        return [b for b in (node.args.get("true"), node.args.get("false")) if b is not None]
    return [node.this, *node.expressions]


def _first_projections(query: exp.Expression) -> list[exp.Expression]:
    """The first projection of every SELECT of an IN subquery (each branch of a UNION)."""
    while isinstance(query, exp.Subquery):
        query = query.this
    if isinstance(query, exp.SetOperation):
        return _first_projections(query.this) + _first_projections(query.expression)
    if isinstance(query, exp.Select) and query.expressions:
        first = query.expressions[0]
        return [] if isinstance(first.unalias(), exp.Star) else [first]
    return []


def _is_ordinal(key: exp.Expression) -> bool:
    return isinstance(key, exp.Literal) and not key.is_string


def _projection_for(select: exp.Select, key: exp.Expression) -> exp.Expression | None:
    """The projection an ORDER BY key names: an ordinal, or an alias."""
    if _is_ordinal(key):
        i = int(key.this) - 1
        return select.expressions[i] if 0 <= i < len(select.expressions) else None
    if isinstance(key, exp.Column) and not key.table:
        for proj in select.expressions:
            if isinstance(proj, exp.Alias) and proj.alias.lower() == key.name.lower():
                return proj
    return None


def apply_affinity(
    tree: exp.Expression, columns: Mapping[str, Mapping[str, ColumnType]]
) -> exp.Expression:
    """Rewrite a (preferably qualified) SQLite-dialect tree in place so that DuckDB compares,
    sorts and aggregates the copied `columns` (table -> column -> ColumnType) as SQLite does."""
    rewriter = _Rewriter(tree, columns)
    # Descendants before ancestors: an edit reads its operands as already rewritten.
    edits = [e for node in reversed(list(tree.walk())) if (e := rewriter.edit(node))]
    for apply in edits + rewriter.late:
        apply()
    return tree
