"""Loaders for Spider- and BIRD-format data sets, converted to DuckDB.

Input layout (both benchmarks): `tables.json`, an examples file (`question`, `db_id`, and the gold
SQL under `query` for Spider or `SQL` for BIRD, optional `difficulty`/`hardness` and `evidence`),
and `database/<db_id>/<db_id>.sqlite`.

Each SQLite database is copied into a DuckDB file through Python's `sqlite3` (the DuckDB sqlite
extension would need a download). Column types follow the values actually stored, since SQLite
accepts any value in any column. Keys go to a sidecar JSON that prompts.py reads, because Spider
databases often violate their own declared keys and DuckDB would refuse the rows.

Gold SQL is transpiled from SQLite to DuckDB with sqlglot, plus fix-ups for the semantic
differences that change results:
  * `a / b` on integers truncates in SQLite, DuckDB returns a double -> typed integer division;
    SQLite also yields NULL on division by zero, DuckDB an error or inf -> NULLIF(b, 0).
  * SQLite LIKE ignores ASCII case, DuckDB LIKE does not -> ILIKE.
  * SQLite accepts bare columns beside aggregates and takes them from the row of a lone MIN/MAX
    -> ARG_MIN/ARG_MAX, otherwise ANY_VALUE (DuckDB rejects them outright).
  * SQLite reads an unknown "double-quoted" identifier as a string -> string literal.
`load` then runs every gold query on both engines and reports the agreement percentage and the
queries whose results still differ.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify

from zorro_jax.tasks.text2sql import compare, prompts
from zorro_jax.tasks.text2sql.executor import Executor
from zorro_jax.tasks.text2sql.reward import DIFFICULTIES, Task

_DIFFICULTY_MAP = {
    "simple": "easy",
    "moderate": "medium",
    "challenging": "hard",
    "easy": "easy",
    "medium": "medium",
    "hard": "hard",
    "extra": "extra",
}


def _duckdb_type(values: list) -> str:
    present = [v for v in values if v is not None]
    if any(isinstance(v, (bytes, memoryview)) for v in present):
        return "BLOB"
    if present and all(isinstance(v, int) for v in present):
        return "BIGINT"
    if present and all(isinstance(v, (int, float)) for v in present):
        return "DOUBLE"
    return "VARCHAR"


def _coerce(value, dtype: str):
    if value is None or dtype in ("BIGINT", "DOUBLE", "BLOB"):
        return value
    return value if isinstance(value, str) else str(value)


def sqlite_schema(sqlite_path: str) -> dict[str, dict[str, str]]:
    """Table -> column -> declared type, for sqlglot's qualifier and type annotator."""
    src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    try:
        names = [
            r[0]
            for r in src.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {
            t: {c[1]: (c[2] or "TEXT") for c in src.execute(f'PRAGMA table_info("{t}")')}
            for t in names
        }
    finally:
        src.close()


def copy_sqlite_to_duckdb(sqlite_path: str, duckdb_path: str):
    """Copy every table (types inferred from the stored values) plus a keys sidecar."""
    src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    src.text_factory = lambda b: b.decode("utf-8", errors="replace")
    tmp = duckdb_path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)
    dst = duckdb.connect(tmp)
    keys = {"primary_keys": {}, "foreign_keys": {}}
    try:
        tables = [
            r[0]
            for r in src.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            info = list(src.execute(f'PRAGMA table_info("{table}")'))
            cols = [c[1] for c in info]
            rows = list(src.execute(f'SELECT * FROM "{table}"'))
            types = [_duckdb_type([r[i] for r in rows]) for i in range(len(cols))]
            defs = ", ".join(f'"{c}" {t}' for c, t in zip(cols, types))
            dst.execute(f'CREATE TABLE "{table}" ({defs})')
            if rows:
                marks = ", ".join("?" * len(cols))
                dst.executemany(
                    f'INSERT INTO "{table}" VALUES ({marks})',
                    [tuple(_coerce(v, t) for v, t in zip(r, types)) for r in rows],
                )
            pk = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5] > 0]
            if pk:
                keys["primary_keys"][table] = pk
            fks = [
                [f[3], f[2], f[4] or (pk[0] if pk else f[3])]
                for f in src.execute(f'PRAGMA foreign_key_list("{table}")')
            ]
            if fks:
                keys["foreign_keys"][table] = fks
        dst.execute("CHECKPOINT")
    finally:
        dst.close()
        src.close()
    os.replace(tmp, duckdb_path)
    with open(prompts.keys_sidecar(duckdb_path), "w") as f:
        json.dump(keys, f)


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


def transpile_sqlite(sql: str, schema: dict[str, dict[str, str]], fixups: bool = True) -> str:
    """SQLite-dialect SQL -> DuckDB SQL; `fixups=False` gives sqlglot's plain transpile."""
    if not fixups:
        return sqlglot.transpile(sql, read="sqlite", write="duckdb")[0]
    columns = {c.lower() for cols in schema.values() for c in cols}
    tree = sqlglot.parse_one(sql, read="sqlite")
    tree = _fix_double_quoted_strings(tree, columns)
    try:  # qualification is what lets the type annotator see integer columns
        tree = qualify(
            tree, schema=schema, dialect="sqlite", validate_qualify_columns=False, identify=False
        )
    except Exception:  # noqa: BLE001, S110 - unqualifiable SQL is still transpiled, untyped
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


@dataclasses.dataclass(frozen=True)
class AgreementReport:
    """How many transpiled gold queries return on DuckDB what the original returns on SQLite."""

    n_tasks: int
    n_agree: int
    # (task_id, why): "duckdb: <error>", "sqlite: <error>" or "results differ".
    disagreements: tuple[tuple[str, str], ...]

    @property
    def agreement(self) -> float:
        """Fraction of tasks whose gold query gives the same result on SQLite and DuckDB (1.0 when
        none).
        """
        return self.n_agree / self.n_tasks if self.n_tasks else 1.0


def _sqlite_rows(sqlite_path: str, sql: str):
    conn = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def load(
    root: str,
    examples_file: str = "dev.json",
    out_dir: str | None = None,
    database_dir: str = "database",
    check: bool = True,
    fixups: bool = True,
) -> tuple[list[Task], AgreementReport | None]:
    """Tasks of a Spider/BIRD-format folder with DuckDB copies in `out_dir` (default
    `<root>/duckdb`), and (with `check`) the SQLite-vs-DuckDB agreement report."""
    out_dir = out_dir or os.path.join(root, "duckdb")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(root, examples_file)) as f:
        examples = json.load(f)
    schemas: dict[str, dict] = {}
    tasks, sources = [], []
    stem = os.path.splitext(os.path.basename(examples_file))[0]
    for i, ex in enumerate(examples):
        db_id = ex["db_id"]
        sqlite_path = os.path.join(root, database_dir, db_id, f"{db_id}.sqlite")
        db_path = os.path.join(out_dir, f"{db_id}.duckdb")
        if db_id not in schemas:
            if not os.path.isfile(db_path):
                copy_sqlite_to_duckdb(sqlite_path, db_path)
            schemas[db_id] = sqlite_schema(sqlite_path)
        gold_sqlite = ex.get("query", ex.get("SQL"))
        if gold_sqlite is None:
            raise KeyError(f"example {i} has neither 'query' (Spider) nor 'SQL' (BIRD)")
        difficulty = _DIFFICULTY_MAP.get(
            str(ex.get("difficulty", ex.get("hardness", ""))), "unknown"
        )
        assert difficulty in DIFFICULTIES
        tasks.append(
            Task(
                task_id=f"{stem}/{i}",
                db_id=db_id,
                db_path=db_path,
                question=ex["question"],
                gold_sql=transpile_sqlite(gold_sqlite, schemas[db_id], fixups=fixups),
                difficulty=difficulty,
                evidence=ex.get("evidence", "") or "",
            )
        )
        sources.append((sqlite_path, gold_sqlite))
    if not check:
        return tasks, None
    return tasks, agreement_report(tasks, sources)


def agreement_report(tasks: list[Task], sources: list[tuple[str, str]]) -> AgreementReport:
    """Run each task's DuckDB gold and its SQLite original; compare with the spider rule."""
    disagreements = []
    with Executor() as ex:
        for task, (sqlite_path, sqlite_sql) in zip(tasks, sources):
            duck = ex.execute(task.gold_sql, task.db_path)
            if not duck.ok:
                disagreements.append((task.task_id, f"duckdb: {duck.status} {duck.message}"))
                continue
            try:
                lite = _sqlite_rows(sqlite_path, sqlite_sql)
            except sqlite3.Error as err:
                disagreements.append((task.task_id, f"sqlite: {err}"))
                continue
            ordered = compare.gold_orders_rows(task.gold_sql)
            if not compare.results_match(duck.rows, lite, rule="spider", order_matters=ordered):
                disagreements.append((task.task_id, "results differ"))
    return AgreementReport(len(tasks), len(tasks) - len(disagreements), tuple(disagreements))


def write_spider_fixture(root: str) -> str:
    """Write a tiny Spider/BIRD-format data set into `root` (for tests and examples)."""
    db_dir = os.path.join(root, "database", "concerts")
    os.makedirs(db_dir, exist_ok=True)
    path = os.path.join(db_dir, "concerts.sqlite")
    if os.path.exists(path):
        os.remove(path)
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT,
                             age INTEGER);
        CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, concert_name TEXT, year TEXT,
                              capacity INTEGER);
        CREATE TABLE singer_in_concert (concert_id INTEGER REFERENCES concert(concert_id),
                                        singer_id INTEGER REFERENCES singer(singer_id));
        INSERT INTO singer VALUES (1, 'Joan Tell', 'France', 41), (2, 'Rui Sol', 'Portugal', 29),
            (3, 'Tim Vox', 'France', 30), (4, 'Ana Lua', 'Portugal', 52),
            (5, 'Ed Ray', 'Chile', 34);
        INSERT INTO concert VALUES (1, 'Spring Nights', '2014', 5000), (2, 'Summer Air', '2015',
            7000), (3, 'Autumn Echo', '2015', 3001);
        INSERT INTO singer_in_concert VALUES (1, 1), (1, 2), (2, 2), (2, 3), (3, 4), (3, 1);
    """)
    conn.commit()
    conn.close()
    tables = [
        {
            "db_id": "concerts",
            "table_names_original": ["singer", "concert", "singer_in_concert"],
            "table_names": ["singer", "concert", "singer in concert"],
            "column_names_original": [
                [-1, "*"],
                [0, "singer_id"],
                [0, "name"],
                [0, "country"],
                [0, "age"],
                [1, "concert_id"],
                [1, "concert_name"],
                [1, "year"],
                [1, "capacity"],
                [2, "concert_id"],
                [2, "singer_id"],
            ],
            "column_types": [
                "text",
                "number",
                "text",
                "text",
                "number",
                "number",
                "text",
                "text",
                "number",
                "number",
                "number",
            ],
            "primary_keys": [1, 5],
            "foreign_keys": [[9, 5], [10, 1]],
        }
    ]
    spider = [
        {
            "db_id": "concerts",
            "question": "How many singers are there?",
            "query": "SELECT count(*) FROM singer",
            "hardness": "easy",
        },
        {
            "db_id": "concerts",
            "question": "Names of singers from France?",
            "query": 'SELECT name FROM singer WHERE country LIKE "france"',
            "hardness": "easy",
        },
        {
            "db_id": "concerts",
            "question": "Average age, as SQLite computes it?",
            "query": "SELECT sum(age) / count(*) FROM singer",
            "hardness": "medium",
        },
        {
            "db_id": "concerts",
            "question": "Name and age of the oldest singer?",
            "query": "SELECT name, max(age) FROM singer",
            "hardness": "medium",
        },
        {
            "db_id": "concerts",
            "question": "Concerts per year, ordered by year?",
            "query": "SELECT year, count(*) FROM concert GROUP BY year ORDER BY year",
            "hardness": "medium",
        },
        {
            "db_id": "concerts",
            "question": "Singers in the concert with the largest capacity?",
            "query": "SELECT T1.name FROM singer AS T1 JOIN singer_in_concert AS T2 ON "
            "T1.singer_id = T2.singer_id WHERE T2.concert_id = (SELECT concert_id FROM "
            "concert ORDER BY capacity DESC LIMIT 1)",
            "hardness": "hard",
        },
        {
            "db_id": "concerts",
            "question": "Storage type of the age column?",
            "query": "SELECT typeof(age) FROM singer LIMIT 1",
            "hardness": "extra",
        },
    ]
    bird = [
        {
            "db_id": "concerts",
            "question": "How many concerts took place in 2015?",
            "evidence": "year is stored as text",
            "SQL": "SELECT COUNT(*) FROM concert WHERE year = '2015'",
            "difficulty": "simple",
        },
        {
            "db_id": "concerts",
            "question": "Capacity per singer of the 2015 concerts?",
            "evidence": "",
            "SQL": "SELECT SUM(capacity) / COUNT(DISTINCT T2.singer_id) FROM "
            "concert AS T1 JOIN singer_in_concert AS T2 ON T1.concert_id = T2.concert_id WHERE "
            "T1.year = '2015'",
            "difficulty": "moderate",
        },
    ]
    for name, data in (("tables.json", tables), ("dev.json", spider), ("bird_dev.json", bird)):
        with open(os.path.join(root, name), "w") as f:
            json.dump(data, f, indent=1)
    return root
