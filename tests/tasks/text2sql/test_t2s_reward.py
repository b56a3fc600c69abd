"""Reward: SQL extraction, the 1.0 / 0.1 / 0.0 scheme, batch scoring and thread safety."""

import duckdb
import numpy as np
import pytest

from zorro_jax.tasks.text2sql.executor import ExecutorConfig
from zorro_jax.tasks.text2sql.reward import RewardConfig, RewardFn, Task, extract_sql, score


def test_extract_last_sql_block():
    text = "Thinking...\n```sql\nSELECT 1\n```\nbetter:\n```SQL\nSELECT 2;\n```\n"
    assert extract_sql(text) == "SELECT 2"


def test_extract_plain_text_and_unclosed_block():
    assert extract_sql("  SELECT a FROM t;  ") == "SELECT a FROM t"
    assert extract_sql("```sql\nSELECT a FROM t") == "SELECT a FROM t"
    assert extract_sql("```python\nprint(1)\n```") == "```python\nprint(1)\n```"


def test_extract_empty_and_bytes():
    assert extract_sql("") == ""
    assert extract_sql("```sql\n\n```") == ""
    assert extract_sql(b"SELECT 1") == "SELECT 1"
    assert extract_sql(b"\xff\xfe") == ""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    db = str(tmp_path_factory.mktemp("reward") / "x.duckdb")
    conn = duckdb.connect(db)
    conn.execute("CREATE TABLE city (name VARCHAR, pop INTEGER)")
    conn.execute("INSERT INTO city VALUES ('Lisbon', 545), ('Porto', 232), ('Braga', 193)")
    conn.close()
    return [
        Task("r/0", "x", db, "Largest city?", "SELECT name FROM city ORDER BY pop DESC LIMIT 1"),
        Task("r/1", "x", db, "Cities by size?", "SELECT name FROM city ORDER BY pop DESC"),
        Task("r/2", "x", db, "Mean population?", "SELECT AVG(pop) FROM city"),
    ]


def test_reward_levels_and_reasons(tasks):
    t0, t1, t2 = tasks
    completions = [
        "```sql\nSELECT name FROM city ORDER BY pop DESC LIMIT 1\n```",
        "```sql\nSELECT name FROM city ORDER BY pop ASC\n```",  # gold has ORDER BY
        "```sql\nSELECT SUM(pop) / 3.0 FROM city\n```",  # float-equal result
        "SELECT nme FROM city",
        "SELECT FROM WHERE",
        "DROP TABLE city",
        "no sql here at all ```",
        "",
    ]
    batch = [t0, t1, t2, t0, t0, t0, t0, t0]
    with RewardFn(RewardConfig(threads=2)) as fn:
        rewards, details = fn.score(completions, batch)
    assert rewards.dtype == np.float32 and rewards.shape == (8,)
    np.testing.assert_array_equal(rewards, np.float32([1.0, 0.1, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    reasons = [d.reason for d in details]
    assert reasons[:4] == ["match", "mismatch", "match", "execution_error"]
    assert reasons[4] == "parse_error"
    assert reasons[5] == "disallowed_statement"
    assert reasons[7] == "empty"


def test_bird_rule_ignores_order(tasks):
    config = RewardConfig(threads=1, rule="bird")
    rewards, _ = score(["SELECT name FROM city ORDER BY pop ASC"], [tasks[1]], config)
    assert rewards[0] == 1.0


def test_gold_error_is_reported(tasks):
    bad = Task("r/9", "x", tasks[0].db_path, "?", "SELECT nope FROM city")
    _, details = score(["SELECT 1"], [bad])
    assert details[0].reason == "gold_error" and details[0].reward == 0.0


def test_threaded_scoring_equals_serial(tasks):
    completions, batch = [], []
    for i in range(60):
        t = tasks[i % 3]
        completions.append(t.gold_sql if i % 2 else "SELECT name FROM city")
        batch.append(t)
    with RewardFn(RewardConfig(threads=1)) as serial, RewardFn(RewardConfig(threads=2)) as par:
        r1, _ = serial.score(completions, batch)
        r2, _ = par.score(completions, batch)
    np.testing.assert_array_equal(r1, r2)


def test_configs_validate():
    with pytest.raises(ValueError):
        RewardConfig(threads=0)
    with pytest.raises(ValueError):
        RewardConfig(rule="exact")
    with pytest.raises(ValueError):
        ExecutorConfig(timeout_s=0)
    with pytest.raises(ValueError):
        Task("a", "b", "c", "q", "  ")
    with pytest.raises(ValueError):
        Task("a", "b", "c", "q", "SELECT 1", difficulty="trivial")
