"""Static SQL guard: decides from the sqlglot AST whether a string may be executed at all.

The sandboxed DuckDB connection (read-only, external access off, configuration locked) is the
first line of defence; this module is the second. It admits exactly one read-only query (SELECT,
WITH ... SELECT, or a set operation of those) over the database's own tables, and rejects file
readers, dynamic-SQL table functions, and size arguments large enough to exhaust memory inside a
single scalar call (DuckDB cannot interrupt a `range(3e8)` list build, and such allocations
bypass its memory limit). A rejected string is never sent to DuckDB.
"""

from __future__ import annotations

import dataclasses

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

# Table functions and scalar functions that touch the file system, the network, the catalog of
# other databases, or run SQL from a string. External access is off anyway; this list exists so
# that a configuration mistake does not silently open the sandbox.
DENIED_FUNCTIONS = frozenset(
    {
        "read_csv",
        "read_csv_auto",
        "read_parquet",
        "parquet_scan",
        "parquet_metadata",
        "parquet_schema",
        "parquet_file_metadata",
        "parquet_kv_metadata",
        "read_json",
        "read_json_auto",
        "read_json_objects",
        "read_ndjson",
        "read_ndjson_auto",
        "read_ndjson_objects",
        "read_text",
        "read_blob",
        "glob",
        "sniff_csv",
        "read_xlsx",
        "iceberg_scan",
        "iceberg_metadata",
        "delta_scan",
        "st_read",
        "sqlite_scan",
        "sqlite_attach",
        "postgres_scan",
        "postgres_attach",
        "mysql_scan",
        "query",
        "query_table",
        "getenv",
        "load_extension",
        "duckdb_secrets",
        "duckdb_extensions",
        "pragma_database_list",
        "which_secret",
        "csv_scan",
        "arrow_scan",
        "json_execute_serialized_sql",
        "duckdb_settings",
    }
)

# Functions whose output size is set by an argument: (name -> indexes of size arguments).
# Every such argument must be an integer literal no larger than `max_size_literal`.
SIZED_FUNCTIONS = {
    "repeat": (1,),
    "lpad": (1,),
    "rpad": (1,),
    "range": (0, 1, 2),
    "generate_series": (0, 1, 2),
    "list_resize": (1,),
    "array_resize": (1,),
    "bar": (3,),
}

# Statement kinds that may never appear anywhere in the tree.
_DENIED_NODES = (
    exp.Create,
    exp.Drop,
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Copy,
    exp.Command,
    exp.Pragma,
    exp.Set,
    exp.Attach,
    exp.Detach,
    exp.Install,
    exp.Describe,
    exp.Into,
    exp.Alter,
    exp.TruncateTable,
    exp.Use,
    exp.Summarize,
    exp.Show,
    exp.LoadData,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Cache,
    exp.Uncache,
)
_QUERY_ROOTS = (exp.Select, exp.Union, exp.Intersect, exp.Except, exp.Subquery)


@dataclasses.dataclass(frozen=True)
class GuardVerdict:
    """Outcome of the static check. `reason` is one of: ok, empty, parse_error,
    multiple_statements, disallowed_statement, disallowed_function, unknown_table."""

    reason: str
    message: str = ""
    tree: exp.Expression | None = None

    @property
    def ok(self) -> bool:
        """True when the SQL passed every check."""
        return self.reason == "ok"


def function_name(node: exp.Func) -> str:
    """Lower-case SQL name of a function node, for typed and anonymous sqlglot functions."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _literal_int(node: exp.Expression | None) -> int | None:
    """The integer value of a (possibly negated) numeric literal, else None."""
    if isinstance(node, exp.Neg):
        inner = _literal_int(node.this)
        return None if inner is None else -inner
    if isinstance(node, exp.Paren):
        return _literal_int(node.this)
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            value = float(node.this)
        except ValueError:
            return None
        return int(value) if value.is_integer() else None
    return None


def _function_args(node: exp.Func) -> list[exp.Expression]:
    """Positional arguments of a function node in SQL order."""
    if isinstance(node, exp.Anonymous):
        return list(node.expressions)
    args = []
    for key in node.arg_types:
        value = node.args.get(key)
        if isinstance(value, list):
            args.extend(value)
        elif isinstance(value, exp.Expression):
            args.append(value)
    return args


def _check_sized(node: exp.Func, name: str, max_size: int) -> str | None:
    """Message if a size argument is missing a small integer literal, else None."""
    if isinstance(node, exp.GenerateSeries):
        sized = [node.args.get("start"), node.args.get("end"), node.args.get("step")]
        sized = [a for a in sized if a is not None]
    elif isinstance(node, exp.Pad):
        sized = [node.args.get("expression")]
    elif isinstance(node, exp.Repeat):
        sized = [node.args.get("times")]
    else:
        args = _function_args(node)
        sized = [args[i] for i in SIZED_FUNCTIONS[name] if i < len(args)]
    for arg in sized:
        value = _literal_int(arg)
        if value is None or abs(value) > max_size:
            return f"{name}() size argument must be an integer literal <= {max_size}"
    return None


def _cte_names(tree: exp.Expression) -> set[str]:
    return {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}


def check_sql(
    sql: str, tables: frozenset[str] | None = None, max_size_literal: int = 10_000
) -> GuardVerdict:
    """Statically check `sql`; `tables` (lower-case names) restricts which base tables may be read.

    The rules are deliberately narrower than "read-only": a text-to-SQL answer needs nothing but
    a query over the database's tables, so anything else is refused without being run.
    """
    if not sql or not sql.strip():
        return GuardVerdict("empty", "no SQL")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        return GuardVerdict("parse_error", "SQL is not valid UTF-8")
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError) as err:
        return GuardVerdict("parse_error", str(err).splitlines()[0][:200])
    except Exception as err:  # noqa: BLE001 - sqlglot raises assorted errors on hostile input
        return GuardVerdict("parse_error", f"{type(err).__name__}: {str(err)[:200]}")
    if not statements:
        return GuardVerdict("empty", "no statement")
    if len(statements) > 1:
        return GuardVerdict("multiple_statements", f"{len(statements)} statements")
    tree = statements[0]
    if not isinstance(tree, _QUERY_ROOTS):
        return GuardVerdict("disallowed_statement", f"{type(tree).__name__} is not a query")
    if isinstance(tree, exp.Subquery) and not isinstance(tree.unnest(), _QUERY_ROOTS):
        return GuardVerdict("disallowed_statement", "parenthesised non-query")
    ctes = _cte_names(tree)
    for node in tree.walk():
        if isinstance(node, _DENIED_NODES):
            return GuardVerdict("disallowed_statement", f"{type(node).__name__} is not allowed")
        if isinstance(node, exp.ReadCSV):
            return GuardVerdict("disallowed_function", "read_csv is not allowed")
        if isinstance(node, exp.Func):
            name = function_name(node)
            if name in DENIED_FUNCTIONS or name.startswith(("read_", "pragma_")):
                return GuardVerdict("disallowed_function", f"{name}() is not allowed")
            if name in SIZED_FUNCTIONS or isinstance(node, (exp.Repeat, exp.Pad)):
                message = _check_sized(node, name, max_size_literal)
                if message:
                    return GuardVerdict("disallowed_function", message)
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            verdict = _check_table(node, ctes, tables)
            if verdict is not None:
                return verdict
    return GuardVerdict("ok", tree=tree)


def _check_table(node: exp.Table, ctes: set[str], tables: frozenset[str] | None):
    name = node.name.lower()
    # A quoted path such as FROM 'data.csv' is a DuckDB replacement scan on a file.
    if any(ch in name for ch in "/\\") or "." in name or name.startswith("~"):
        return GuardVerdict(
            "disallowed_function", f"table reference {node.name!r} looks like a path"
        )
    if node.args.get("db") is not None or node.args.get("catalog") is not None:
        schema = node.text("db").lower()
        if schema not in ("main", ""):
            return GuardVerdict("unknown_table", f"schema {schema!r} is not readable")
    if name in ctes:
        return None
    if tables is not None and name not in tables:
        return GuardVerdict("unknown_table", f"table {node.name!r} does not exist")
    return None
