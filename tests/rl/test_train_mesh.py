"""`python -m experiments.train --mesh.fsdp 8` (8 simulated devices) trains like one device: the
same rewards and exported weights, and transformers loads the exported folder with the same
logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Rows per micro-batch divisible by the 8 devices of the fsdp axis.
ARGS = ["--sft.steps", "2", "--sft.batch_size", "8", "--grpo.steps", "2", "--grpo.prompts_per_step", "8",
        "--grpo.group_size", "4", "--grpo.packing.token_budget", "48", "--grpo.sampler.max_new_tokens", "12",
        "--grpo.sampler.response_buckets", "12", "--data.eval_limit", "8", "--checkpoint_every", "1",
        "--policy.hidden_size", "32", "--policy.num_layers", "1", "--policy.intermediate_size", "64",
        "--policy.vocab_size", "400", "--eval_batch_size", "8", "--quiet", "true",
        "--sft.packing.rows_per_micro_batch", "8", "--grpo.packing.rows_per_micro_batch", "8"]


def train(run_dir, *extra):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--run_dir", str(run_dir), *ARGS, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


@pytest.mark.slow  # ~3 min on two busy cores: two short runs
def test_train_on_fsdp_mesh_matches_one_device_and_exports_for_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from zorro_jax.checkpoints.hf import load_hf_model
    from zorro_jax.model.forward import dense_logits

    one = train(tmp_path / "one")
    mesh = train(tmp_path / "mesh", "--mesh.fsdp", "8")
    config = json.loads((tmp_path / "mesh" / "config.json").read_text())
    assert config["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    grpo = lambda rows: [r for r in rows if r["phase"] == "grpo"]
    assert len(grpo(mesh)) == 2
    for a, b in zip(grpo(mesh), grpo(one)):
        assert a["reward_mean"] == b["reward_mean"] and a["generated_tokens"] == b["generated_tokens"]
        assert max_rel(a["grad_norm"], b["grad_norm"]) <= 1e-5
    for a, b in zip([r for r in mesh if r["phase"] == "sft"], [r for r in one if r["phase"] == "sft"]):
        assert max_rel(a["loss"], b["loss"]) <= 1e-5
    got, want = (load_file(tmp_path / d / "policy" / "model.safetensors") for d in ("mesh", "one"))
    assert got.keys() == want.keys()
    for k in want:
        assert max_rel(got[k], want[k]) <= 1e-5, k

    folder = tmp_path / "mesh" / "policy"
    hf = AutoModelForCausalLM.from_pretrained(str(folder)).float().eval()
    tokens = np.random.default_rng(0).integers(3, hf.config.vocab_size, (2, 12))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(dense_logits(load_hf_model(folder), tokens.astype(np.int32)))
    # The tolerance of the transformers parity tests (two fp32 implementations, tests/model).
    assert max_rel(ours, ref) <= 1e-4, max_rel(ours, ref)


@pytest.mark.slow  # ~3 min on two busy cores: two short runs
def test_lora_run_on_fsdp_mesh_matches_one_device(tmp_path):
    """LoRA with a KL term through the run on an fsdp mesh (adapters sharded, trained by SFT and
    donated; the reference on the policy's base arrays): the same rollouts, SFT losses and
    exported adapter as one device. This tiny policy's groups score alike: its GRPO gradients are
    rounding noise (~1e-10), which Adam's normalisation would turn into lr-sized steps that differ
    between reduction orders, so GRPO runs at lr 1e-12 here (steps ~1e-8 of the adapters' size;
    every step still runs: rollouts, reference log-probs, gradients, the donating apply). The
    GRPO updates' exactness on meshes is checked with real advantages in
    tests/parallel/test_grpo_mesh.py."""
    from safetensors.numpy import load_file

    lora = ("--policy.lora_rank", "4", "--grpo.loss.kl_coef", "0.05", "--grpo.optim.lr", "1e-12")
    one = train(tmp_path / "one", *lora)
    mesh = train(tmp_path / "mesh", *lora, "--mesh.fsdp", "8")
    phase = lambda rows, name: [r for r in rows if r["phase"] == name]
    assert len(phase(mesh, "grpo")) == 2
    for a, b in zip(phase(mesh, "grpo"), phase(one, "grpo")):
        assert a["reward_mean"] == b["reward_mean"] and a["generated_tokens"] == b["generated_tokens"]
    for a, b in zip(phase(mesh, "sft"), phase(one, "sft")):
        assert max_rel(a["loss"], b["loss"]) <= 1e-5
    got, want = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("mesh", "one"))
    assert got.keys() == want.keys() and len(want) > 0
    for k in want:
        assert max_rel(got[k], want[k]) <= 1e-5, k
