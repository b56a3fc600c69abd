"""GRPO and SFT on meshes == one device, run in a subprocess with 8 simulated CPU devices.

`python tests/parallel/grpo_mesh_checks.py CHECK` (see `test_grpo_mesh.py`). Two GRPO iterations
of the quickstart configuration (its loss, optimiser schedule and prompt-once mode; smaller
sizes) with sampled rollouts at a fixed seed, on one device and on each mesh: the same
completions, rewards, losses and parameters (fp32, ≤ 1e-5 relative per tensor).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp
import numpy as np
from flax import nnx
from sharded_checks import RTOL, assert_close

from experiments.quickstart import QUICKSTART
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.lora import (
    LoRAConfig,
    add_lora,
    base_model,
    projections,
    reference_state,
    split_trainable,
)
from zorro_jax.model.transformer import init_model
from zorro_jax.parallel.mesh import MeshConfig
from zorro_jax.parallel.steps import training_steps
from zorro_jax.rl.batches import PackingConfig
from zorro_jax.rl.grpo import GRPOTrainer, Policy, PromptItem
from zorro_jax.rl.losses import compute_advantages
from zorro_jax.rl.optim import make_optimizer
from zorro_jax.rl.sft import make_sft_step
from zorro_jax.rl.steps import init_opt_state, make_apply_fn
from zorro_jax.sampling.sampler import SamplerConfig

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4)]
VOCAB = 96


def model_config() -> ModelConfig:
    # The quickstart policy's family (Qwen3: qk-norm, tied embeddings), small; 8 heads and 4 kv
    # heads so that a tensor axis of 4 divides both.
    return ModelConfig(model_type="qwen3", vocab_size=VOCAB, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4, head_dim=8,
                       qk_norm=True, tie_word_embeddings=True)


def grpo_config():
    sampler = SamplerConfig(max_new_tokens=8, temperature=1.0, eos_token_ids=(2,), attention_impl="xla",
                            response_buckets=(8,))
    # 8 rows per micro-batch (divisible by every mesh's data × fsdp); a budget that packs about
    # two groups per row and gives two micro-batches.
    return dataclasses.replace(QUICKSTART.grpo, steps=2, prompts_per_step=8, group_size=4, sampler=sampler,
                               packing=PackingConfig(token_budget=32, rows_per_micro_batch=8),
                               attention_impl="xla")


class IdTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def count_reward(texts, tasks):
    """How often the task's favourite token id appears (a reward that differs inside groups)."""
    r = [sum(tok == str(t) for tok in text.split()) / 4 for text, t in zip(texts, tasks)]
    return np.asarray(r, np.float32), [None] * len(texts)


def items():
    rng = np.random.default_rng(0)
    return [PromptItem(task=int(rng.integers(3, 12)), prompt_ids=rng.integers(3, VOCAB, n).tolist())
            for n in rng.integers(3, 12, 16)]


def run_grpo(mesh):
    cfg = grpo_config()
    graphdef, params = nnx.split(init_model(model_config(), seed=0))
    policy, opt = Policy(graphdef, params), make_optimizer(cfg.optim)
    if mesh is None:
        trainer = GRPOTrainer(policy, opt, make_apply_fn(opt), IdTokenizer(), items(), count_reward, cfg)
        opt_state = opt.init(policy.params)
    else:
        steps = training_steps(graphdef, params, opt, loss_cfg=cfg.loss, mesh=mesh, impl="xla",
                               rows_per_micro_batch=cfg.packing.rows_per_micro_batch)
        trainer = GRPOTrainer(policy, opt, None, IdTokenizer(), items(), count_reward, cfg, steps=steps)
        opt_state = steps.init_opt(policy.params)
    rows, texts, rewards = [], [], []
    for step in range(cfg.steps):
        row, opt_state, extra = trainer.iteration(step, opt_state)
        rows.append(row)
        texts.append(extra["texts"])
        rewards.append(extra["rewards"])
    return rows, texts, rewards, jax.device_get(policy.params), jax.device_get(opt_state)


def check_grpo():
    t0 = time.perf_counter()
    want_rows, want_texts, want_rewards, want_params, want_opt = run_grpo(None)
    for r in want_rewards:  # non-zero advantages: the updates are non-trivial
        assert np.asarray(r).std(axis=1).max() > 0, r
    _, p0 = nnx.split(init_model(model_config(), seed=0))
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(want_params), jax.tree.leaves(p0)))
    assert moved > 1e-6, moved
    print(f"one device: {time.perf_counter() - t0:.1f} s, losses {[r['loss'] for r in want_rows]}")
    worst = {}
    for sizes in MESHES:
        t0 = time.perf_counter()
        rows, texts, rewards, params, opt_state = run_grpo(MeshConfig(*sizes).make())
        assert texts == want_texts, f"{sizes}: rollouts differ"
        for step, (a, b) in enumerate(zip(rewards, want_rewards)):
            np.testing.assert_array_equal(a, b, err_msg=f"{sizes} step {step} rewards")
        for step, (row, want) in enumerate(zip(rows, want_rows)):
            for k in ("reward_mean", "entropy", "grad_norm", "clip_fraction"):
                assert_close(f"{sizes} step {step} {k}", np.float64(row[k]), np.float64(want[k]))
            # On-policy, the clipped objective is Σ -A·ratio with ratio ≈ 1 and advantages that
            # cancel inside each group: the loss is ~0 by construction, so its difference is
            # measured against the size of its terms (max |A|), not against itself.
            adv = np.asarray(compute_advantages(jnp.asarray(want_rewards[step]), grpo_config().loss))
            err = abs(row["loss"] - want["loss"]) / np.abs(adv).max()
            assert err <= RTOL, f"{sizes} step {step} loss: {row['loss']} vs {want['loss']} ({err:.2g})"
            worst["loss"] = max(worst.get("loss", 0.0), err)
        assert_close(f"{sizes} params", params, want_params)
        assert_close(f"{sizes} opt_state", opt_state, want_opt)
        print(f"grpo {sizes}: ok ({time.perf_counter() - t0:.1f} s)")
    print(f"largest loss difference / max |A|: {worst['loss']:.2g}")


def run_sft(mesh, n_steps=2):
    cfg = dataclasses.replace(QUICKSTART.sft, steps=n_steps, batch_size=8, literal_swap=0.0,
                              packing=PackingConfig(token_budget=32, rows_per_micro_batch=8))
    graphdef, params = nnx.split(init_model(model_config(), seed=1))
    rng = np.random.default_rng(1)
    examples = [(rng.integers(3, VOCAB, n).tolist(), rng.integers(3, VOCAB, m).tolist())
                for n, m in rng.integers(2, 10, (12, 2))]
    opt = make_optimizer(cfg.optim)
    if mesh is None:
        step_fn = make_sft_step(graphdef, make_apply_fn(opt), examples, cfg, impl="xla")
        state = {"params": params, "opt": opt.init(params)}
    else:
        steps = training_steps(graphdef, params, opt, mesh=mesh, impl="xla", rows_per_micro_batch=8)
        step_fn = make_sft_step(graphdef, None, examples, cfg, impl="xla", steps=steps)
        placed = steps.place_params(params)
        state = {"params": placed, "opt": steps.init_opt(placed)}
    losses = []
    for step in range(1, n_steps + 1):
        state, row = step_fn(step, state)
        losses.append(row["loss"])
    return losses, jax.device_get(state)


def check_sft():
    want_losses, want_state = run_sft(None)
    for sizes in MESHES:
        losses, state = run_sft(MeshConfig(*sizes).make())
        assert_close(f"{sizes} sft losses", np.asarray(losses), np.asarray(want_losses))
        assert_close(f"{sizes} sft state", state, want_state)
        print(f"sft {sizes}: ok")


def lora_policy():
    """The check's model with rank-4 adapters whose B is non-zero (as after an SFT phase)."""
    model = add_lora(init_model(model_config(), seed=0), LoRAConfig(rank=4, alpha=8.0), seed=1)
    rng = np.random.default_rng(2)
    for _name, lin in projections(model).values():
        lin.lora.lora_b.set_value(jnp.asarray(rng.normal(0, 0.05, lin.lora.lora_b.shape), jnp.float32))
    return nnx.split(model)


def run_grpo_lora(mesh, reference: str):
    """Two GRPO iterations of a LoRA policy with a KL term against `reference`: "base" (the base
    graph on the policy's frozen arrays) or "start" (the policy graph, frozen arrays + the
    starting adapters)."""
    cfg = grpo_config()
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, kl_coef=0.05))
    graphdef, params = lora_policy()
    opt = make_optimizer(cfg.optim)
    if mesh is not None:
        steps = training_steps(graphdef, params, opt, loss_cfg=cfg.loss, mesh=mesh, impl="xla",
                               rows_per_micro_batch=cfg.packing.rows_per_micro_batch)
        # Placed first, as after an SFT phase on the mesh: the reference's adapters are then the
        # very arrays the first update donates, unless the trainer copies them.
        params = steps.place_params(params)
    ref_graphdef = nnx.graphdef(base_model(nnx.merge(graphdef, params))) if reference == "base" else None
    ref = reference_state(params, None if reference == "base" else split_trainable(params)[0])
    policy = Policy(graphdef, params)
    if mesh is None:
        trainer = GRPOTrainer(policy, opt, make_apply_fn(opt), IdTokenizer(), items(), count_reward, cfg,
                              ref_params=ref, ref_graphdef=ref_graphdef)
        opt_state = init_opt_state(opt, policy.params)
    else:
        trainer = GRPOTrainer(policy, opt, None, IdTokenizer(), items(), count_reward, cfg, steps=steps,
                              ref_params=ref, ref_graphdef=ref_graphdef)
        opt_state = steps.init_opt(policy.params)
    frozen0 = jax.device_get(split_trainable(policy.params)[1])
    rows = []
    for step in range(cfg.steps):
        row, opt_state, _ = trainer.iteration(step, opt_state)
        rows.append(row)
    # One copy of the base: the reference's frozen arrays are the policy's, alive and unchanged.
    frozen = jax.tree.leaves(split_trainable(policy.params)[1])
    ref_frozen = jax.tree.leaves(split_trainable(trainer.ref_params)[1] if reference == "start"
                                 else trainer.ref_params)
    assert all(x is y for x, y in zip(frozen, ref_frozen, strict=True)), "the base was copied"
    assert_close(f"{reference} frozen base", jax.device_get(split_trainable(policy.params)[1]), frozen0,
                 rtol=0.0)
    # Optimiser state of the adapters only.
    adapters = sum(x.size for x in jax.tree.leaves(split_trainable(policy.params)[0]))
    assert sum(np.size(x) for x in jax.tree.leaves(opt_state)) <= 2 * adapters + 8
    return rows, jax.device_get(policy.params), jax.device_get(opt_state)


def check_lora():
    for reference in ("base", "start"):
        want_rows, want_params, want_opt = run_grpo_lora(None, reference)
        if reference == "base":  # the adapters' B ≠ 0: the reference is in the loss from step 0
            assert all(r["kl"] > 1e-6 for r in want_rows), want_rows
        a0 = split_trainable(lora_policy()[1])[0]
        moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(split_trainable(want_params)[0]), jax.tree.leaves(a0)))
        assert moved > 1e-6, moved
        sizes = (2, 2, 2)
        rows, params, opt_state = run_grpo_lora(MeshConfig(*sizes).make(), reference)
        for step, (row, want) in enumerate(zip(rows, want_rows)):
            for k in ("reward_mean", "kl", "grad_norm"):
                assert_close(f"{sizes} {reference} step {step} {k}", np.float64(row[k]), np.float64(want[k]))
        assert_close(f"{sizes} {reference} params", params, want_params)
        assert_close(f"{sizes} {reference} opt_state", opt_state, want_opt)
        print(f"lora {reference} reference {sizes}: ok")


CHECKS = {"grpo": check_grpo, "sft": check_sft, "lora": check_lora}

if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    for name in sys.argv[1:] or CHECKS:
        CHECKS[name]()
