"""Kill a training run with SIGKILL after a checkpoint; re-running the same command resumes and
ends with the same metrics as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = ["--sft.steps", "4", "--sft.batch_size", "4", "--grpo.steps", "8", "--grpo.prompts_per_step", "4",
        "--grpo.group_size", "4", "--grpo.micro_batch_groups", "2", "--grpo.sampler.max_new_tokens", "24",
        "--grpo.sampler.response_buckets", "24", "--data.eval_limit", "8", "--checkpoint_every", "2",
        "--policy.hidden_size", "32", "--policy.num_layers", "1", "--policy.intermediate_size", "64",
        "--policy.vocab_size", "400", "--eval_batch_size", "8", "--quiet", "true"]
VOLATILE = ("seconds", "tokens_per_s")


def command(run_dir):
    return [sys.executable, "-m", "experiments.train", "--run_dir", str(run_dir), *ARGS]


def stable_rows(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k.startswith("time_") or k in VOLATILE)} for r in rows]


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(command(tmp_path / "full"), cwd=root, env=env, check=True, timeout=900)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), cwd=root, env=env)
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

    out = subprocess.run(command(killed), cwd=root, env=env, check=True, timeout=900,
                         capture_output=True, text=True)
    assert "[grpo] resumed from step" in out.stdout
    assert stable_rows(killed) == stable_rows(tmp_path / "full")
    assert (killed / "summary.md").is_file() and (killed / "policy" / "config.json").is_file()
