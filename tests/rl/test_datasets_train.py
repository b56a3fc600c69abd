"""Spider- and BIRD-format folders as shipped train end to end through `experiments.train` (two
GRPO steps), with the data set's comparison rule (bird for BIRD) chosen automatically."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zorro_jax.tasks.text2sql.fixtures import write_bird_release, write_spider_release

ARGS = ["--sft.steps", "2", "--sft.batch_size", "4", "--grpo.steps", "2", "--grpo.prompts_per_step", "2",
        "--grpo.group_size", "2", "--grpo.sampler.max_new_tokens", "16", "--grpo.sampler.response_buckets", "16",
        "--policy.hidden_size", "32", "--policy.num_layers", "1", "--policy.intermediate_size", "64",
        "--policy.vocab_size", "400", "--eval_batch_size", "4", "--data.eval_limit", "4",
        "--text2sql.prompt_style", "ddl", "--data.max_prompt_tokens", "2048", "--quiet", "true"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["spider", "bird"])
def test_folder_as_shipped_trains(tmp_path, fmt):
    data = tmp_path / "data"
    (write_spider_release if fmt == "spider" else write_bird_release)(str(data))
    run = tmp_path / "run"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ZORRO_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-m", "experiments.train", "--run_dir", str(run),
                    "--text2sql.source", str(data), *ARGS], cwd=root, env=env, check=True, timeout=900)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reward comparison rule"] == fmt
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["phase"] == "grpo"] == [1, 2]
    if fmt == "spider":  # train = train_spider.json + train_others.json: both databases
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["task"] == "text2sql" and cfg["text2sql"]["format"] == "auto"


def test_failing_golds_are_dropped_with_reasons():
    from types import SimpleNamespace

    from zorro_jax.rl.task import Example
    from zorro_jax.tasks.text2sql.task import Text2SQLConfig, Text2SQLTask

    class Executor:
        def execute_gold(self, sql, path):
            bad = "missing" in sql
            return SimpleNamespace(ok=not bad, status="error" if bad else "ok",
                                   message="Binder Error: no column missing\nLINE 1" if bad else "")

    task = Text2SQLTask(Text2SQLConfig())
    task._reward = SimpleNamespace(executor=Executor())  # the sandbox stands in: no database opened
    examples = [Example(str(i), "", "", "", payload=SimpleNamespace(gold_sql=s, db_path="x"))
                for i, s in enumerate(("SELECT 1", "SELECT missing", "SELECT 2"))]
    kept, reasons = task.check(examples)
    assert kept == [0, 2] and reasons == {"error: Binder Error: no column missing": 1}
