"""Kill a training run with SIGKILL after a checkpoint; re-running the same command resumes and
ends with the same metrics as an uninterrupted run. Two runs of the same command give the same
metrics (timings aside) and record their provenance."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["--sft.steps", "4", "--sft.batch_size", "4", "--grpo.steps", "8", "--grpo.prompts_per_step", "4",
        "--grpo.group_size", "4", "--grpo.packing.token_budget", "48", "--grpo.sampler.max_new_tokens", "24",
        "--grpo.sampler.response_buckets", "24", "--data.eval_limit", "8", "--checkpoint_every", "2",
        "--policy.hidden_size", "32", "--policy.num_layers", "1", "--policy.intermediate_size", "64",
        "--policy.vocab_size", "400", "--eval_batch_size", "8", "--quiet", "true", "--sft.literal_swap", "0.5"]
VOLATILE = ("seconds", "tokens_per_s")
# Speculative rollouts with a draft warmed up before GRPO and refreshed online: the draft's params
# and optimiser state are part of the checkpoint.
SPECULATIVE = ["--grpo.speculative.enabled", "true", "--grpo.speculative.gamma", "2",
               "--grpo.speculative.warmup_steps", "3", "--grpo.speculative.warmup_prompts_per_step", "4",
               "--grpo.speculative.draft_hidden_size", "16"]
# LoRA with a KL term: the restored run (adapter-only optimiser state, the reference rebuilt on
# the restored base arrays) continues as the uninterrupted one and exports the adapter. At this
# size GRPO's rewards are all 0, so the adapters hardly move in GRPO: a reference rebuilt from the
# wrong adapters would go unnoticed here (tests/rl/test_lora_training.py checks
# lora.reference_state, which the pipeline rebuilds it with).
LORA = ["--policy.lora_rank", "4", "--grpo.loss.kl_coef", "0.05"]


def command(run_dir, extra=()):
    return [sys.executable, "-m", "experiments.train", "--run_dir", str(run_dir), *ARGS, *extra]


def stable_rows(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k.startswith("time_") or k in VOLATILE)} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), SPECULATIVE, LORA], ids=["plain", "speculative", "lora"])
def test_sigkill_then_rerun_matches_uninterrupted(tmp_path, extra):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(command(tmp_path / "full", extra), cwd=root, env=env, check=True, timeout=900)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed, extra), cwd=root, env=env)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        # Kill once GRPO step 3 is logged: the checkpoint of step 2 is on disk, steps 3+ are lost.
        if metrics.is_file() and any(json.loads(x).get("phase") == "grpo" and json.loads(x)["step"] == 3
                                     for x in metrics.read_text().splitlines() if x.strip()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert (killed / "ckpt_grpo").is_dir()

    out = subprocess.run(command(killed, extra), cwd=root, env=env, check=True, timeout=900,
                         capture_output=True, text=True)
    assert "[grpo] resumed from step" in out.stdout
    assert stable_rows(killed) == stable_rows(tmp_path / "full")
    assert (killed / "summary.md").is_file() and (killed / "policy" / "config.json").is_file()
    if extra == SPECULATIVE:
        rows = stable_rows(killed)
        assert any(r["phase"] == "distill" for r in rows)
        assert all("spec_acceptance_rate" in r and "distill_kl" in r for r in rows if r["phase"] == "grpo")
        assert (killed / "draft" / "config.json").is_file()
    if extra == LORA:
        assert all(r["kl"] >= 0 for r in stable_rows(killed) if r["phase"] == "grpo")
        for f in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "base/config.json"):
            assert (killed / f).is_file(), f


@pytest.mark.slow
def test_two_runs_of_one_command_give_identical_metrics(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("a", "b"):
        subprocess.run(command(tmp_path / name), cwd=root, env=env, check=True, timeout=900)
    assert stable_rows(tmp_path / "a") == stable_rows(tmp_path / "b")
    evals = [r for r in stable_rows(tmp_path / "a") if r["phase"] == "eval"]
    # grpo.eval_every 0 = steps // 5 = every step of these 8: before GRPO, steps 1-7, after.
    assert [r["step"] for r in evals] == list(range(9))
    for name in ("a", "b"):
        prov = json.loads((tmp_path / name / "provenance.json").read_text())
        assert prov["packages"]["jax"] and prov["seeds"]["grpo"] == 0
