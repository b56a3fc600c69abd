"""Benchmark: one actor update (forward + backward of the GRPO token loss) on ragged batches, four
layouts in one process (XLA attention on this CPU).

    python -m experiments.bench_actor_update [--distributions sql reasoning long-prompt uniform]
                                             [--preset ci] [--repeats 3] [--hidden-size 256]
                                             [--json PATH]

Variants, all on the same groups (B prompts × G completions drawn from a named length
distribution with a fixed seed):
- padded naive: `Dense` rows prompt ++ completion, right-padded to the longest sample;
- packed naive: depth-1 `PackedTree` (the prompt copied into every sample, rows packed without
  padding: the baseline stacks run as "remove padding" / varlen packing);
- packed prompt-once: depth-2 `PackedTree` (each prompt once, its G completions under it).
(The padded prompt-once layout these replaced was measured beside them before its removal; see
the README.) A variant that does not fit in memory is reported as out of memory.
Columns: median time per update, XLA temp bytes (`memory_analysis`, the largest micro-batch),
tokens each variant computes (rows × row length), the ideal token ratio = packed-naive real
tokens / packed prompt-once real tokens, the same ratio of visible attention pairs (lower:
sharing a prompt does not shrink its completions' attention to it), and the ratio of the model
FLOPs both need (position-wise layers per real token, attention per visible pair, LM head per
scored token): the speed-up an exact implementation reaches when every FLOP costs the same. It
lies between the pair and the token ratio, nearer the token ratio the wider the model
(`--hidden-size`). Ratios compare variants inside this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common import bench_model_of_width, flop_rates, machine_note, write_json
from zorro_jax.attention import XLA_TREE_TILES
from zorro_jax.layouts import group_tree, pack_groups_balanced, replicated_trees
from zorro_jax.model.forward import dense_logprobs, packed_logprobs
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
VARIANTS = ("padded_naive", "packed_naive", "packed_prompt_once")
# Each packed row holds at most this many tokens (raised to the largest tree when needed).
TOKEN_BUDGET = 8192


def make_groups(dist: LengthDist, vocab: int, seed: int = 0):
    """[(prompt ids, [completion ids] * G)] with the distribution's lengths (random tokens)."""
    plen, clen = dist.draw(seed)
    rng = np.random.default_rng(seed + 1)
    return [(rng.integers(3, vocab, int(p)).astype(np.int32),
             [rng.integers(3, vocab, int(c)).astype(np.int32) for c in cs])
            for p, cs in zip(plen, clen)]


def attention_pairs(groups) -> tuple[int, int]:
    """Visible (query, key) pairs of the tree rule: (packed naive, packed prompt-once). Sharing
    removes the prompt-prompt pairs of G-1 copies only; prompt-completion and completion pairs are
    the same in both, so attention's ratio is below the token ratio."""
    tri = lambda n: n * (n + 1) // 2
    naive = sum(tri(len(p) + len(c)) for p, cs in groups for c in cs)
    once = sum(tri(len(p)) + sum(len(c) * len(p) + tri(len(c)) for c in cs) for p, cs in groups)
    return naive, once


def flop_ratio(cfg, groups) -> float:
    """Model FLOPs of packed naive / packed prompt-once: real tokens, visible pairs and scored
    tokens priced by `flop_rates` (padding and masked block work excluded)."""
    per_token, per_pair, head = flop_rates(cfg)
    pairs_naive, pairs_once = attention_pairs(groups)
    scored = sum(len(c) for _, cs in groups for c in cs)
    tokens_naive = sum(len(p) + len(c) for p, cs in groups for c in cs)
    tokens_once = sum(len(p) + sum(len(c) for c in cs) for p, cs in groups)
    naive = per_token * tokens_naive + per_pair * pairs_naive + head * scored
    once = per_token * tokens_once + per_pair * pairs_once + head * scored
    return naive / once


def _loss(logp, mask, old, adv, cfg):
    return policy_loss(logp, old, adv, mask, loss_normaliser(mask, cfg), cfg)[0]


def make_steps(graphdef, cfg: LossConfig):
    """Jitted value-and-grad steps: (params, batch, old [B,G,R], adv [B,G]) -> (loss, grads), one
    per layout kind. The packed step serves both packed variants (the layout decides sharing)."""

    def packed(params, batch, old, adv):
        lp, _, mask = packed_logprobs(nnx.merge(graphdef, params), batch, impl="xla",
                                      with_entropy=False)
        return _loss(lp, mask, old, adv, cfg)

    def padded_dense(params, batch, old, adv):
        dense, tree = batch
        lp, _, _ = dense_logprobs(nnx.merge(graphdef, params), dense, impl="xla",
                                  with_entropy=False)
        return _loss(tree.from_dense_next_token(lp), tree.sample_mask(), old, adv, cfg)

    step = lambda f: jax.jit(jax.value_and_grad(f))
    return {"packed": step(packed), "padded_dense": step(padded_dense)}


def build_variants(groups, token_budget: int = TOKEN_BUDGET, one_row: bool = False):
    """variant -> (step kind, [(batch, micro-batch, computed tokens)] one per micro-batch, real
    tokens). The packed variants put every row in one micro-batch, or with `one_row` each row in
    a micro-batch of its own (gradients accumulated: the same update in less memory)."""
    g = len(groups[0][1])
    r = max(1, max(len(c) for _, cs in groups for c in cs))
    prompt_once = [group_tree(p, cs, b) for b, (p, cs) in enumerate(groups)]
    naive = [t for b, (p, cs) in enumerate(groups) for t in replicated_trees(p, cs, b)]
    out = {}
    for name, trees in (("packed_naive", naive), ("packed_prompt_once", prompt_once)):
        largest = max(sum(len(s) for s in t.segments) for t in trees)
        budget = max(token_budget, largest)
        total = sum(sum(len(s) for s in t.segments) for t in trees)
        rows = 1 if one_row else -(-total // budget)
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
    return out


def _targets(groups, seed=1):
    b, g = len(groups), len(groups[0][1])
    r = max(1, max(len(c) for _, cs in groups for c in cs))
    rng = np.random.default_rng(seed)
    return np.full((b, g, r), -7.0, np.float32), rng.normal(size=(b, g)).astype(np.float32)


def _measure(step, params, parts, old, adv, repeats):
    """Compile once per micro-batch shape, then time the whole update (all micro-batches)."""
    calls = []
    for batch, mb, _ in parts:
        # Group order inside a micro-batch is the packer's: map the host arrays through it.
        o, a = mb.take_groups(old), mb.take_groups(adv)
        args = (params, batch, jnp.asarray(o), jnp.asarray(a))
        calls.append((step.lower(*args).compile(), args))
    jax.block_until_ready([fn(*args) for fn, args in calls])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready([fn(*args) for fn, args in calls])
        times.append(time.perf_counter() - t0)
    return {"time_s": float(np.median(times)),
            "temp_bytes": max(int(fn.memory_analysis().temp_size_in_bytes) for fn, _ in calls)}


def run_distribution(params, steps, name: str, cfg, repeats: int, seed: int = 0):
    """Time and measure every variant on one distribution; returns the JSON row."""
    groups = make_groups(DISTRIBUTIONS[name], cfg.vocab_size, seed)
    old, adv = _targets(groups)
    row = {"distribution": name, "groups": len(groups), "samples": len(groups[0][1])}
    one_row = build_variants(groups, one_row=True)
    for variant, (kind, parts, real) in build_variants(groups).items():
        try:
            row[variant] = _measure(steps[kind], params, parts, old, adv, repeats)
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            if kind != "packed":
                row[variant] = {"out_of_memory": True, "real_tokens": int(real)}
                print(f"  {name:12s} {variant:19s} out of memory", flush=True)
                continue
            # Too big as one step: the same update over one-row micro-batches.
            parts = one_row[variant][1]
            row[variant] = _measure(steps[kind], params, parts, old, adv, repeats)
        row[variant].update(computed_tokens=sum(t for _, _, t in parts), real_tokens=int(real),
                            micro_batches=len(parts))
        print(f"  {name:12s} {variant:19s} {row[variant]['time_s']:8.3f} s  "
              f"{row[variant]['temp_bytes'] / 2**20:9.1f} MiB  "
              f"{row[variant]['computed_tokens']:7d} tokens", flush=True)
    naive, once = row["packed_naive"], row["packed_prompt_once"]
    row["ideal_token_ratio"] = naive["real_tokens"] / once["real_tokens"]
    pairs_naive, pairs_once = attention_pairs(groups)
    row["attention_pair_ratio"] = pairs_naive / pairs_once
    row["flop_ratio"] = flop_ratio(cfg, groups)
    row["time_ratio_vs_packed_naive"] = naive["time_s"] / once["time_s"]
    # Per-micro-batch memory is comparable only when both ran as one step.
    row["memory_ratio_vs_packed_naive"] = (naive["temp_bytes"] / once["temp_bytes"]
                                           if naive["micro_batches"] == once["micro_batches"] == 1
                                           else None)
    padded = row["padded_naive"]
    row["time_ratio_vs_padded_naive"] = (padded["time_s"] / once["time_s"]
                                         if "time_s" in padded else None)
    return row


def _fmt(x, missing="-"):
    return missing if x is None else f"{x:.2f}"


def main(argv=None):
    """CLI entry point: prints one table row per distribution, optionally writes JSON."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distributions", nargs="+", default=list(DISTRIBUTIONS),
                    choices=list(DISTRIBUTIONS), help="length distributions to run")
    ap.add_argument("--preset", choices=["full", "ci"], default="full",
                    help="ci: the uniform and sql distributions only")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    ap.add_argument("--hidden-size", type=int, default=256,
                    help="model width (4 layers, head_dim 64, intermediate 4x): wider models "
                         "spend a smaller share of their FLOPs in attention")
    ap.add_argument("--json", default=None, help="write one row per distribution to this path")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    names = ["uniform", "sql"] if args.preset == "ci" else args.distributions
    try:
        cfg = bench_model_of_width(args.hidden_size)
    except ValueError as e:
        ap.error(str(e))
    graphdef, params = nnx.split(init_model(cfg, seed=0))
    steps = make_steps(graphdef, LossConfig())
    print(f"actor update, {machine_note()}; model d={cfg.hidden_size} L={cfg.num_hidden_layers} "
          f"H={cfg.num_attention_heads} V={cfg.vocab_size} fp32, xla attention")
    rows = [run_distribution(params, steps, n, cfg, args.repeats) for n in names]
    print(f"{'distribution':12s} | {'ideal':>6} {'pairs':>6} {'flops':>6} | {'time x packed naive':>19} "
          f"{'mem x packed naive':>18} | {'time x padded naive':>19}")
    for r in rows:
        padded = r["time_ratio_vs_padded_naive"]
        print(f"{r['distribution']:12s} | {r['ideal_token_ratio']:6.2f} "
              f"{r['attention_pair_ratio']:6.2f} {r['flop_ratio']:6.2f} | "
              f"{r['time_ratio_vs_packed_naive']:19.2f} {_fmt(r['memory_ratio_vs_packed_naive']):>18} | "
              f"{_fmt(padded, 'out of memory'):>19}")
    write_json(args.json, {"machine": machine_note(), "hidden_size": cfg.hidden_size, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
