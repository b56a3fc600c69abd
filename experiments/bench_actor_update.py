"""Benchmark: one actor update (forward + backward of the GRPO token loss) on ragged batches, four
layouts in one process (XLA attention on this CPU).

    python -m experiments.bench_actor_update [--distributions sql reasoning long-prompt uniform]
                                             [--preset ci] [--repeats 3] [--json PATH]

Variants, all on the same groups (B prompts × G completions drawn from a named length
distribution with a fixed seed):
- padded naive: `Dense` rows prompt ++ completion, right-padded to the longest sample;
- packed naive: depth-1 `PackedTree` (the prompt copied into every sample, rows packed without
  padding: the baseline stacks run as "remove padding" / varlen packing);
- padded prompt-once: `PromptGroups` (prompt and completions each padded to a length bucket);
- packed prompt-once: depth-2 `PackedTree` (each prompt once, its G completions under it).
Columns: median time per update, XLA temp bytes (`memory_analysis`, the largest micro-batch),
tokens each variant computes (rows × row length) and the ideal token ratio = packed-naive real
tokens / packed prompt-once real tokens. Ratios compare variants inside this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common import bench_model_config, machine_note, temp_bytes, write_json
from zorro_jax.attention import XLA_TREE_TILES
from zorro_jax.layouts import (
    group_tree,
    pack_groups_balanced,
    pack_prompt_groups,
    replicated_trees,
)
from zorro_jax.model.forward import dense_logprobs, packed_logprobs, prompt_groups_logprobs
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.losses import LossConfig, loss_normaliser, policy_loss


@dataclasses.dataclass(frozen=True)
class LengthDist:
    """B prompts × G completions; lengths lognormal(median, sigma) clipped to [lo, hi]."""

    groups: int
    samples: int
    prompt: tuple[float, float, int, int]  # median, sigma, lo, hi
    completion: tuple[float, float, int, int]

    def draw(self, seed: int = 0):
        """(prompt lengths [B], completion lengths [B, G]) as int arrays."""
        rng = np.random.default_rng(seed)

        def lognormal(spec, size):
            median, sigma, lo, hi = spec
            x = np.exp(rng.normal(np.log(median), sigma, size)) if sigma else np.full(size, median)
            return np.clip(np.round(x), lo, hi).astype(np.int64)

        return (lognormal(self.prompt, self.groups),
                lognormal(self.completion, (self.groups, self.samples)))


DISTRIBUTIONS = {
    "uniform": LengthDist(2, 8, (1024, 0.0, 1024, 1024), (128, 0.0, 128, 128)),
    "sql": LengthDist(4, 8, (768, 0.5, 128, 3072), (96, 0.6, 8, 512)),
    "reasoning": LengthDist(2, 8, (512, 0.5, 128, 3072), (384, 0.8, 16, 2048)),
    "long-prompt": LengthDist(2, 8, (3072, 0.2, 1024, 6144), (192, 0.8, 8, 1024)),
}
VARIANTS = ("padded_naive", "packed_naive", "padded_prompt_once", "packed_prompt_once")
# Each packed row holds at most this many tokens (raised to the largest tree when needed).
TOKEN_BUDGET = 8192


def make_groups(dist: LengthDist, vocab: int, seed: int = 0):
    """[(prompt ids, [completion ids] * G)] with the distribution's lengths (random tokens)."""
    plen, clen = dist.draw(seed)
    rng = np.random.default_rng(seed + 1)
    return [(rng.integers(3, vocab, int(p)).astype(np.int32),
             [rng.integers(3, vocab, int(c)).astype(np.int32) for c in cs])
            for p, cs in zip(plen, clen)]


def _loss(logp, mask, old, adv, cfg):
    return policy_loss(logp, old, adv, mask, loss_normaliser(mask, cfg), cfg)[0]


def make_steps(graphdef, cfg: LossConfig):
    """Jitted value-and-grad steps: (params, batch, old [B,G,R], adv [B,G]) -> (loss, grads), one
    per layout kind. The packed step serves both packed variants (the layout decides sharing)."""

    def packed(params, batch, old, adv):
        lp, _, mask = packed_logprobs(nnx.merge(graphdef, params), batch, impl="xla",
                                      with_entropy=False)
        return _loss(lp, mask, old, adv, cfg)

    def padded_groups(params, batch, old, adv):
        lp, _, mask = prompt_groups_logprobs(nnx.merge(graphdef, params), batch, impl="xla",
                                             with_entropy=False)
        return _loss(lp, mask, old, adv, cfg)

    def padded_dense(params, batch, old, adv):
        dense, tree = batch
        lp, _, _ = dense_logprobs(nnx.merge(graphdef, params), dense, impl="xla",
                                  with_entropy=False)
        return _loss(tree.from_dense_next_token(lp), tree.sample_mask(), old, adv, cfg)

    step = lambda f: jax.jit(jax.value_and_grad(f))
    return {"packed": step(packed), "padded_groups": step(padded_groups),
            "padded_dense": step(padded_dense)}


def build_variants(groups, token_budget: int = TOKEN_BUDGET):
    """variant -> (step kind, [(batch, real tokens, computed tokens)] one per micro-batch)."""
    g = len(groups[0][1])
    r = max(1, max(len(c) for _, cs in groups for c in cs))
    prompt_once = [group_tree(p, cs, b) for b, (p, cs) in enumerate(groups)]
    naive = [t for b, (p, cs) in enumerate(groups) for t in replicated_trees(p, cs, b)]
    out = {}
    for name, trees in (("packed_naive", naive), ("packed_prompt_once", prompt_once)):
        largest = max(sum(len(s) for s in t.segments) for t in trees)
        budget = max(token_budget, largest)
        total = sum(sum(len(s) for s in t.segments) for t in trees)
        rows = -(-total // budget)
        mbs = pack_groups_balanced(trees, token_budget=budget, rows_per_batch=rows, loss_width=r,
                                   tiles=XLA_TREE_TILES)
        out[name] = ("packed", [(m.packed, m, int(np.asarray(m.packed.positions_NxT).size))
                                for m in mbs], total)
    whole = pack_groups_balanced(prompt_once, token_budget=max(
        token_budget, max(sum(len(s) for s in t.segments) for t in prompt_once)),
        rows_per_batch=len(prompt_once), loss_width=r, tiles=XLA_TREE_TILES)[0]
    dense = whole.packed.to_dense()
    out["padded_naive"] = ("padded_dense", [((dense, whole.packed), whole,
                                             int(dense.tokens_NxT.size))],
                           sum(g * len(p) + sum(len(c) for c in cs) for p, cs in groups))
    pg = pack_prompt_groups(groups)
    b, p_pad, _, r_pad = pg.shape
    out["padded_prompt_once"] = ("padded_groups", [(pg, None, b * (p_pad + g * r_pad))],
                                 out["packed_prompt_once"][2])
    return out


def _targets(groups, seed=1):
    b, g = len(groups), len(groups[0][1])
    r = max(1, max(len(c) for _, cs in groups for c in cs))
    rng = np.random.default_rng(seed)
    return np.full((b, g, r), -7.0, np.float32), rng.normal(size=(b, g)).astype(np.float32)


def run_distribution(params, steps, name: str, vocab: int, repeats: int, seed: int = 0):
    """Time and measure every variant on one distribution; returns the JSON row."""
    groups = make_groups(DISTRIBUTIONS[name], vocab, seed)
    old, adv = _targets(groups)
    row = {"distribution": name, "groups": len(groups), "samples": len(groups[0][1])}
    for variant, (kind, parts, real) in build_variants(groups).items():
        step = steps[kind]
        calls = []
        for batch, mb, _ in parts:
            o = mb.take_groups(old) if mb is not None and kind == "packed" else old
            a = mb.take_groups(adv) if mb is not None and kind == "packed" else adv
            r = o.shape[2]
            if kind == "padded_groups":
                o = np.pad(o, ((0, 0), (0, 0), (0, batch.shape[3] - r)), constant_values=-7.0)
            calls.append((params, batch, jnp.asarray(o), jnp.asarray(a)))

        def update(calls=calls, step=step):
            return [step(*c) for c in calls]

        jax.block_until_ready(update())
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(update())
            times.append(time.perf_counter() - t0)
        row[variant] = {
            "time_s": float(np.median(times)),
            "temp_bytes": max(temp_bytes(step, *c) for c in calls),
            "computed_tokens": sum(t for _, _, t in parts),
            "real_tokens": int(real),
            "micro_batches": len(parts),
        }
        print(f"  {name:12s} {variant:19s} {row[variant]['time_s']:8.3f} s  "
              f"{row[variant]['temp_bytes'] / 2**20:9.1f} MiB  "
              f"{row[variant]['computed_tokens']:7d} tokens", flush=True)
    naive, once = row["packed_naive"], row["packed_prompt_once"]
    row["ideal_token_ratio"] = naive["real_tokens"] / once["real_tokens"]
    row["time_ratio_vs_packed_naive"] = naive["time_s"] / once["time_s"]
    row["memory_ratio_vs_packed_naive"] = naive["temp_bytes"] / once["temp_bytes"]
    row["time_ratio_vs_padded_prompt_once"] = row["padded_prompt_once"]["time_s"] / once["time_s"]
    row["time_ratio_vs_padded_naive"] = row["padded_naive"]["time_s"] / once["time_s"]
    return row


def main(argv=None):
    """CLI entry point: prints one table row per distribution, optionally writes JSON."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distributions", nargs="+", default=list(DISTRIBUTIONS),
                    choices=list(DISTRIBUTIONS), help="length distributions to run")
    ap.add_argument("--preset", choices=["full", "ci"], default="full",
                    help="ci: the uniform and sql distributions only")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    ap.add_argument("--json", default=None, help="write one row per distribution to this path")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    names = ["uniform", "sql"] if args.preset == "ci" else args.distributions
    cfg = bench_model_config()
    graphdef, params = nnx.split(init_model(cfg, seed=0))
    steps = make_steps(graphdef, LossConfig())
    print(f"actor update, {machine_note()}; model d=256 L=4 H=4 V=2048 fp32, xla attention")
    rows = [run_distribution(params, steps, n, cfg.vocab_size, args.repeats) for n in names]
    print(f"{'distribution':12s} | {'ideal':>6} | {'time x naive':>12} {'mem x naive':>11} | "
          f"{'x padded once':>13} {'x padded naive':>14}")
    for r in rows:
        print(f"{r['distribution']:12s} | {r['ideal_token_ratio']:6.2f} | "
              f"{r['time_ratio_vs_packed_naive']:12.2f} {r['memory_ratio_vs_packed_naive']:11.2f} | "
              f"{r['time_ratio_vs_padded_prompt_once']:13.2f} {r['time_ratio_vs_padded_naive']:14.2f}")
    write_json(args.json, {"machine": machine_note(), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
