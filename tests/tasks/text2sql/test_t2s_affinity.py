"""SQLite's type affinity on DuckDB copies: each case is a gold query whose SQLite answer differs
from what DuckDB computes on the same data without the affinity rewrite (a binder error or a
different result), with the SQLite answer written out so the case documents the rule."""

import sqlite3

import pytest

from zorro_jax.tasks.text2sql import spider
from zorro_jax.tasks.text2sql.executor import Executor
from zorro_jax.tasks.text2sql.fixtures import write_affinity_fixture
from zorro_jax.tasks.text2sql.sqlite_copy import cached_copy, read_column_types, sqlite_schema
from zorro_jax.tasks.text2sql.transpile import transpile_sqlite

# (failure class, database, SQLite gold, the rows SQLite returns)
CASES = [
    # TEXT vs a number literal: the literal becomes text, '88' > '150'.
    ("text_vs_literal", "car_shop", "SELECT count(*) FROM cars_data WHERE horsepower > 150",
     [(8,)]),
    ("text_vs_literal", "car_shop", "SELECT count(*) FROM cars_data WHERE mpg > 20", [(7,)]),
    ("text_vs_literal", "car_shop", "SELECT maker FROM car_makers WHERE country > 2 ORDER BY 1",
     [("fiat",), ("peugeot",), ("toyota",)]),
    ("text_vs_literal", "car_shop",
     "SELECT count(*) FROM cars_data WHERE horsepower BETWEEN 50 AND 100", [(0,)]),
    ("text_vs_literal", "car_shop", "SELECT id FROM cars_data WHERE mpg = 18.0", []),
    ("text_vs_literal", "car_shop",
     "SELECT count(*) FROM cars_data WHERE horsepower IN (150, 88)", [(3,)]),
    # Arithmetic and SUM/AVG read text as numbers ('null' as 0).
    ("aggregate_over_text", "car_shop", "SELECT avg(mpg) FROM cars_data WHERE cylinders = 4",
     [(pytest.approx(29.45),)]),
    ("aggregate_over_text", "car_shop", "SELECT avg(horsepower) FROM cars_data",
     [(pytest.approx(110.75),)]),
    ("aggregate_over_text", "hr", "SELECT sum(salary) FROM employee", [(383500.0,)]),
    ("aggregate_over_text", "car_shop", "SELECT horsepower * 2 FROM cars_data WHERE id = 5",
     [(0,)]),
    # MIN/MAX and ORDER BY sort a TEXT column as text.
    ("text_order", "car_shop", "SELECT max(mpg), min(mpg) FROM cars_data", [("9", "13")]),
    ("text_order", "car_shop", "SELECT max(country) FROM car_makers", [("5",)]),
    ("text_order", "car_shop", "SELECT id FROM cars_data ORDER BY mpg DESC LIMIT 3",
     [(5,), (11,), (3,)]),
    ("text_order", "concert_singer",
     "SELECT concert_id, stadium_id FROM concert ORDER BY 2 DESC, 1",
     [(5, "9"), (6, "7"), (2, "2"), (3, "2"), (7, "2"), (4, "10"), (1, "1")]),
    # A TEXT key against an INTEGER key compares numbers, non-numeric text matching nothing.
    ("mixed_keys", "car_shop",
     "SELECT countryname FROM countries WHERE countryid NOT IN (SELECT country FROM car_makers)",
     [("sweden",)]),
    ("mixed_keys", "concert_singer",
     ("SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM singer_in_concert) "
     "ORDER BY name"), [("Ana Lua",), ("Joe Sharp",)]),
    ("mixed_keys", "hr",
     ("SELECT T1.name, T2.dname FROM employee AS T1 JOIN dept AS T2 ON T1.dept_id = T2.dept_id "
     "WHERE T2.dept_id > 1 ORDER BY 1"), [("Ben", "Sales"), ("Cleo", "Sales"), ("Dev", "Support"),
                                         ("Finn", "Legal")]),
    # A numeric column holding text: text is above every number.
    ("text_in_numeric_column", "hr",
     "SELECT count(*) FROM employee WHERE salary > 100000", [(3,)]),
    ("text_in_numeric_column", "hr", "SELECT max(salary), min(salary) FROM employee",
     [("n/a", 7500)]),
    ("text_in_numeric_column", "hr",
     "SELECT name FROM employee ORDER BY salary DESC LIMIT 3",
     [("Eve",), ("Cleo",), ("Hana",)]),
    ("text_in_numeric_column", "concert_singer",
     "SELECT name FROM singer WHERE is_male = 'F' ORDER BY 1",
     [("Ana Lua",), ("Joe Sharp",), ("Rose White",)]),
    ("text_in_numeric_column", "hr",
     "SELECT count(*) FROM employee WHERE salary IN (48000, '', 'n/a')", [(3,)]),
    # Text beside a number with no affinity on either side: text is greater, nothing converts.
    ("class_order", "car_shop",
     "SELECT cylinders FROM cars_data GROUP BY cylinders HAVING max(mpg) > 100 ORDER BY 1",
     [(4,), (6,), (8,)]),
    # String functions and LIKE over numbers stored as text.
    ("string_functions", "car_shop",
     "SELECT mpg FROM cars_data WHERE mpg LIKE '%.5' ORDER BY 1", [("16.5",), ("31.5",)]),
    ("string_functions", "car_shop", "SELECT length(mpg) FROM cars_data WHERE id = 1", [(2,)]),
    # CAST to INTEGER truncates (DuckDB rounds).
    ("cast_truncates", "hr", "SELECT CAST(rating AS INT) FROM employee WHERE id IN (1, 4, 8)",
     [(4,), (2,), (4,)]),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_affinity_fixture(str(tmp_path_factory.mktemp("affinity")))


def _run_both(root, db_id, sql):
    sqlite_path = f"{root}/database/{db_id}/{db_id}.sqlite"
    db_path = cached_copy(sqlite_path, db_id)
    duck_sql = transpile_sqlite(sql, sqlite_schema(sqlite_path), columns=read_column_types(db_path))
    with Executor() as ex:
        duck = ex.execute(duck_sql, db_path)
    assert duck.ok, f"{duck_sql}: {duck.message}"
    conn = sqlite3.connect(sqlite_path)
    try:
        lite = conn.execute(sql).fetchall()
    finally:
        conn.close()
    return duck.rows, lite, duck_sql


@pytest.mark.parametrize(("kind", "db_id", "sql", "expected"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_duckdb_returns_what_sqlite_returns(root, kind, db_id, sql, expected):
    duck, lite, duck_sql = _run_both(root, db_id, sql)
    assert lite == expected  # the SQLite rule the case is about
    ordered = "order by" in sql.lower()
    assert spider.rows_agree(duck, lite, order_matters=ordered), (duck_sql, duck, lite)


def test_every_gold_of_the_affinity_fixture_agrees(root):
    tasks, report = spider.load(root, "dev.json")
    assert len(tasks) >= 100
    assert report.disagreements == ()
    assert report.agreement >= 0.99


def test_equalities_on_canonical_numbers_stay_readable(root):
    """Equality of a TEXT column of numbers with a number needs no cast: canonical texts are
    equal exactly when their numbers are."""
    sqlite_path = f"{root}/database/concert_singer/concert_singer.sqlite"
    db_path = cached_copy(sqlite_path, "concert_singer")
    schema, columns = sqlite_schema(sqlite_path), read_column_types(db_path)
    assert "CAST" not in transpile_sqlite("SELECT * FROM concert WHERE year = 2014", schema,
                                          columns=columns)
    assert "CAST" not in transpile_sqlite(
        "SELECT * FROM concert WHERE stadium_id IN (SELECT stadium_id FROM stadium)", schema,
        columns=columns)
    assert "CAST(concert.year AS TEXT) > '2014'" in transpile_sqlite(
        "SELECT * FROM concert WHERE year > 2014", schema, columns=columns)


def test_without_column_types_the_copy_is_taken_as_declared(root):
    """A copy whose TEXT columns stayed VARCHAR still compares as SQLite does."""
    schema = sqlite_schema(f"{root}/database/car_shop/car_shop.sqlite")
    sql = transpile_sqlite("SELECT * FROM cars_data WHERE horsepower > 150", schema)
    assert "horsepower > '150'" in sql


_LITERALS = ["150", "'150'", "20", "'20'", "18.0", "'abc'", "''", "0", "'T'", "2014", "-1", "'9'"]
_OPS = ["=", "<>", "<", ">", "<=", ">="]


def _sweep(schema):
    """Every column against literals of each kind, every column pair of a table, every
    cross-table key pair (join and NOT IN), and each column sorted, aggregated and matched."""
    for t, cols in schema.items():
        for c in cols:
            for lit in _LITERALS:
                for op in _OPS:
                    yield f"SELECT count(*) FROM {t} WHERE {c} {op} {lit}"
            yield f"SELECT {c} FROM {t} ORDER BY {c}, rowid"
            yield f"SELECT min({c}), max({c}), avg({c}), sum({c}) FROM {t}"
            yield f"SELECT count(*) FROM {t} WHERE {c} IN (1, '2', 'abc', 150)"
            yield f"SELECT {c} + 1 FROM {t}"
            yield f"SELECT count(*) FROM {t} WHERE {c} LIKE '1%'"
            for other in cols:
                for op in _OPS:
                    yield f"SELECT count(*) FROM {t} WHERE {c} {op} {other}"
    for t1 in schema:
        for t2 in schema:
            if t1 == t2:
                continue
            for a in schema[t1]:
                for b in schema[t2]:
                    yield f"SELECT count(*) FROM {t1} AS x JOIN {t2} AS y ON x.{a} = y.{b}"
                    yield (f"SELECT count(*) FROM {t1} WHERE {a} NOT IN "
                           f"(SELECT {b} FROM {t2} WHERE {b} IS NOT NULL)")


def _sweep_disagreements(root, every):
    failures, checked = [], 0
    with Executor() as ex:
        for db_id in ("car_shop", "concert_singer", "hr"):
            sqlite_path = f"{root}/database/{db_id}/{db_id}.sqlite"
            db_path = cached_copy(sqlite_path, db_id)
            schema, columns = sqlite_schema(sqlite_path), read_column_types(db_path)
            conn = sqlite3.connect(sqlite_path)
            for i, sql in enumerate(_sweep(schema)):
                if i % every:
                    continue
                try:
                    lite = conn.execute(sql).fetchall()
                except sqlite3.Error:
                    continue  # e.g. a sum SQLite itself rejects; nothing to reproduce
                checked += 1
                duck = ex.execute(transpile_sqlite(sql, schema, columns=columns), db_path)
                if not duck.ok or not spider.rows_agree(duck.rows, lite,
                                                        order_matters="ORDER BY" in sql):
                    failures.append((sql, duck.message or duck.rows, lite))
            conn.close()
    return checked, failures


def test_sweep_sample_agrees(root):
    checked, failures = _sweep_disagreements(root, every=11)
    assert checked > 500 and failures == []


@pytest.mark.slow
def test_sweep_agrees(root):
    checked, failures = _sweep_disagreements(root, every=1)
    assert checked > 6000 and failures == []
