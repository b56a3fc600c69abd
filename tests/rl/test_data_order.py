"""Data order: deterministic and resumable streams, k questions of one database at a time, and
prompts in two parts (shared schema, own question) tokenised apart."""

import collections

import pytest

from zorro_jax.rl.grpo import data_order, grouped_order
from zorro_jax.rl.pipeline import DataConfig, RunConfig, encode_example, prompt_fit
from zorro_jax.rl.sft import SFTConfig
from zorro_jax.tasks.text2sql.benchmark import load_builtin
from zorro_jax.tasks.text2sql.task import Text2SQLConfig, Text2SQLTask
from zorro_jax.tokenizer import PromptEncoder

KEYS = ["a"] * 7 + ["b"] * 3 + ["c"] * 12 + ["a"] * 2


def test_grouped_order_draws_k_items_of_one_key_at_a_time():
    idx = grouped_order(KEYS, 4, seed=3, position=0, count=4 * 9)
    runs = [idx[i:i + 4] for i in range(0, len(idx), 4)]
    for run in runs:
        assert len({KEYS[i] for i in run}) == 1
    # Each epoch of the key stream visits every key once.
    for epoch in range(3):
        assert sorted(KEYS[r[0]] for r in runs[3 * epoch:3 * epoch + 3]) == ["a", "b", "c"]
    # A key's items come from its own permutations: distinct within a visit when it has enough
    # items, repeating only when it has fewer than k ("b" has 3).
    for run in runs:
        assert len(set(run)) == (3 if KEYS[run[0]] == "b" else 4)
    counts = collections.Counter(i for r in runs if KEYS[r[0]] == "c" for i in r)
    assert max(counts.values()) == 1  # 3 visits x 4 = all 12 items of "c", once each


def test_grouped_order_is_resumable_and_k1_is_data_order():
    whole = grouped_order(KEYS, 2, seed=1, position=0, count=20)
    assert whole == grouped_order(KEYS, 2, 1, 0, 8) + grouped_order(KEYS, 2, 1, 8, 12)
    assert grouped_order(KEYS, 1, 5, 3, 10) == data_order(len(KEYS), 5, 3, 10)
    with pytest.raises(ValueError, match="multiples"):
        grouped_order(KEYS, 2, 1, 1, 4)
    with pytest.raises(ValueError, match=">= 1"):
        grouped_order(KEYS, 0, 1, 0, 4)


class WordTokenizer:
    """Whitespace-preserving toy tokenizer: every character is a token."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_prompt_parts_share_the_schema_and_tokenise_apart():
    tasks = [t for t in load_builtin("train") if t.db_id == "retail"][:3]
    for style in ("compact", "ddl"):
        exs = [Text2SQLTask(Text2SQLConfig(prompt_style=style)).example(t) for t in tasks]
        assert len({e.shared for e in exs}) == 1  # one schema text for the database
        assert all(e.shared.endswith("\n") and t.question in e.question and e.group_key == "retail"
                   for e, t in zip(exs, tasks))
    tok = WordTokenizer()
    ids, n = PromptEncoder(tok).encode("abc\n", "Q: x")
    assert ids == [1, *map(ord, "abc\nQ: x")] and n == 5
    ids, n = PromptEncoder(tok).encode("abc\n", "Q: x", system="S")
    assert ids == [1, *map(ord, "S\n\nabc\nQ: x")] and n == 8


def test_prompts_over_budget_lose_schema_not_question():
    """A budget trims the schema by the builder (never the question or the instructions from
    the left of the prompt)."""
    tasks = [t for t in load_builtin("train") if t.db_id == "retail"][:2]
    tok = WordTokenizer()
    task, enc = Text2SQLTask(Text2SQLConfig(prompt_style="ddl")), PromptEncoder(tok)
    full = task.example(tasks[0], prompt_fit(enc, 100_000))
    n_full = len(encode_example(enc, full)[0])
    budget = n_full - 200
    trimmed = task.example(tasks[0], prompt_fit(enc, budget))
    ids, _ = encode_example(enc, trimmed)
    assert len(ids) <= budget
    assert trimmed.question == full.question  # the question part is untouched
    assert trimmed.system == full.system != ""  # the instructions stay
    assert trimmed.shared.splitlines()[:4] == full.shared.splitlines()[:4]  # and the schema's start
    assert "example values omitted" in trimmed.shared or "not shown" in trimmed.shared


def test_questions_per_database_must_divide_the_batches():
    with pytest.raises(ValueError, match="questions_per_database"):
        DataConfig(questions_per_database=0)
    with pytest.raises(ValueError, match="multiple of data.questions_per_database"):
        RunConfig(data=DataConfig(questions_per_database=3), sft=SFTConfig(batch_size=16))
