"""SQLite -> DuckDB copies: column types from the stored values, the bulk path, the cache."""

import os
import shutil
import sqlite3

import duckdb

from tests.tasks.text2sql.copy_timing import write_wide_sqlite
from zorro_jax.tasks.text2sql import sqlite_copy
from zorro_jax.tasks.text2sql.fixtures import write_affinity_fixture
from zorro_jax.tasks.text2sql.sqlite_copy import (
    CACHE_ENV,
    cached_copy,
    copy_sqlite_to_duckdb,
    declared_affinity,
    read_column_types,
)
from zorro_jax.tasks.text2sql.sqlite_values import canonical_number


def _sqlite(path, script):
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.commit()
    conn.close()
    return path


def _duck_types(db_path, table):
    conn = duckdb.connect(db_path, read_only=True)
    try:
        return dict(conn.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ?", [table]
        ).fetchall())
    finally:
        conn.close()


def test_declared_affinity_follows_sqlite_rules():
    got = [declared_affinity(t) for t in
           ("INT", "bigint", "VARCHAR(255)", "CLOB", "TEXT", "", "BLOB", "REAL", "DOUBLE",
            "FLOAT", "NUMERIC", "DATE", "bool", "POINT INT")]
    assert got == ["INTEGER", "INTEGER", "TEXT", "TEXT", "TEXT", "BLOB", "BLOB", "REAL", "REAL",
                   "REAL", "NUMERIC", "NUMERIC", "NUMERIC", "INTEGER"]


def test_columns_typed_from_stored_values(tmp_path):
    root = write_affinity_fixture(str(tmp_path / "data"))
    car = copy_sqlite_to_duckdb(f"{root}/database/car_shop/car_shop.sqlite",
                                str(tmp_path / "car.duckdb"))
    hr = copy_sqlite_to_duckdb(f"{root}/database/hr/hr.sqlite", str(tmp_path / "hr.duckdb"))
    assert car["cars_data"]["mpg"].duckdb == "DOUBLE"  # '18', '31.5', ...
    assert car["cars_data"]["horsepower"].duckdb == "VARCHAR"  # one 'null' among numbers
    assert car["car_makers"]["country"].duckdb == "BIGINT"  # TEXT key holding integers
    assert car["cars_data"]["weight"] == sqlite_copy.ColumnType(
        "INTEGER", "INTEGER", "number", "BIGINT")
    assert hr["employee"]["salary"].stored == "mixed" and hr["employee"]["salary"].duckdb == "VARCHAR"
    assert hr["dept"]["dept_id"].duckdb == "VARCHAR"  # 'HQ'
    assert _duck_types(str(tmp_path / "car.duckdb"), "cars_data")["mpg"] == "DOUBLE"
    assert read_column_types(str(tmp_path / "hr.duckdb")) == hr


def test_retyping_agrees_with_canonical_number(tmp_path):
    """A TEXT column becomes numeric exactly when every value is the canonical text of a number,
    which is also what the agreement check reads as a number."""
    texts = ["150", "-3", "007", "1.50", "31.5", "18.0", " 12", "1e+20", "1e3", "0.1", "-0",
             "12345678901234567890", "inf", "NaN", "", "0.0001", "1e-05", "2.5e-07"]
    names = [f"c{i}" for i in range(len(texts))]
    cols = ", ".join(f"{n} TEXT" for n in names)
    marks = ", ".join("?" * len(texts))
    path = str(tmp_path / "t.sqlite")
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE t ({cols})")
    conn.execute(f"INSERT INTO t VALUES ({marks})", texts)
    conn.commit()
    conn.close()
    types = copy_sqlite_to_duckdb(path, str(tmp_path / "t.duckdb"))["t"]
    got = {s: types[n].duckdb for s, n in zip(texts, names)}
    want = {s: "VARCHAR" if canonical_number(s) is None
            else "BIGINT" if isinstance(canonical_number(s), int) else "DOUBLE" for s in texts}
    assert got == want
    assert got["150"] == "BIGINT" and got["31.5"] == "DOUBLE" and got["007"] == "VARCHAR"


def test_empty_columns_follow_the_declared_type(tmp_path):
    path = _sqlite(str(tmp_path / "e.sqlite"),
                   "CREATE TABLE e (a INTEGER, b REAL, c TEXT, d NUMERIC, e);"
                   "CREATE TABLE n (a INTEGER, c TEXT); INSERT INTO n VALUES (NULL, NULL);")
    types = copy_sqlite_to_duckdb(path, str(tmp_path / "e.duckdb"))
    assert [t.duckdb for t in types["e"].values()] == ["BIGINT", "DOUBLE", "VARCHAR", "DOUBLE",
                                                       "VARCHAR"]
    assert [t.duckdb for t in types["n"].values()] == ["BIGINT", "VARCHAR"]


def test_bulk_copy_in_batches_keeps_every_value(tmp_path):
    src = write_wide_sqlite(str(tmp_path / "cars.sqlite"), 2500)
    _sqlite(src, "CREATE TABLE b (k INTEGER, v BLOB, m);"
                 "INSERT INTO b VALUES (1, x'00ff', 1), (2, NULL, 'two'), (3, x'', 3.5);")
    dst = str(tmp_path / "cars.duckdb")
    types = copy_sqlite_to_duckdb(src, dst, batch_rows=1000)
    assert {c: t.duckdb for c, t in types["cars"].items()} == {
        "id": "BIGINT", "name": "VARCHAR", "horsepower": "BIGINT", "mpg": "DOUBLE",
        "price": "DOUBLE", "qty": "BIGINT"}
    lite = sqlite3.connect(src)
    want = lite.execute("SELECT id, name, CAST(horsepower AS INTEGER), CAST(mpg AS REAL), price, "
                        "qty FROM cars ORDER BY id").fetchall()
    lite.close()
    conn = duckdb.connect(dst, read_only=True)
    got = conn.execute("SELECT * FROM cars ORDER BY id").fetchall()
    got_b = conn.execute("SELECT * FROM b ORDER BY k").fetchall()
    conn.close()
    assert got == want
    assert sum(r[5] is None for r in got) == len(range(0, 2500, 17))
    assert got_b == [(1, b"\x00\xff", "1"), (2, None, "two"), (3, b"", "3.5")]


def test_cache_is_keyed_by_content_and_stays_out_of_the_data(tmp_path, monkeypatch):
    root = write_affinity_fixture(str(tmp_path / "data"))
    src = f"{root}/database/hr/hr.sqlite"
    twin = str(tmp_path / "elsewhere" / "hr.sqlite")
    os.makedirs(os.path.dirname(twin))
    shutil.copy(src, twin)
    before = sorted(os.listdir(os.path.dirname(src)))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env_cache"))
    first = cached_copy(src, "hr")
    assert os.path.dirname(first) == str(tmp_path / "env_cache")
    assert cached_copy(twin, "hr") == first  # same bytes, same copy
    assert sorted(os.listdir(os.path.dirname(src))) == before
    explicit = cached_copy(src, "hr", str(tmp_path / "arg_cache"))
    assert os.path.dirname(explicit) == str(tmp_path / "arg_cache")
    _sqlite(twin, "UPDATE employee SET salary = 1 WHERE id = 1;")
    changed = cached_copy(twin, "hr")
    assert changed != first and os.path.isfile(first)
    conn = duckdb.connect(changed, read_only=True)
    assert conn.execute("SELECT salary FROM employee WHERE id = 1").fetchone() == ("1",)
    conn.close()


def test_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    path = _sqlite(str(tmp_path / "d.sqlite"), "CREATE TABLE t (a); INSERT INTO t VALUES (1);")
    cache = str(tmp_path / "cache")
    first = sqlite_copy.file_digest(path, cache)
    calls = []
    real_sha = sqlite_copy.hashlib.sha256
    monkeypatch.setattr(sqlite_copy.hashlib, "sha256", lambda *a: calls.append(1) or real_sha(*a))
    assert sqlite_copy.file_digest(path, cache) == first and calls == []
    _sqlite(path, "INSERT INTO t VALUES (2);")
    assert sqlite_copy.file_digest(path, cache) != first and calls == [1]

