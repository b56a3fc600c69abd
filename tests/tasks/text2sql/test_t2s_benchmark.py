"""Built-in benchmark: gold queries run, splits are disjoint, the held-out schema is test-only,
the cache is written atomically and honours ZORRO_CACHE_DIR."""

import collections
import os

import pytest

from zorro_jax.tasks.text2sql import benchmark, schemas, templates
from zorro_jax.tasks.text2sql.executor import Executor
from zorro_jax.tasks.text2sql.prompts import build_prompt, format_answer
from zorro_jax.tasks.text2sql.reward import RewardConfig, RewardFn


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cache"))
    return root, {s: benchmark.load_builtin(s, root) for s in benchmark.SPLITS}


def test_schemas_and_templates_meet_the_spec():
    assert len(schemas.SCHEMAS) >= 5
    for spec in schemas.SCHEMAS:
        assert 3 <= len(spec.ddl) <= 8
        assert any("REFERENCES" in d for d in spec.ddl)
    assert len(templates.TEMPLATES) >= 30
    assert {t.difficulty for t in templates.TEMPLATES} == {"easy", "medium", "hard"}


def test_split_sizes_and_difficulties(built):
    _, splits = built
    assert len(splits["train"]) >= 300
    assert 80 <= len(splits["dev"]) <= 130
    assert 80 <= len(splits["test"]) <= 130
    assert len(splits["rl"]) >= 300
    for tasks in splits.values():
        assert {t.difficulty for t in tasks} == {"easy", "medium", "hard"}


def test_splits_disjoint_and_held_out_schema_only_in_test(built):
    _, splits = built
    ids = [t.task_id for tasks in splits.values() for t in tasks]
    assert len(ids) == len(set(ids))
    gold = {s: {(t.db_id, t.gold_sql) for t in tasks} for s, tasks in splits.items()}
    assert not gold["train"] & gold["dev"]
    assert not gold["train"] & gold["test"]
    assert not gold["dev"] & gold["test"]
    assert not gold["rl"] & (gold["train"] | gold["dev"] | gold["test"])
    dbs = {s: {t.db_id for t in tasks} for s, tasks in splits.items()}
    assert schemas.HELD_OUT in dbs["test"]
    assert schemas.HELD_OUT not in dbs["train"] | dbs["dev"] | dbs["rl"]
    assert dbs["rl"] == dbs["train"]
    assert len(dbs["train"]) >= 5


def test_every_gold_query_executes_and_scores_one(built):
    _, splits = built
    tasks = [t for s in benchmark.SPLITS for t in splits[s]]
    with Executor() as ex:
        for t in tasks:
            result = ex.execute(t.gold_sql, t.db_path)
            assert result.ok and result.rows and not result.truncated, t
    with RewardFn(RewardConfig(threads=2)) as fn:
        rewards, details = fn.score([format_answer(t.gold_sql) for t in tasks], tasks)
    assert rewards.min() == 1.0, [d for d in details if d.reward < 1.0][:3]


def test_questions_vary_and_gold_is_short(built):
    _, splits = built
    train = splits["train"]
    per_template = collections.Counter(t.template_id for t in train)
    assert len(per_template) >= 30
    assert len({t.question for t in train}) == len(train)
    assert max(len(t.gold_sql) for t in train) < 260


def test_compact_prompts_fit_a_small_budget(built):
    _, splits = built
    for t in splits["dev"][:20]:
        text = build_prompt(t, style="compact").text
        assert t.question in text
        assert len(text.split()) < 150


def test_rebuild_is_deterministic_and_env_var_is_honoured(built, tmp_path, monkeypatch):
    _root, splits = built
    monkeypatch.setenv("ZORRO_CACHE_DIR", str(tmp_path))
    folder = benchmark.ensure_built()
    assert folder.startswith(str(tmp_path))
    again = benchmark.load_builtin("dev")
    assert [(t.task_id, t.question, t.gold_sql) for t in again] == [
        (t.task_id, t.question, t.gold_sql) for t in splits["dev"]
    ]
    # No temporary build folders are left behind.
    parent = os.path.dirname(folder)
    assert os.listdir(parent) == [benchmark.VERSION]


def test_failed_build_leaves_no_cache(tmp_path, monkeypatch):
    def boom(folder):
        with open(os.path.join(folder, "train.jsonl"), "w") as f:
            f.write("partial")
        raise RuntimeError("crash during build")

    monkeypatch.setattr(benchmark, "build", boom)
    with pytest.raises(RuntimeError):
        benchmark.ensure_built(tmp_path)
    assert os.listdir(os.path.join(tmp_path, "text2sql")) == []


def test_unknown_split():
    with pytest.raises(ValueError):
        benchmark.load_builtin("validation")


def test_rl_pool_does_not_change_the_other_splits(built, tmp_path, monkeypatch):
    """The rl split draws from its own random stream: without it, train/dev/test are identical."""
    _root, splits = built
    monkeypatch.setattr(benchmark, "RL_INSTANCES", 0)
    root = str(tmp_path / "no_rl")
    assert benchmark.load_builtin("rl", root) == []
    for name in ("train", "dev", "test"):
        again = benchmark.load_builtin(name, root)
        assert [(t.task_id, t.question, t.gold_sql) for t in again] == [
            (t.task_id, t.question, t.gold_sql) for t in splits[name]
        ]
