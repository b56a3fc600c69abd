"""Sandboxed DuckDB execution of untrusted SQL for the text-to-SQL reward.

Layers, outermost first:
  1. `guard.check_sql`: only one read-only query over the database's own tables is ever sent.
  2. The connection: read-only, `enable_external_access=false` (no files, no network, no
     extension installs), `lock_configuration=true` (a query cannot undo the settings),
     a memory limit and `threads=1` (the reward's thread pool supplies the parallelism).
  3. A per-query timeout: a timer calls `interrupt()` on the cursor. One watchdog thread per
     executor serves all deadlines; starting a `threading.Timer` per query cost about as much
     as the query itself (~1.5 ms on a busy 2-core machine).
  4. A row cap: results are streamed and at most `row_cap + 1` rows are fetched.

A `DuckDBPyConnection` is not thread-safe, so each thread gets its own `cursor()` (a connection
sharing the same database instance) per database; the base connection is opened once per file.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
import threading
import time
from typing import Any

import duckdb

from zorro_jax.tasks.text2sql import guard


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    """Sandbox limits: per-query timeout, DuckDB memory limit, fetched-row cap, largest size
    literal.
    """

    # Wall-clock limit per query, execution plus fetch.
    timeout_s: float = 5.0
    # DuckDB memory limit of each database instance (DuckDB size syntax).
    memory_limit: str = "512MB"
    # At most this many rows are fetched; a longer result is marked truncated.
    row_cap: int = 10_000
    # Largest literal accepted as a size argument (repeat, lpad, range, ...).
    max_size_literal: int = 10_000

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.row_cap < 1:
            raise ValueError(f"row_cap must be >= 1, got {self.row_cap}")
        if self.max_size_literal < 1:
            raise ValueError(f"max_size_literal must be >= 1, got {self.max_size_literal}")
        if not self.memory_limit.strip():
            raise ValueError("memory_limit must be a DuckDB size such as '512MB'")


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """What happened to one query.

    status: ok | empty | parse_error | multiple_statements | disallowed_statement |
    disallowed_function | unknown_table | timeout | error. Only `ok` carries rows.
    """

    status: str
    rows: tuple[tuple[Any, ...], ...] | None = None
    columns: tuple[str, ...] = ()
    truncated: bool = False
    message: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the query ran to completion."""
        return self.status == "ok"


class _Watchdog:
    """One daemon thread that fires callbacks at their deadlines unless disarmed first."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._callbacks: dict[int, object] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def stop(self):
        with self._cond:
            self._stopped = True
            self._callbacks.clear()
            self._cond.notify()

    def arm(self, seconds: float, callback) -> int:
        with self._cond:
            token = next(self._ids)
            self._callbacks[token] = callback
            heapq.heappush(self._heap, (time.monotonic() + seconds, token))
            if self._thread is None or self._stopped:
                self._stopped = False
                self._thread = threading.Thread(target=self._loop, name="t2s-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
            return token

    def disarm(self, token: int):
        with self._cond:
            self._callbacks.pop(token, None)

    def _loop(self):
        while True:
            with self._cond:
                if self._stopped:
                    self._thread = None
                    return
                while self._heap and self._heap[0][1] not in self._callbacks:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                callback = self._callbacks.pop(token, None)
            if callback is not None:
                callback()


class _Database:
    """One read-only DuckDB instance plus the per-thread cursors into it."""

    def __init__(self, path: str, config: ExecutorConfig):
        self.path = path
        self.conn = duckdb.connect(
            path,
            read_only=True,
            config={
                "enable_external_access": False,
                "memory_limit": config.memory_limit,
                "threads": 1,
                "lock_configuration": True,
            },
        )
        tables = self.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()
        self.tables = frozenset(name.lower() for (name,) in tables)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cursors: list[duckdb.DuckDBPyConnection] = []

    def cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:  # cursor() mutates the shared base connection
                cur = self.conn.cursor()
                self._cursors.append(cur)
            self._local.cursor = cur
        return cur

    def close(self):
        with self._lock:
            for cur in self._cursors:
                cur.close()
            self._cursors.clear()
            self.conn.close()


class Executor:
    """Runs untrusted SQL against DuckDB files; safe to call from many threads at once."""

    def __init__(self, config: ExecutorConfig | None = None):
        self.config = config or ExecutorConfig()
        self._dbs: dict[str, _Database] = {}
        self._lock = threading.Lock()
        self._gold: dict[tuple[str, str], ExecResult] = {}
        self._gold_lock = threading.Lock()
        self._watchdog = _Watchdog()

    def _database(self, db_path: str) -> _Database:
        db = self._dbs.get(db_path)
        if db is None:
            with self._lock:
                key = os.path.realpath(db_path)
                # Different spellings of one path share one instance (and its cursors).
                db = self._dbs.get(key) or next(
                    (d for d in self._dbs.values() if d.path == key), None
                )
                if db is None:
                    if not os.path.isfile(key):
                        raise FileNotFoundError(key)
                    db = _Database(key, self.config)
                self._dbs[key] = self._dbs[db_path] = db
        return db

    def tables(self, db_path: str) -> frozenset[str]:
        """Lower-case names of the tables and views in the database's main schema."""
        return self._database(db_path).tables

    def execute(self, sql: str, db_path: str) -> ExecResult:
        """Check `sql` statically, then run it under the sandbox; never raises on bad SQL."""
        start = time.perf_counter()
        try:
            db = self._database(db_path)
        except Exception as err:  # noqa: BLE001 - a reward never raises on a bad path
            return ExecResult("error", message=f"cannot open database: {err}")
        verdict = guard.check_sql(sql, db.tables, self.config.max_size_literal)
        if not verdict.ok:
            return ExecResult(
                verdict.reason, message=verdict.message, seconds=time.perf_counter() - start
            )
        return self._run(db, sql, start)

    def _run(self, db: _Database, sql: str, start: float) -> ExecResult:
        cur = db.cursor()
        state = {"done": False, "fired": False}
        state_lock = threading.Lock()

        def on_timeout():
            # Interrupt only while this query is still running, so a late timer can never
            # cancel the next query issued on the same cursor.
            with state_lock:
                if not state["done"]:
                    state["fired"] = True
                    cur.interrupt()

        token = self._watchdog.arm(self.config.timeout_s, on_timeout)
        try:
            cur.execute(sql)
            description = cur.description or []
            rows = cur.fetchmany(self.config.row_cap + 1)
        except Exception as err:  # noqa: BLE001 - any DuckDB failure scores, never raises
            with state_lock:
                state["done"] = True
                fired = state["fired"]
            self._watchdog.disarm(token)
            seconds = time.perf_counter() - start
            if fired or isinstance(err, duckdb.InterruptException):
                return ExecResult(
                    "timeout", message=f"exceeded {self.config.timeout_s}s", seconds=seconds
                )
            text = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            return ExecResult("error", message=f"{type(err).__name__}: {text}", seconds=seconds)
        with state_lock:
            state["done"] = True
        self._watchdog.disarm(token)
        truncated = len(rows) > self.config.row_cap
        return ExecResult(
            "ok",
            rows=tuple(tuple(r) for r in rows[: self.config.row_cap]),
            columns=tuple(d[0] for d in description),
            truncated=truncated,
            seconds=time.perf_counter() - start,
        )

    def execute_gold(self, sql: str, db_path: str) -> ExecResult:
        """Execute a reference query once per (database, SQL) and cache the result."""
        try:
            key = (self._database(db_path).path, sql)
        except Exception as err:  # noqa: BLE001 - reported as a failed gold, never raised
            return ExecResult("error", message=f"cannot open database: {err}")
        cached = self._gold.get(key)
        if cached is not None:
            return cached
        result = self.execute(sql, db_path)
        if result.ok:  # a timeout may be load-dependent, so only successes are cached
            with self._gold_lock:
                self._gold[key] = result
        return result

    def close(self):
        """Close every open database and stop the timeout watchdog."""
        with self._lock:
            for db in set(self._dbs.values()):
                db.close()
            self._dbs.clear()
        self._watchdog.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
