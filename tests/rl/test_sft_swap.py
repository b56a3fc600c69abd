"""SFT with literal swapping: swapped examples are consistent translations, chosen by (seed, step)
only, and a config asking for swapping without a swap function is refused."""

import random

import pytest

from zorro_jax.rl.grpo import PromptItem
from zorro_jax.rl.pipeline import encode_example, prompt_fit, sft_augmenter
from zorro_jax.rl.sft import SFTConfig, make_sft_step
from zorro_jax.tasks.arithmetic.task import ArithmeticConfig, ArithmeticTask
from zorro_jax.tasks.text2sql.augment import shared_values
from zorro_jax.tasks.text2sql.task import Text2SQLConfig, Text2SQLTask
from zorro_jax.tokenizer import PromptEncoder, train_bpe_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    task = Text2SQLTask(Text2SQLConfig())
    examples = task.examples("train")[:80]
    tok = train_bpe_tokenizer([e.shared + e.question for e in examples] + [e.answer for e in examples], 400,
                              tmp_path_factory.mktemp("tok"))
    enc = PromptEncoder(tok)
    items = [PromptItem(e, *encode_example(enc, e)) for e in examples]
    return task, items, enc


def test_swapped_example_is_a_consistent_translation(setup):
    task, items, enc = setup
    tok = enc.tok
    tasks = [it.task.payload for it in items]
    swap = sft_augmenter(task, items, enc, prompt_fit(enc, 10_000))
    i = next(k for k, t in enumerate(tasks) if shared_values(t.question, t.gold_sql)[0])
    strings, _ = shared_values(tasks[i].question, tasks[i].gold_sql)
    prompt_ids, answer_ids = swap(i, random.Random(0))
    prompt, answer = tok.decode(prompt_ids[1:]), tok.decode(answer_ids[:-1])
    assert answer_ids[-1] == tok.eos_token_id
    new_strings, _ = shared_values(prompt.split("Q: ")[-1], answer)
    # The value changed, and the new one is in both the question and the SQL.
    assert new_strings and new_strings[0] != strings[0]
    assert strings[0] not in answer and f"'{new_strings[0]}'" in answer
    # Drawn from the pool: another value of the training tasks.
    pool = {v for t in tasks for v in shared_values(t.question, t.gold_sql)[0]}
    assert new_strings[0] in pool


def test_swapping_needs_a_task_that_augments(setup):
    _, items, enc = setup
    with pytest.raises(ValueError, match="no SFT augmentation"):
        sft_augmenter(ArithmeticTask(ArithmeticConfig(train_size=10, eval_size=2)), items, enc,
                      prompt_fit(enc, 100))


def test_sft_step_requires_a_swap_function():
    with pytest.raises(ValueError, match="swap function"):
        make_sft_step(None, None, [([1, 2], [3])], SFTConfig(literal_swap=0.5))
    with pytest.raises(ValueError, match="probability"):
        SFTConfig(literal_swap=1.5)
