"""Benchmark: one actor update (forward + backward of the GRPO token loss), replicated `Dense`
batch versus prompt-once `PromptGroups` (xla attention), in one process.

    python -m experiments.bench_actor_update [--preset ci] [--json PATH] [--max-context BYTES]

Per row: ideal token ratio G(P+R)/(P+G·R), measured time ratio (median of ≥3 runs after
compilation), and XLA temp-memory ratio from compiled.memory_analysis().
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common import bench_model_config, machine_note, median_time, temp_bytes, write_json
from zorro_jax.layouts import PromptGroups
from zorro_jax.model.forward import dense_logprobs, prompt_groups_logprobs
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.losses import LossConfig, loss_normaliser, policy_loss

ROWS = [(512, 64, 8), (1024, 128, 8), (2048, 128, 16)]


def make_batch(p, r, g, vocab, b=1, seed=0):
    rng = np.random.default_rng(seed)
    return PromptGroups(
        jnp.asarray(rng.integers(3, vocab, (b, p)), jnp.int32),
        jnp.full((b,), p, jnp.int32),
        jnp.asarray(rng.integers(3, vocab, (b, g, r)), jnp.int32),
        jnp.full((b, g), r, jnp.int32),
    )


def make_steps(graphdef, cfg: LossConfig):
    """Jitted grad steps for both variants; identical loss, different layouts."""

    def loss_from(logp, batch, old, adv):
        mask = batch.completion_mask()
        return policy_loss(logp, old, adv, mask, loss_normaliser(mask, cfg), cfg)[0]

    def groups_loss(params, batch, old, adv):
        model = nnx.merge(graphdef, params)
        logp, _, _ = prompt_groups_logprobs(model, batch, impl="xla", with_entropy=False)
        return loss_from(logp, batch, old, adv)

    def dense_loss(params, batch, old, adv):
        model = nnx.merge(graphdef, params)
        dense = batch.to_dense()
        logp, _, _ = dense_logprobs(model, dense, impl="xla", with_entropy=False)
        return loss_from(batch.from_dense_next_token(logp), batch, old, adv)

    return (jax.jit(jax.value_and_grad(dense_loss)), jax.jit(jax.value_and_grad(groups_loss)))


def run_row(params, steps, p, r, g, vocab, repeats):
    batch = make_batch(p, r, g, vocab)
    old = jnp.full((1, g, r), -7.0, jnp.float32)
    adv = jnp.asarray(np.random.default_rng(1).normal(size=(1, g)), jnp.float32)
    args = (params, batch, old, adv)
    dense_step, groups_step = steps
    mem_d, mem_g = temp_bytes(dense_step, *args), temp_bytes(groups_step, *args)
    t_d = median_time(dense_step, *args, repeats=repeats)
    t_g = median_time(groups_step, *args, repeats=repeats)
    return {
        "P": p, "R": r, "G": g,
        "ideal_token_ratio": g * (p + r) / (p + g * r),
        "dense_s": t_d, "groups_s": t_g, "time_ratio": t_d / t_g,
        "dense_temp_bytes": mem_d, "groups_temp_bytes": mem_g, "memory_ratio": mem_d / mem_g,
    }


def max_context(params, steps, budget, r, g, vocab, step_p=256, limit=65536):
    """Largest P (multiple of step_p) whose compiled temp memory fits `budget`, per variant."""
    out = {}
    for name, fn in zip(("dense", "groups"), steps):
        def fits(p, fn=fn):
            batch = make_batch(p, r, g, vocab)
            args = (params, batch, jnp.zeros((1, g, r)), jnp.zeros((1, g)))
            return temp_bytes(fn, *args) <= budget

        lo, hi = 0, step_p
        while hi <= limit and fits(hi):
            lo, hi = hi, hi * 2
        hi = min(hi, limit + step_p)
        while hi - lo > step_p:  # invariant: lo fits (or 0), hi does not
            mid = (lo + hi) // 2 // step_p * step_p
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        out[name] = lo
        print(f"  {name:6s}: largest P within {budget / 2**20:.0f} MiB = {lo}", flush=True)
    out["ratio"] = out["groups"] / max(out["dense"], 1)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["full", "ci"], default="full", help="ci: first row only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write all figures to this path")
    ap.add_argument("--max-context", type=float, default=None, metavar="BYTES",
                    help="also find the largest P each variant compiles within this temp-memory budget")
    args = ap.parse_args(argv)
    if args.repeats < 3:
        ap.error("--repeats must be at least 3 (the figure is a median)")
    cfg = bench_model_config()
    graphdef, params = nnx.split(init_model(cfg, seed=0))
    steps = make_steps(graphdef, LossConfig())
    rows = ROWS[:1] if args.preset == "ci" else ROWS
    print(f"actor update, {machine_note()}; model d=256 L=4 H=4 V=2048 fp32; B=1 group")
    print(f"{'P':>5} {'R':>4} {'G':>3} | {'ideal':>6} | {'dense s':>8} {'groups s':>8} {'time x':>7} | "
          f"{'dense MiB':>9} {'groups MiB':>10} {'mem x':>6}")
    results = []
    for p, r, g in rows:
        res = run_row(params, steps, p, r, g, cfg.vocab_size, args.repeats)
        results.append(res)
        print(f"{p:5d} {r:4d} {g:3d} | {res['ideal_token_ratio']:6.2f} | {res['dense_s']:8.3f} "
              f"{res['groups_s']:8.3f} {res['time_ratio']:7.2f} | {res['dense_temp_bytes'] / 2**20:9.1f} "
              f"{res['groups_temp_bytes'] / 2**20:10.1f} {res['memory_ratio']:6.2f}", flush=True)
    payload = {"machine": machine_note(), "rows": results}
    if args.max_context:
        r, g = (128, 8)
        print(f"max context (R={r}, G={g}):")
        payload["max_context"] = {"budget_bytes": args.max_context, "R": r, "G": g,
                                  **max_context(params, steps, args.max_context, r, g, cfg.vocab_size)}
        print(f"  ratio groups/dense = {payload['max_context']['ratio']:.2f}")
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
