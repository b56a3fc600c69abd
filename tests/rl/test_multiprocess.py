"""Two JAX processes × 4 simulated devices on loopback (`experiments.launch_local`) train like one
process with 8 devices; SIGKILL of one process makes the launcher fail within seconds, and
re-running the command resumes and ends with the same metrics as an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.rl.test_train_mesh import ARGS, ROOT, max_rel

MP_ARGS = [*ARGS, "--grpo.steps", "4", "--mesh.fsdp", "8"]
VOLATILE = ("seconds", "tokens_per_s")


def launcher(run_dir):
    return [sys.executable, "-m", "experiments.launch_local", "--procs", "2", "--devices-per-proc", "4", "--",
            "--run_dir", str(run_dir), *MP_ARGS]


def rows(run_dir):
    out = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k.startswith("time_") or k in VOLATILE)} for r in out]


def assert_same_metrics(got, want):
    assert [(r["phase"], r["step"]) for r in got] == [(r["phase"], r["step"]) for r in want]
    for a, b in zip(got, want):
        for k, v in b.items():
            if k == "loss" and a["phase"] == "grpo":
                # ~0 by construction on-policy (advantages cancel in each group): compared against
                # the size of its terms (|A| ≤ ~2), as in tests/parallel/grpo_mesh_checks.py.
                assert abs(a[k] - v) <= 1e-5 * 2, (a["step"], a[k], v)
            elif isinstance(v, float):
                assert max_rel(a[k], v) <= 1e-5, (a["phase"], a["step"], k, a[k], v)
            else:
                assert a[k] == v, (a["phase"], a["step"], k)


@pytest.mark.slow  # ~5 min on two busy cores: three launches and one 8-device run
def test_two_processes_match_one_and_survive_a_kill(tmp_path):
    from safetensors.numpy import load_file

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    one_env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-m", "experiments.train", "--run_dir", str(tmp_path / "one"), *MP_ARGS],
                   cwd=ROOT, env=one_env, check=True, timeout=900, capture_output=True)
    full = subprocess.run(launcher(tmp_path / "mp"), cwd=ROOT, env=env, timeout=900, capture_output=True, text=True,
                          check=False)
    assert full.returncode == 0, full.stderr[-4000:]
    assert_same_metrics(rows(tmp_path / "mp"), rows(tmp_path / "one"))
    got, want = (load_file(tmp_path / d / "policy" / "model.safetensors") for d in ("mp", "one"))
    for k in want:
        assert max_rel(got[k], want[k]) <= 1e-5, k
    assert not (tmp_path / "mp" / "process1" / "policy").exists()  # process 0 exports

    killed = tmp_path / "killed"
    proc = subprocess.Popen(launcher(killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pids = [int(re.search(r"pid (\d+)", proc.stderr.readline()).group(1)) for _ in range(2)]
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        # Kill process 1 once GRPO step 2 is logged: step 2's checkpoint is on disk.
        if metrics.is_file() and any(json.loads(x).get("phase") == "grpo" and json.loads(x)["step"] == 2
                                     for x in metrics.read_text().splitlines() if x.strip()):
            os.kill(pids[1], signal.SIGKILL)
            t_kill = time.time()
            break
        time.sleep(0.05)
    else:
        pytest.fail("the run finished (or timed out) before it could be killed")
    err = proc.stderr.read()
    proc.wait(timeout=60)
    detect_s = time.time() - t_kill
    print(f"launcher exited {detect_s:.1f} s after the kill")
    assert proc.returncode != 0 and detect_s < 10, (proc.returncode, detect_s)
    assert "process 1 died (signal 9)" in err
    for pid in pids:  # nothing left behind
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True, check=False).returncode != 0

    again = subprocess.run(launcher(killed), cwd=ROOT, env=env, timeout=900, capture_output=True, text=True,
                           check=False)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "[grpo] resumed from step" in again.stdout
    assert_same_metrics(rows(killed), rows(tmp_path / "mp"))
    np.testing.assert_array_equal(*(load_file(d / "policy" / "model.safetensors")["model.embed_tokens.weight"]
                                    for d in (killed, tmp_path / "mp")))
