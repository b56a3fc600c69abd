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


@pytest.mark.slow
def test_arithmetic_task_trains_through_experiments_train(tmp_path):
    """The plug-in point end to end: `--task arithmetic` through the generic entry point, with
    questions about one person sharing their prompt part (three-level trees)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "experiments.train", "--task", "arithmetic", "--run_dir", str(run),
                    "--arithmetic.train_size", "200", "--arithmetic.eval_size", "8", "--sft.steps", "3",
                    "--sft.batch_size", "4", "--grpo.steps", "2", "--grpo.prompts_per_step", "4",
                    "--grpo.group_size", "2", "--data.questions_per_database", "2",
                    "--grpo.sampler.max_new_tokens", "16", "--grpo.sampler.response_buckets", "16",
                    "--policy.hidden_size", "32", "--policy.num_layers", "1", "--policy.intermediate_size", "64",
                    "--policy.vocab_size", "300", "--eval_batch_size", "4", "--quiet", "true"],
                   cwd=Path(__file__).resolve().parents[3], check=True, timeout=900)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "arithmetic" and "held-out exact-match accuracy after GRPO" in summary
    assert json.loads((run / "config.json").read_text())["arithmetic"]["train_size"] == 200
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "grpo"] == [1, 2]
    outputs = [json.loads(x) for x in (run / "eval_step2.jsonl").read_text().splitlines()]
    assert len(outputs) == 8 and all(o["reference"].split("#### ")[-1].isdigit() for o in outputs)
