"""The arithmetic task: deterministic disjoint splits, solutions that are right, and an
exact-match reward that reads the last `####` number."""

import numpy as np
import pytest

from zorro_jax.tasks.arithmetic.task import (
    ArithmeticConfig,
    ArithmeticTask,
    final_number,
    make_problem,
    problems,
)

CFG = ArithmeticConfig(train_size=300, eval_size=60)


def test_splits_are_deterministic_disjoint_and_sized():
    split = {s: problems(CFG, s) for s in ("train", "dev", "test")}
    assert [len(split[s]) for s in split] == [300, 60, 60]
    keys = {s: {p.key for p in ps} for s, ps in split.items()}
    assert sum(map(len, keys.values())) == 420  # distinct within and across splits
    assert problems(CFG, "dev") == split["dev"]
    other = problems(ArithmeticConfig(train_size=300, eval_size=60, seed=1), "dev")
    assert [p.key for p in other] != [p.key for p in split["dev"]]
    # A larger train split extends the smaller one: the same stream, read further.
    assert problems(ArithmeticConfig(train_size=400, eval_size=60), "train")[:300] == split["train"]
    with pytest.raises(ValueError, match="splits are"):
        problems(CFG, "validation")


def test_solutions_compute_the_answer():
    p = make_problem("mul_add", "Ann", "pen", 3, 4, 5)
    assert p.solution == "3 * 4 = 12\n12 + 5 = 17\n#### 17" and p.answer == 17
    assert "Ann has 3 bags of 4 pens and 5 more pens" in p.question
    assert make_problem("sub", "Ben", "coin", 3, 5, 2) is None  # items cannot go negative
    assert make_problem("add_sub", "Ben", "coin", 3, 5, 2).answer == 6
    # c is not part of a one-step problem's identity
    assert make_problem("add", "Ann", "pen", 3, 4, 5).key == make_problem("add", "Ann", "pen", 3, 4, 9).key
    for p in problems(CFG, "dev"):
        assert final_number(p.solution) == p.answer == eval(p.solution.splitlines()[-2].split("=")[0])


def test_exact_match_reward():
    task = ArithmeticTask(ArithmeticConfig(train_size=5, eval_size=4, format_reward=0.25))
    exs = task.examples("dev")
    answers = [ex.payload.answer for ex in exs]
    completions = [exs[0].answer,                                   # the reference: right
                   f"#### {answers[1] + 1}",                        # a wrong number
                   f"#### {answers[2]} then #### {answers[2] + 3}",  # the last #### counts
                   f"{answers[3]}"]                                 # no ####: not an answer
    rewards, read = task.score(completions, exs)
    np.testing.assert_array_equal(rewards, np.asarray([1.0, 0.25, 0.25, 0.0], np.float32))
    assert read == [answers[0], answers[1] + 1, answers[2] + 3, None]
    assert [e.group_key for e in exs] == [e.payload.name for e in exs]
    assert all(e.shared.startswith(f"Solve the problem about {e.group_key}.") for e in exs)
    with pytest.raises(ValueError, match="completions for"):
        task.score(completions[:2], exs)


def test_config_is_validated():
    with pytest.raises(ValueError, match="templates"):
        ArithmeticConfig(templates=("div",))
    with pytest.raises(ValueError, match="max_operand"):
        ArithmeticConfig(max_operand=2)
    with pytest.raises(ValueError, match="distinct"):
        problems(ArithmeticConfig(train_size=10, eval_size=500, max_operand=3, templates=("add",)), "dev")
