"""Prompt builder: DDL and compact styles, the answer format, and the token budget."""

import duckdb
import pytest

from zorro_jax.tasks.text2sql.prompts import (
    build_prompt,
    describe_database,
    format_answer,
    relevance,
)
from zorro_jax.tasks.text2sql.reward import Task, extract_sql


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("prompts") / "zoo.duckdb")
    conn = duckdb.connect(db)
    conn.execute(
        "CREATE TABLE keepers (keeper_id INTEGER PRIMARY KEY, name VARCHAR, "
        "shift VARCHAR, salary INTEGER, notes VARCHAR)"
    )
    conn.execute(
        "CREATE TABLE animals (animal_id INTEGER PRIMARY KEY, name VARCHAR, species "
        "VARCHAR, weight DOUBLE, keeper_id INTEGER REFERENCES keepers(keeper_id))"
    )
    conn.execute(
        "CREATE TABLE tickets (ticket_id INTEGER PRIMARY KEY, price DOUBLE, "
        "sold_on DATE, gate VARCHAR)"
    )
    conn.execute("INSERT INTO keepers VALUES (1, 'Ana', 'day', 100, 'senior')")
    conn.execute(
        "INSERT INTO animals VALUES (1, 'Rex', 'lion', 190.5, 1), (2, 'Lu', 'panda', 90.0, 1)"
    )
    conn.execute("INSERT INTO tickets VALUES (1, 12.5, DATE '2024-01-02', 'north')")
    conn.close()
    return Task(
        "z/0",
        "zoo",
        db,
        "What is the weight of each animal species?",
        "SELECT species, AVG(weight) FROM animals GROUP BY species",
    )


def test_ddl_prompt_has_schema_keys_examples_and_question(task):
    p = build_prompt(task)
    assert "CREATE TABLE animals (" in p.text
    assert "FOREIGN KEY (keeper_id) REFERENCES keepers(keeper_id)" in p.text
    assert "'lion'" in p.text and task.question in p.text
    assert "```sql" in p.system and p.omitted == ()


def test_compact_prompt(task):
    text = build_prompt(task, style="compact").text
    assert "animals(animal_id, name, species, weight, keeper_id->keepers)" in text
    assert text.endswith("Q: " + task.question)


def test_answer_format_roundtrip():
    sql = "SELECT 1"
    assert format_answer(sql) == "```sql\nSELECT 1\n```"
    assert extract_sql("reasoning\n" + format_answer(sql)) == sql


def test_budget_drops_examples_then_columns_then_tables(task):
    def count(s):
        return len(s.split())

    full = build_prompt(task, count_tokens=count, budget=10_000)
    assert full.omitted == () and full.n_tokens == count(full.text)
    no_ex = build_prompt(task, count_tokens=count, budget=full.n_tokens - 1)
    assert no_ex.omitted[0] == "examples" and "'lion'" not in no_ex.text
    assert "example values omitted" in no_ex.text
    tight = build_prompt(task, count_tokens=count, budget=95)
    assert tight.n_tokens <= 95
    assert any(o.startswith(("columns:", "table:")) for o in tight.omitted)
    # The most relevant table keeps its columns as long as possible.
    assert "species" in tight.text and "weight" in tight.text
    tables = {t.name: t for t in describe_database(task.db_path)}
    assert relevance(tables["animals"], task.question) > relevance(tables["tickets"], task.question)


def test_budget_arguments_validated(task):
    with pytest.raises(ValueError):
        build_prompt(task, budget=100)
    with pytest.raises(ValueError):
        build_prompt(task, style="markdown")
