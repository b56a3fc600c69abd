"""Sharded == single device on 8 simulated CPU devices (each check in its own subprocess: the
device count must be set before jax starts, and conftest has started it here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sharded_checks.py")


def run_check(name: str, script: Path = SCRIPT):
    # The script adds the 8-device flag to the inherited XLA_FLAGS (conftest's compile level).
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script), name], env=env, capture_output=True, check=False,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc.stdout


@pytest.mark.slow  # ~60 s: four meshes, each in its own 8-device subprocess
def test_train_step_matches_single_device():
    out = run_check("train")
    for mesh in ("(8, 1, 1)", "(2, 2, 2)", "(1, 4, 2)", "(1, 1, 8)"):
        assert f"train {mesh}: ok" in out


def test_param_and_optimizer_bytes_per_device():
    assert "memory (1, 4, 2): ok" in run_check("memory")


@pytest.mark.slow  # ~8 s: three 8-device compiles (kept out of the default tier's budget)
def test_activations_are_split_by_rows():
    out = run_check("rows")
    assert all(f"rows {mesh}: ok" in out for mesh in ("(8, 1, 1)", "(1, 8, 1)", "(2, 4, 1)"))


# One mesh of each in the default tier (every axis split), the others in the slow tier.
def test_greedy_generation_matches_single_device():
    assert "generate (2, 2, 2): ok" in run_check("generate@2,2,2")


@pytest.mark.slow
def test_greedy_generation_matches_single_device_on_more_meshes():
    out = run_check("generate@1,2,4/4,2,1")
    assert "generate (1, 2, 4): ok" in out and "generate (4, 2, 1): ok" in out


def test_kernels_under_shard_map_match_unsharded():
    out = run_check("kernels@1,2,4")
    assert "kernels (1, 2, 4): ok" in out and "rejected as expected" in out


@pytest.mark.slow
def test_kernels_under_shard_map_match_unsharded_on_another_mesh():
    assert "kernels (2, 2, 1): ok" in run_check("kernels@2,2,1")


@pytest.mark.slow  # interpret-mode kernels in 8-device sharded steps (~30 s)
def test_pallas_impl_in_sharded_steps_runs_per_device():
    out = run_check("pallas_steps")
    assert "pallas steps (2, 2, 2): ok" in out and "pallas steps (1, 2, 4): ok" in out


@pytest.mark.slow
def test_memory_table_script(tmp_path):
    """The memory-table entry point compiles (abstract shapes only) and splits the weights."""
    out = tmp_path / "mem.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-m", "experiments.memory_table", "--preset", "ci", "--json",
                           str(out)], cwd=SCRIPT.parents[2], env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-6000:]
    rows = json.loads(out.read_text())["rows"]
    train, sample = rows[0], rows[1]
    assert train["preset"] == "training" and tuple(train["mesh"]) == (1, 4, 2)
    # fp32 AdamW moments: twice the params on every device.
    assert abs(train["opt_state_bytes"] - 2 * train["params_bytes"]) < 1024
    assert sample["preset"] == "sampling" and sample["temp_bytes"] > 0
