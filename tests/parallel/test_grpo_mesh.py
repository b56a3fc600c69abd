"""GRPO iterations and SFT steps on (8,1,1), (2,2,2), (1,2,4) meshes == one device (8 simulated
CPU devices, in a subprocess: the device count must be set before jax starts)."""

import pytest

from tests.parallel.test_parallel_sharded import SCRIPT
from tests.parallel.test_parallel_sharded import run_check as _run


def run_check(name: str) -> str:
    return _run(name, script=SCRIPT.with_name("grpo_mesh_checks.py"))


@pytest.mark.slow  # ~50 s: one device and three meshes, two GRPO iterations each
def test_grpo_iterations_on_meshes_match_single_device():
    out = run_check("grpo")
    for mesh in ("(8, 1, 1)", "(2, 2, 2)", "(1, 2, 4)"):
        assert f"grpo {mesh}: ok" in out, out


@pytest.mark.slow  # ~20 s
def test_sft_steps_on_meshes_match_single_device():
    out = run_check("sft")
    for mesh in ("(8, 1, 1)", "(2, 2, 2)", "(1, 2, 4)"):
        assert f"sft {mesh}: ok" in out, out


@pytest.mark.slow  # ~40 s: two references, one device and a (2, 2, 2) mesh each
def test_lora_grpo_on_a_mesh_matches_single_device_and_shares_the_base():
    out = run_check("lora")
    for reference in ("base", "start"):
        assert f"lora {reference} reference (2, 2, 2): ok" in out, out
