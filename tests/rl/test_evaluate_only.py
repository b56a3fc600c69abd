"""grpo.steps 0: a run that only evaluates the policy (after SFT, or as loaded with sft.steps 0),
the zero-shot stage of experiments/real_model.py."""

import json

import pytest

from zorro_jax.rl.grpo import GRPOConfig


def test_zero_grpo_steps_is_accepted_and_negative_is_not():
    assert GRPOConfig(steps=0).steps == 0
    with pytest.raises(ValueError, match="steps must be >= 0"):
        GRPOConfig(steps=-1)


@pytest.mark.slow
def test_run_without_sft_or_grpo_evaluates_once(tmp_path):
    import zorro_jax.tasks  # noqa: F401  (registers the built-in tasks)
    from zorro_jax.rl.pipeline import RunConfig, parse_command_line, run

    cfg, task_cfg = parse_command_line(
        ["--task", "arithmetic", "--run_dir", str(tmp_path), "--sft.steps", "0", "--grpo.steps", "0",
         "--data.eval_limit", "4", "--eval_batch_size", "4", "--grpo.sampler.max_new_tokens", "8",
         "--grpo.sampler.response_buckets", "8", "--policy.hidden_size", "32", "--policy.num_layers", "1",
         "--policy.intermediate_size", "64", "--policy.vocab_size", "300", "--quiet", "true"], RunConfig())
    summary = run(cfg, task_cfg)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [("eval", 0)]
    assert summary["held-out exact-match accuracy after SFT"] == summary["held-out exact-match accuracy after GRPO"]
    assert len((tmp_path / "eval_step0.jsonl").read_text().splitlines()) == 4
