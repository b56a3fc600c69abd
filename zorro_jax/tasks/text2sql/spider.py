"""Loaders for Spider- and BIRD-format data sets, run on DuckDB copies of their databases.

Layouts, as the downloads ship them (`detect_format` tells them apart):
  Spider  `database/<db>/<db>.sqlite`, `tables.json`, `train_spider.json` + `train_others.json`
          (split "train"), `dev.json` ("dev"), and in newer releases `test.json` with
          `test_database/` ("test"). Gold SQL under `query`, difficulty under `hardness`.
  BIRD    `<split>_databases/<db>/<db>.sqlite`, `<split>_tables.json`, `<split>.json` for split
          "train" or "dev", either in `root` or in `root/<split>/` (the train archive unpacks
          to `train/`). Gold SQL under `SQL`, plus `evidence` and `difficulty`.

Each SQLite database is copied into a DuckDB file in a cache directory keyed by its content
hash (sqlite_copy.py), and each gold query is transpiled SQLite -> DuckDB (transpile.py). The
agreement check runs every gold on both engines and compares the results with the data set's
rule ("spider": bags, ORDER BY-aware; "bird": sets), the rule the reward should use too, which
`AgreementReport.rule` carries (`RewardConfig(rule=report.rule)`). Transpiled SQL and verdicts
are cached beside the copy, keyed by the gold SQL, the transpiler version and the rule, so a
restart re-runs nothing that has not changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import time

import sqlglot

from zorro_jax.tasks.text2sql import compare
from zorro_jax.tasks.text2sql.executor import Executor
from zorro_jax.tasks.text2sql.reward import DIFFICULTIES, Task
from zorro_jax.tasks.text2sql.sqlite_copy import cached_copy, read_column_types, sqlite_schema
from zorro_jax.tasks.text2sql.sqlite_values import canonical_number
from zorro_jax.tasks.text2sql.transpile import TRANSPILER_VERSION, transpile_sqlite

FORMATS = ("spider", "bird")
# The result-comparison rule (compare.py) each data set's own evaluation uses.
RULE_OF_FORMAT = {"spider": "spider", "bird": "bird"}
# A gold query slower than this on SQLite is reported, not waited for.
SQLITE_TIMEOUT_S = 60.0
_DIFFICULTY_MAP = {
    "simple": "easy",
    "moderate": "medium",
    "challenging": "hard",
    "easy": "easy",
    "medium": "medium",
    "hard": "hard",
    "extra": "extra",
}
_SPIDER_SPLITS = {
    "train": (("train_spider.json", "train_others.json"), "database"),
    "dev": (("dev.json",), "database"),
    "test": (("test.json",), "test_database"),
}


@dataclasses.dataclass(frozen=True)
class AgreementReport:
    """How many transpiled gold queries return on DuckDB what the original returns on SQLite,
    under `rule`, the comparison rule of the data set (pass it to the reward)."""

    n_tasks: int
    n_agree: int
    # (task_id, why): "duckdb: <error>", "duckdb: result longer than the row cap",
    # "sqlite: <error>" or "results differ".
    disagreements: tuple[tuple[str, str], ...]
    rule: str = "spider"

    @property
    def agreement(self) -> float:
        """Fraction of tasks whose gold query gives the same result on SQLite and DuckDB (1.0 when
        none).
        """
        return self.n_agree / self.n_tasks if self.n_tasks else 1.0

    def __add__(self, other: AgreementReport) -> AgreementReport:
        if self.rule != other.rule:
            raise ValueError(f"cannot merge reports under rules {self.rule} and {other.rule}")
        return AgreementReport(self.n_tasks + other.n_tasks, self.n_agree + other.n_agree,
                               self.disagreements + other.disagreements, self.rule)


def detect_format(root: str) -> str:
    """"spider" or "bird", from the files in `root`; raises naming what is missing."""
    spider_missing = [name for name, present in (
        ("database/", os.path.isdir(os.path.join(root, "database"))),
        ("tables.json", os.path.isfile(os.path.join(root, "tables.json"))),
    ) if not present]
    if not spider_missing:
        return "spider"
    for split in ("dev", "train"):
        for base in (root, os.path.join(root, split)):
            if os.path.isdir(os.path.join(base, f"{split}_databases")):
                return "bird"
    present = sorted(os.listdir(root)) if os.path.isdir(root) else []
    raise FileNotFoundError(
        f"{root} is not a Spider folder (missing {' and '.join(spider_missing)}) nor a BIRD "
        f"folder (no dev_databases/ or train_databases/, here or in dev/ or train/); it holds "
        f"{present[:12]}"
    )


def _bird_base(root: str, split: str) -> str:
    for base in (root, os.path.join(root, split)):
        if os.path.isdir(os.path.join(base, f"{split}_databases")):
            return base
    raise FileNotFoundError(f"no {split}_databases/ in {root} or {os.path.join(root, split)}")


def load_split(
    root: str,
    split: str,
    format: str | None = None,
    cache_dir: str | None = None,
    fixups: bool = True,
) -> tuple[list[Task], AgreementReport]:
    """Tasks of split "train" or "dev" (Spider also "test") of a Spider or BIRD folder
    (`format`, detected when None), with the agreement report; DuckDB copies and gold verdicts
    are cached in `cache_dir` (see sqlite_copy.cache_dir)."""
    fmt = format or detect_format(root)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "spider":
        if split not in _SPIDER_SPLITS:
            raise ValueError(f"Spider splits are {tuple(_SPIDER_SPLITS)}, got {split!r}")
        names, database_dir = _SPIDER_SPLITS[split]
        base = root
        names = tuple(n for n in names if n != "train_others.json"
                      or os.path.isfile(os.path.join(root, n)))
    else:
        if split not in ("train", "dev"):
            raise ValueError(f"BIRD splits are ('train', 'dev'), got {split!r}")
        base = _bird_base(root, split)
        names, database_dir = (f"{split}.json",), f"{split}_databases"
    tasks: list[Task] = []
    rule = RULE_OF_FORMAT[fmt]
    report = AgreementReport(0, 0, (), rule)
    for name in names:
        part, part_report = load(base, name, out_dir=cache_dir, database_dir=database_dir,
                                 fixups=fixups, rule=rule)
        tasks += part
        report += part_report
    return tasks, report


class _Database:
    """One database of a load: its SQLite file, DuckDB copy, schema and gold cache (transpiled
    SQL and agreement verdicts, in a JSON file beside the copy)."""

    def __init__(self, sqlite_path: str, db_path: str, fixups: bool):
        self.sqlite_path, self.db_path, self.fixups = sqlite_path, db_path, fixups
        self.cache_path = os.path.splitext(db_path)[0] + ".golds.json"
        self.golds: dict[str, dict] = {}
        if os.path.isfile(self.cache_path):
            with open(self.cache_path) as f:
                self.golds = json.load(f)
        self.dirty = False
        self._types = None

    def gold(self, sqlite_sql: str) -> dict:
        """The cache entry of a gold query, with its DuckDB SQL under "duckdb"."""
        key = hashlib.sha256(
            json.dumps([TRANSPILER_VERSION, self.fixups, sqlite_sql]).encode()
        ).hexdigest()
        entry = self.golds.setdefault(key, {})
        if "duckdb" not in entry:
            if self._types is None:
                self._types = sqlite_schema(self.sqlite_path), read_column_types(self.db_path)
            schema, columns = self._types
            try:
                entry["duckdb"] = transpile_sqlite(sqlite_sql, schema, self.fixups, columns)
            except sqlglot.errors.SqlglotError:  # kept as written; the agreement check says so
                entry["duckdb"] = sqlite_sql
            self.dirty = True
        return entry

    def save(self):
        """Write the gold cache back when it changed."""
        if not self.dirty:
            return
        tmp = f"{self.cache_path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.golds, f)
        os.replace(tmp, self.cache_path)
        self.dirty = False


def load(
    root: str,
    examples_file: str = "dev.json",
    out_dir: str | None = None,
    database_dir: str | None = None,
    check: bool = True,
    fixups: bool = True,
    rule: str | None = None,
) -> tuple[list[Task], AgreementReport | None]:
    """Tasks of one examples file of a Spider/BIRD-format folder, and (with `check`) the
    SQLite-vs-DuckDB agreement report.

    Databases are read from `root/<database_dir>/<db>/<db>.sqlite`: by default `database/`, or
    `<stem>_databases/` (BIRD) when there is no `database/`. DuckDB copies go to `out_dir`
    (default: the cache, sqlite_copy.cache_dir). `rule` defaults to "bird" for examples with
    BIRD's `SQL` field, else "spider".
    """
    with open(os.path.join(root, examples_file)) as f:
        examples = json.load(f)
    stem = os.path.splitext(os.path.basename(examples_file))[0]
    if database_dir is None:
        database_dir = "database"
        if not os.path.isdir(os.path.join(root, database_dir)):
            database_dir = f"{stem}_databases"
    if rule is None:
        bird = bool(examples) and "SQL" in examples[0] and "query" not in examples[0]
        rule = "bird" if bird else "spider"
    if rule not in compare.RULES:
        raise ValueError(f"rule must be one of {compare.RULES}, got {rule!r}")
    databases: dict[str, _Database] = {}
    tasks, sources, entries = [], [], []
    for i, ex in enumerate(examples):
        db_id = ex["db_id"]
        db = databases.get(db_id)
        if db is None:
            sqlite_path = os.path.join(root, database_dir, db_id, f"{db_id}.sqlite")
            if not os.path.isfile(sqlite_path):
                raise FileNotFoundError(f"example {i} of {examples_file}: no {sqlite_path}")
            db = databases[db_id] = _Database(
                sqlite_path, cached_copy(sqlite_path, db_id, out_dir), fixups
            )
        gold_sqlite = ex.get("query", ex.get("SQL"))
        if gold_sqlite is None:
            raise KeyError(f"example {i} has neither 'query' (Spider) nor 'SQL' (BIRD)")
        entry = db.gold(gold_sqlite)
        difficulty = _DIFFICULTY_MAP.get(
            str(ex.get("difficulty", ex.get("hardness", ""))), "unknown"
        )
        assert difficulty in DIFFICULTIES
        tasks.append(
            Task(
                task_id=f"{stem}/{i}",
                db_id=db_id,
                db_path=db.db_path,
                question=ex["question"],
                gold_sql=entry["duckdb"],
                difficulty=difficulty,
                evidence=ex.get("evidence", "") or "",
            )
        )
        sources.append((db.sqlite_path, gold_sqlite))
        entries.append((db, entry))
    report = _cached_report(tasks, sources, entries, rule) if check else None
    for db in databases.values():
        db.save()
    return tasks, report


def _cached_report(tasks, sources, entries, rule: str) -> AgreementReport:
    """The agreement report, running only the golds without a cached verdict under `rule`."""
    todo = [i for i, (_, entry) in enumerate(entries) if rule not in entry.get("verdicts", {})]
    fresh: dict[str, str] = {}
    if todo:
        report = agreement_report([tasks[i] for i in todo], [sources[i] for i in todo], rule)
        fresh = {task_id: why for task_id, why in report.disagreements}
        for i in todo:
            why = fresh.get(tasks[i].task_id, "")
            if "timeout" in why:  # load-dependent: decided again next time
                continue
            db, entry = entries[i]
            entry.setdefault("verdicts", {})[rule] = why
            db.dirty = True
    disagreements = []
    for task, (_, entry) in zip(tasks, entries):
        why = entry.get("verdicts", {}).get(rule, fresh.get(task.task_id, ""))
        if why:
            disagreements.append((task.task_id, why))
    return AgreementReport(len(tasks), len(tasks) - len(disagreements), tuple(disagreements), rule)


def _sqlite_rows(sqlite_path: str, sql: str):
    conn = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    deadline = time.monotonic() + SQLITE_TIMEOUT_S
    conn.set_progress_handler(lambda: time.monotonic() > deadline, 100_000)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError as err:
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"timeout after {SQLITE_TIMEOUT_S:.0f}s") from err
        raise
    finally:
        conn.close()


def _numbers_for_numeric_text(rows) -> list[tuple]:
    def cell(v):
        if isinstance(v, str):
            number = canonical_number(v)
            return v if number is None else number
        return v

    return [tuple(cell(v) for v in row) for row in rows]


def rows_agree(duck_rows, sqlite_rows, rule: str = "spider", order_matters: bool = False) -> bool:
    """Whether a DuckDB result equals a SQLite one under `rule`, reading every canonical number
    text ('150', '31.5') as its number: the copy stores such TEXT columns as numbers, so
    SQLite's '150' and DuckDB's 150 are the same value."""
    return compare.results_match(
        _numbers_for_numeric_text(duck_rows),
        _numbers_for_numeric_text(sqlite_rows),
        rule=rule,
        order_matters=order_matters,
    )


def agreement_report(
    tasks: list[Task], sources: list[tuple[str, str]], rule: str = "spider"
) -> AgreementReport:
    """Run each task's DuckDB gold and its SQLite original (sources: (sqlite path, SQL)) and
    compare the results with `rule`."""
    disagreements = []
    with Executor() as ex:
        for task, (sqlite_path, sqlite_sql) in zip(tasks, sources):
            duck = ex.execute(task.gold_sql, task.db_path)
            if not duck.ok:
                disagreements.append((task.task_id, f"duckdb: {duck.status} {duck.message}"))
                continue
            if duck.truncated:
                disagreements.append((task.task_id, "duckdb: result longer than the row cap"))
                continue
            try:
                lite = _sqlite_rows(sqlite_path, sqlite_sql)
            except sqlite3.Error as err:
                disagreements.append((task.task_id, f"sqlite: {err}"))
                continue
            ordered = compare.gold_orders_rows(task.gold_sql)
            if not rows_agree(duck.rows, lite, rule, ordered):
                disagreements.append((task.task_id, "results differ"))
    return AgreementReport(len(tasks), len(tasks) - len(disagreements), tuple(disagreements), rule)
