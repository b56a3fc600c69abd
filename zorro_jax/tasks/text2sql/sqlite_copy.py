"""SQLite databases copied into DuckDB files, typed from the values they actually store.

SQLite accepts any value in any column; a declared type only gives the column an *affinity*
(`declared_affinity`, SQLite's rules in section 3.1 of "Datatypes In SQLite"), which converts
values on insert and steers comparisons. DuckDB needs one type per column, so each column's type
follows its stored values (`ColumnType.stored` records which SQLite storage classes occur):

  * only integers -> BIGINT; integers and reals -> DOUBLE; any blob -> BLOB.
  * only text, and every value is the canonical text of a number (`number_text`: '150', '31.5',
    not '007', '1.50', '18.0', ' 12' or 'inf') -> BIGINT when all are integers, else DOUBLE. Spider
    declares many number-holding columns TEXT (`cars_data.horsepower`, `concert.year`); typed
    this way `avg(mpg)` and `year = 2014` work in DuckDB as they do in SQLite, and the transpiler
    (affinity.py) recovers the exact original text where SQLite compares or sorts it as text.
  * other text, and text mixed with numbers (a numeric column holding '' or 'n/a') -> VARCHAR,
    numbers written as Python's `str`.
  * no non-NULL value -> from the declared affinity (INTEGER -> BIGINT, REAL and NUMERIC ->
    DOUBLE, else VARCHAR), so an empty table still compares with numbers without binder errors.

The declared type still decides how SQLite compares the values (its affinity), which the
transpiler reproduces; declared and chosen types go to a sidecar JSON (`prompts.keys_sidecar`) together
with the primary and foreign keys, which are not created as constraints because Spider databases
often violate their own declared keys and DuckDB would refuse the rows.

Rows move in batches through Python's `sqlite3` (the DuckDB sqlite extension would need a
download) as NumPy object columns that DuckDB scans in bulk. `cached_copy` keeps copies in a
cache directory keyed by the SQLite file's content hash, never beside the data set, which is
often read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3

import duckdb
import numpy as np
from sqlglot import exp

from zorro_jax.tasks.text2sql import prompts

# Part of every cache key: bump when the typing rules or the layout of a copy change.
COPY_VERSION = 2
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "zorro_jax", "duckdb")
CACHE_ENV = "ZORRO_CACHE_DIR"
NUMERIC_AFFINITIES = ("INTEGER", "REAL", "NUMERIC")
_BATCH_ROWS = 100_000


def declared_affinity(declared: str) -> str:
    """SQLite's column affinity for a declared type: INTEGER, TEXT, BLOB, REAL or NUMERIC."""
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t.strip():
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


@dataclasses.dataclass(frozen=True)
class ColumnType:
    """How one SQLite column was copied: declared type and affinity, the storage classes of its
    values, and its DuckDB type.
    """

    declared: str
    # SQLite affinity, see `declared_affinity`.
    affinity: str
    # Storage classes of the non-NULL values: "number" (integers/reals), "text", "mixed"
    # (numbers and text), "blob", or "empty" (none).
    stored: str
    # DuckDB type of the copy: BIGINT, DOUBLE, VARCHAR or BLOB.
    duckdb: str

    @classmethod
    def from_declared(cls, declared: str) -> ColumnType:
        """The type of a column whose copy follows its declared affinity (values unknown)."""
        affinity = declared_affinity(declared)
        duck = {"INTEGER": "BIGINT", "REAL": "DOUBLE", "NUMERIC": "DOUBLE"}.get(affinity, "VARCHAR")
        stored = "number" if affinity in NUMERIC_AFFINITIES else "text"
        return cls(declared, affinity, stored, duck)


def number_text(value: exp.Expression, duck_type: str) -> exp.Expression:
    """DuckDB expression for the canonical text of a BIGINT or DOUBLE: what CAST gives, with a
    trailing '.0' dropped, so 18.0 -> '18' and 31.5 -> '31.5'. A TEXT column becomes numeric only
    when this reproduces every stored value, so the transpiler can recover the original text.
    """
    text = exp.Cast(this=value, to=exp.DataType.build("VARCHAR"))
    if duck_type == "BIGINT":
        return text
    return exp.RegexpReplace(
        this=text, expression=exp.Literal.string(r"\.0$"), replacement=exp.Literal.string("")
    )


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_schema(sqlite_path: str) -> dict[str, dict[str, str]]:
    """Table -> column -> declared type ('TEXT' when none), for sqlglot's qualifier."""
    src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        return {t: dict(cols) for t, cols in _tables(src).items()}
    finally:
        src.close()


def _tables(src: sqlite3.Connection) -> dict[str, list[tuple[str, str]]]:
    names = [
        r[0]
        for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {
        t: [(c[1], c[2] or "TEXT") for c in src.execute(f"PRAGMA table_info({_sql_name(t)})")]
        for t in names
    }


def _initial_types(src, table: str, columns: list[tuple[str, str]]) -> list[ColumnType]:
    """Storage-class census of every column in one scan, and the DuckDB type it implies."""
    parts = []
    for name, _ in columns:
        q = _sql_name(name)
        parts.append(
            f"sum(typeof({q}) = 'integer'), sum(typeof({q}) = 'real'), "
            f"sum(typeof({q}) = 'text'), sum(typeof({q}) = 'blob')"
        )
    counts = src.execute(f"SELECT {', '.join(parts)} FROM {_sql_name(table)}").fetchone()
    types = []
    for i, (_, declared) in enumerate(columns):
        n_int, n_real, n_text, n_blob = (c or 0 for c in counts[4 * i : 4 * i + 4])
        if n_blob:
            stored, duck = "blob", "BLOB"
        elif n_text and (n_int or n_real):
            stored, duck = "mixed", "VARCHAR"
        elif n_text:
            stored, duck = "text", "VARCHAR"
        elif n_real:
            stored, duck = "number", "DOUBLE"
        elif n_int:
            stored, duck = "number", "BIGINT"
        else:
            stored, duck = "empty", ColumnType.from_declared(declared).duckdb
        types.append(ColumnType(declared, declared_affinity(declared), stored, duck))
    return types


def _to_text(value):
    return value if value is None or isinstance(value, str) else str(value)


def _to_blob(value):
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()


def _insert_rows(src, dst, table: str, types: list[ColumnType], batch_rows: int):
    convert = [
        np.frompyfunc(_to_text, 1, 1)
        if t.stored == "mixed"
        else np.frompyfunc(_to_blob, 1, 1)
        if t.stored == "blob"
        else None
        for t in types
    ]
    cur = src.execute(f"SELECT * FROM {_sql_name(table)}")
    while rows := cur.fetchmany(batch_rows):
        batch = {}
        for i, values in enumerate(zip(*rows)):
            column = np.empty(len(values), dtype=object)
            column[:] = values
            batch[f"c{i}"] = column if convert[i] is None else convert[i](column)
        dst.register("sqlite_batch", batch)
        dst.execute(f"INSERT INTO {_sql_name(table)} SELECT * FROM sqlite_batch")
        dst.unregister("sqlite_batch")


def _retype_numeric_text(dst, table: str, names: list[str], types: list[ColumnType]):
    """Make text-only columns numeric where every value is the canonical text of a number."""
    candidates = [i for i, t in enumerate(types) if t.stored == "text"]
    if not candidates:
        return types
    checks = []
    for i in candidates:
        col = exp.column(names[i], quoted=True)
        for duck in ("BIGINT", "DOUBLE"):
            parsed = exp.TryCast(this=col.copy(), to=exp.DataType.build(duck))
            same = exp.EQ(this=number_text(parsed, duck), expression=col.copy())
            if duck == "DOUBLE":  # 'inf' and 'nan' are text to SQLite
                same = exp.and_(same, exp.func("isfinite", parsed.copy()))
            same = exp.func("COALESCE", same, exp.false())
            checks.append(f"bool_and({col.sql('duckdb')} IS NULL OR {same.sql('duckdb')})")
    verdicts = dst.execute(f"SELECT {', '.join(checks)} FROM {_sql_name(table)}").fetchone()
    types = list(types)
    for k, i in enumerate(candidates):
        as_int, as_real = verdicts[2 * k], verdicts[2 * k + 1]
        duck = "BIGINT" if as_int else "DOUBLE" if as_real else None
        if duck is not None:
            dst.execute(
                f"ALTER TABLE {_sql_name(table)} ALTER {_sql_name(names[i])} SET DATA TYPE {duck}"
            )
            types[i] = dataclasses.replace(types[i], duckdb=duck)
    return types


def copy_sqlite_to_duckdb(
    sqlite_path: str, duckdb_path: str, batch_rows: int = _BATCH_ROWS
) -> dict[str, dict[str, ColumnType]]:
    """Copy every table (typed as the module docstring says) and write the sidecar with keys and
    column types; returns table -> column -> ColumnType.
    """
    src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    src.text_factory = lambda b: b.decode("utf-8", errors="replace")
    tmp = f"{duckdb_path}.{os.getpid()}.tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    dst = duckdb.connect(tmp)
    dst.execute(f"SET pandas_analyze_sample = {int(batch_rows)}")
    keys: dict = {"primary_keys": {}, "foreign_keys": {}, "columns": {}}
    column_types: dict[str, dict[str, ColumnType]] = {}
    try:
        for table, columns in _tables(src).items():
            names = [c for c, _ in columns]
            types = _initial_types(src, table, columns)
            defs = ", ".join(f"{_sql_name(c)} {t.duckdb}" for c, t in zip(names, types))
            dst.execute(f"CREATE TABLE {_sql_name(table)} ({defs})")
            _insert_rows(src, dst, table, types, batch_rows)
            types = _retype_numeric_text(dst, table, names, types)
            column_types[table] = dict(zip(names, types))
            keys["columns"][table] = {c: dataclasses.asdict(t) for c, t in zip(names, types)}
            info = list(src.execute(f"PRAGMA table_info({_sql_name(table)})"))
            pk = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5] > 0]
            if pk:
                keys["primary_keys"][table] = pk
            fks = [
                [f[3], f[2], f[4] or (pk[0] if pk else f[3])]
                for f in src.execute(f"PRAGMA foreign_key_list({_sql_name(table)})")
            ]
            if fks:
                keys["foreign_keys"][table] = fks
        dst.execute("CHECKPOINT")
    finally:
        dst.close()
        src.close()
    _write_json(prompts.keys_sidecar(duckdb_path), keys)
    os.replace(tmp, duckdb_path)
    return column_types


def read_column_types(duckdb_path: str) -> dict[str, dict[str, ColumnType]]:
    """The column types a copy recorded in its sidecar (empty when it has none)."""
    sidecar = prompts.keys_sidecar(duckdb_path)
    if not os.path.isfile(sidecar):
        return {}
    with open(sidecar) as f:
        recorded = json.load(f).get("columns", {})
    return {t: {c: ColumnType(**v) for c, v in cols.items()} for t, cols in recorded.items()}


def _write_json(path: str, data) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def cache_dir(override: str | None = None) -> str:
    """Where copies and agreement reports are kept: `override`, else $ZORRO_CACHE_DIR, else
    ~/.cache/zorro_jax/duckdb; created when missing.
    """
    path = os.path.expanduser(override or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
    os.makedirs(path, exist_ok=True)
    return path


def file_digest(path: str, cache: str) -> str:
    """SHA-256 of a file's content, remembered per (path, size, mtime) so that large databases
    are hashed once rather than on every start.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    memo_dir = os.path.join(cache, "digests")
    memo = os.path.join(memo_dir, hashlib.sha1(real.encode()).hexdigest() + ".json")
    stamp = {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if os.path.isfile(memo):
        with open(memo) as f:
            known = json.load(f)
        if all(known.get(k) == v for k, v in stamp.items()):
            return known["sha256"]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    os.makedirs(memo_dir, exist_ok=True)
    _write_json(memo, {**stamp, "sha256": h.hexdigest()})
    return h.hexdigest()


def cached_copy(sqlite_path: str, db_id: str, cache: str | None = None) -> str:
    """Path of the DuckDB copy of `sqlite_path` in the cache, made first when missing."""
    cache = cache_dir(cache)
    digest = file_digest(sqlite_path, cache)
    path = os.path.join(cache, f"{db_id}-{digest[:16]}-v{COPY_VERSION}.duckdb")
    if not (os.path.isfile(path) and os.path.isfile(prompts.keys_sidecar(path))):
        copy_sqlite_to_duckdb(sqlite_path, path)
    return path
