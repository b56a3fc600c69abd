"""Hostile SQL against the sandbox: every case scores, in time, leaves the database intact and
opens no file outside it (checked with Linux inotify on a canary folder)."""

import ctypes
import hashlib
import os
import struct
import time

import duckdb
import pytest

from zorro_jax.tasks.text2sql.executor import Executor, ExecutorConfig
from zorro_jax.tasks.text2sql.reward import RewardConfig, RewardFn, Task

TIMEOUT_S = 1.0
IN_ACCESS, IN_MODIFY, IN_OPEN, IN_CREATE = 0x1, 0x2, 0x20, 0x100


class Inotify:
    """Minimal inotify reader: names of files opened, read, written or created in a folder."""

    def __init__(self, folder):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            pytest.skip("inotify unavailable")
        mask = IN_ACCESS | IN_MODIFY | IN_OPEN | IN_CREATE
        if self.libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) < 0:
            pytest.skip("inotify watch failed")

    def events(self):
        names = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            i = 0
            while i < len(buf):
                _, mask, _, length = struct.unpack_from("iIII", buf, i)
                name = buf[i + 16 : i + 16 + length].rstrip(b"\0").decode()
                names.append((name, mask))
                i += 16 + length

    def close(self):
        os.close(self.fd)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    db = root / "db" / "shop.duckdb"
    db.parent.mkdir()
    conn = duckdb.connect(str(db))
    conn.execute("CREATE TABLE t (a INTEGER, s VARCHAR)")
    conn.execute("INSERT INTO t SELECT i, 'row' || i FROM range(1000) r(i)")
    conn.close()
    canary = root / "canary"
    canary.mkdir()
    (canary / "secret.csv").write_text("k,v\n1,top-secret\n")
    return str(db), str(canary)


def hostile_cases(canary):
    secret = os.path.join(canary, "secret.csv")
    many = ", ".join(f"t t{i}" for i in range(8))
    return [
        ("read_csv", f"SELECT * FROM read_csv('{secret}')", {0.0}),
        ("read_csv_auto", f"SELECT * FROM read_csv_auto('{secret}')", {0.0}),
        ("read_text", f"SELECT * FROM read_text('{secret}')", {0.0}),
        ("read_blob", f"SELECT * FROM read_blob('{secret}')", {0.0}),
        ("read_parquet", f"SELECT * FROM read_parquet('{canary}/x.parquet')", {0.0}),
        ("glob", f"SELECT * FROM glob('{canary}/*')", {0.0}),
        ("replacement scan", f"SELECT * FROM '{secret}'", {0.0}),
        (
            "file in subquery",
            f"SELECT a FROM t WHERE s IN (SELECT v FROM read_csv('{secret}'))",
            {0.0},
        ),
        ("copy to", f"COPY t TO '{canary}/out.csv'", {0.0}),
        ("copy select to", f"COPY (SELECT * FROM t) TO '{canary}/out.csv'", {0.0}),
        ("export database", f"EXPORT DATABASE '{canary}/dump'", {0.0}),
        ("attach", f"ATTACH '{canary}/other.duckdb' AS o", {0.0}),
        ("detach", "DETACH shop", {0.0}),
        ("install", "INSTALL httpfs", {0.0}),
        ("load", "LOAD httpfs", {0.0}),
        ("pragma", "PRAGMA database_list", {0.0}),
        ("call pragma", "CALL pragma_version()", {0.0}),
        ("set", "SET threads = 8", {0.0}),
        ("reset", "RESET memory_limit", {0.0}),
        ("getenv", "SELECT getenv('HOME')", {0.0}),
        ("dynamic sql", "SELECT * FROM query('SELECT * FROM t')", {0.0}),
        ("create", "CREATE TABLE z (a INTEGER)", {0.0}),
        ("create as", "CREATE TABLE z AS SELECT * FROM t", {0.0}),
        ("select into", "SELECT * INTO z FROM t", {0.0}),
        ("drop", "DROP TABLE t", {0.0}),
        ("insert", "INSERT INTO t VALUES (1, 'x')", {0.0}),
        ("update", "UPDATE t SET a = 0", {0.0}),
        ("delete", "DELETE FROM t", {0.0}),
        ("alter", "ALTER TABLE t ADD COLUMN b INTEGER", {0.0}),
        ("checkpoint", "CHECKPOINT", {0.0}),
        ("two statements", "SELECT 1; DROP TABLE t", {0.0}),
        ("line comment hides", "SELECT 1 -- harmless\n; DELETE FROM t", {0.0}),
        ("block comment hides", "SELECT 1 /* ; */ ; DELETE FROM t", {0.0}),
        ("trailing statement", "SELECT a FROM t;\nCOPY t TO '/tmp/x.csv'", {0.0}),
        (
            "infinite recursive cte",
            ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
            "SELECT COUNT(*) FROM r"),
            {0.0},
        ),
        (
            "exploding recursive string",
            (
                "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) "
                "SELECT length(s) FROM r"
            ),
            {0.0},
        ),
        ("cartesian explosion", f"SELECT COUNT(*) FROM {many}", {0.0}),
        ("cartesian string_agg", f"SELECT string_agg(t0.s, '') FROM {many}", {0.0}),
        ("huge repeat", "SELECT repeat('x', 1000000000)", {0.0}),
        ("huge repeat float", "SELECT repeat('x', 1e9)", {0.0}),
        ("repeat computed size", "SELECT repeat('x', (SELECT 1000000000))", {0.0}),
        ("huge lpad", "SELECT lpad('x', 1000000000, 'y')", {0.0}),
        ("huge list range", "SELECT range(300000000)", {0.0}),
        ("huge generate_series", "SELECT * FROM generate_series(1, 100000000000)", {0.0}),
        ("unknown table", "SELECT * FROM duckdb_settings()", {0.0}),
        ("information schema", "SELECT * FROM information_schema.tables", {0.0}),
        ("empty", "", {0.0}),
        ("whitespace", "   \n\t ", {0.0}),
        ("non-utf8 bytes", b"SELECT \xff\xfe FROM t", {0.0}),
        ("lone surrogate", "SELECT '\udcff' FROM t", {0.0}),
        ("nul byte", "SELECT 1\x00; DROP TABLE t", {0.0}),
        ("garbage", "\x1b[31m)(*&^%$#@!", {0.0}),
        ("legal union", "SELECT a FROM t UNION ALL SELECT a FROM t", {0.1}),
        ("legal big result", "SELECT t1.a FROM t t1, t t2", {0.1}),
    ]


def test_hostile_suite(env):
    db, canary = env
    cases = hostile_cases(canary)
    assert len(cases) >= 25
    task = Task(
        "h/0", "shop", db, "How many rows have a below 10?", "SELECT COUNT(*) FROM t WHERE a < 10"
    )
    # The memory bombs (exploding recursive string, huge repeat) run until DuckDB's memory limit
    # stops them, and DuckDB sees an interrupt only between operations, not inside one 256 MiB
    # string concat: their time is memory traffic up to the limit. At the default 512MB that is
    # 0.5-1.2 s here, and 2.4 s once on a slow day (CI failed on it); 256MB halves the traffic, so
    # the bound below checks that the sandbox stops them, not the machine's memory bandwidth.
    config = RewardConfig(
        threads=1,
        executor=ExecutorConfig(timeout_s=TIMEOUT_S, row_cap=5000, memory_limit="256MB"),
    )
    watch = Inotify(canary)
    try:
        with RewardFn(config) as fn:
            fn.score_one("SELECT 1", task)  # open the connection before hashing
            before = _sha(db)
            for name, sql, allowed in cases:
                completion = sql if isinstance(sql, bytes) else f"```sql\n{sql}\n```"
                start = time.perf_counter()
                detail = fn.score_one(completion, task)
                elapsed = time.perf_counter() - start
                assert detail.reward in allowed, (name, detail)
                assert elapsed < TIMEOUT_S + 1.0, (name, elapsed)
                assert _sha(db) == before, name
            # The database still answers correctly afterwards.
            assert fn.score_one(task.gold_sql, task).reason == "match"
        assert _sha(db) == before
        assert watch.events() == []
        assert sorted(os.listdir(canary)) == ["secret.csv"]
        assert os.listdir(os.path.dirname(db)) == ["shop.duckdb"]
    finally:
        watch.close()


def test_connection_layer_alone_refuses_files(env):
    """Defense in depth: even SQL that bypasses the guard cannot reach files or settings."""
    db, canary = env
    with Executor(ExecutorConfig(timeout_s=TIMEOUT_S)) as ex:
        cur = ex._database(db).cursor()
        for sql in (
            f"SELECT * FROM read_csv('{canary}/secret.csv')",
            f"COPY t TO '{canary}/out.csv'",
            "SET enable_external_access = true",
            "CREATE TABLE z (a INTEGER)",
            "INSTALL httpfs",
        ):
            with pytest.raises(duckdb.Error):
                cur.execute(sql)
        assert cur.execute("SELECT current_setting('threads')").fetchone()[0] == 1


def test_timeout_does_not_leak_into_next_query(env):
    db, _ = env
    with Executor(ExecutorConfig(timeout_s=0.3)) as ex:
        slow = (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT COUNT(*) FROM r"
        )
        assert ex.execute(slow, db).status == "timeout"
        for _ in range(3):
            result = ex.execute("SELECT COUNT(*) FROM t", db)
            assert result.ok and result.rows == ((1000,),)
            time.sleep(0.35)  # past the old timer's deadline


def test_row_cap_truncates(env):
    db, _ = env
    with Executor(ExecutorConfig(row_cap=10)) as ex:
        result = ex.execute("SELECT a FROM t", db)
        assert result.ok and result.truncated and len(result.rows) == 10
