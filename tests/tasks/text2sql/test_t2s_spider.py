"""Spider/BIRD loaders on a self-written fixture, including fix-ups a naive transpile misses."""

import duckdb
import pytest

from zorro_jax.tasks.text2sql import spider
from zorro_jax.tasks.text2sql.executor import Executor
from zorro_jax.tasks.text2sql.fixtures import write_spider_fixture
from zorro_jax.tasks.text2sql.prompts import build_prompt


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return write_spider_fixture(str(tmp_path_factory.mktemp("spider")))


def test_spider_load_and_agreement(fixture_root):
    tasks, report = spider.load(fixture_root, "dev.json")
    assert len(tasks) == 7 and report.n_tasks == 7
    assert [t.difficulty for t in tasks][:3] == ["easy", "easy", "medium"]
    # typeof() names storage classes differently in the two engines: the report must say so.
    assert report.disagreements == (("dev/6", "results differ"),)
    assert report.agreement == pytest.approx(6 / 7)


def test_naive_transpile_differs_where_fixups_matter(fixture_root, tmp_path):
    _, naive = spider.load(fixture_root, "dev.json", out_dir=str(tmp_path), fixups=False)
    failed = {task_id for task_id, _ in naive.disagreements}
    # dev/1: "france" is a string and LIKE ignores case; dev/2: integer division;
    # dev/3: bare column beside MAX().
    assert {"dev/1", "dev/2", "dev/3"} <= failed


def test_fixups_individually(fixture_root):
    schema = spider.sqlite_schema(f"{fixture_root}/database/concerts/concerts.sqlite")
    like = spider.transpile_sqlite('SELECT name FROM singer WHERE country LIKE "fr%"', schema)
    assert "ILIKE 'fr%'" in like
    div = spider.transpile_sqlite("SELECT sum(age) / count(*) FROM singer", schema)
    assert "NULLIF" in div and "BIGINT" in div
    float_div = spider.transpile_sqlite("SELECT sum(age) / 2.0 FROM singer", schema)
    assert "BIGINT" not in float_div
    bare = spider.transpile_sqlite("SELECT name, min(age) FROM singer", schema)
    assert "ARG_MIN(" in bare
    grouped = spider.transpile_sqlite("SELECT country, name FROM singer GROUP BY country", schema)
    assert "ANY_VALUE(" in grouped and "ANY_VALUE(singer.country" not in grouped


def test_integer_division_result(fixture_root):
    tasks, _ = spider.load(fixture_root, "dev.json")
    with Executor() as ex:
        assert ex.execute(tasks[2].gold_sql, tasks[2].db_path).rows == ((37,),)
        assert ex.execute(tasks[3].gold_sql, tasks[3].db_path).rows == (("Ana Lua", 52),)


def test_bird_format(fixture_root):
    tasks, report = spider.load(fixture_root, "bird_dev.json")
    assert [t.difficulty for t in tasks] == ["easy", "medium"]
    assert tasks[0].evidence == "year is stored as text"
    assert report.agreement == 1.0
    assert "Hint: year is stored as text" in build_prompt(tasks[0]).text


def test_copy_types_and_keys(fixture_root):
    tasks, _ = spider.load(fixture_root, "dev.json", check=False)
    conn = duckdb.connect(tasks[0].db_path, read_only=True)
    types = dict(
        conn.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'singer'"
        ).fetchall()
    )
    conn.close()
    assert types == {
        "singer_id": "BIGINT",
        "name": "VARCHAR",
        "country": "VARCHAR",
        "age": "BIGINT",
    }
    text = build_prompt(tasks[0]).text
    assert "PRIMARY KEY (singer_id)" in text
    assert "FOREIGN KEY (singer_id) REFERENCES singer(singer_id)" in text
