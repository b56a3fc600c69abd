"""Benchmark: one actor update (forward + backward of the GRPO token loss) on ragged batches, four
layouts in one process (XLA attention on this CPU).

    python -m experiments.bench_actor_update [--distributions sql reasoning long-prompt uniform schema]
                                             [--preset ci] [--repeats 3] [--hidden-size 256]
                                             [--model smollm2-135m] [--groups B] [--samples G]
                                             [--variants NAME ...] [--json PATH]

Variants, all on the same groups (B prompts × G completions drawn from a named length
distribution with a fixed seed):
- padded naive: `Dense` rows prompt ++ completion, right-padded to the longest sample;
- packed naive: depth-1 `PackedTree` (the prompt copied into every sample, rows packed without
  padding: the baseline stacks run as "remove padding" / varlen packing);
- packed prompt-once: depth-2 `PackedTree` (each prompt once, its G completions under it);
- packed three-level (`schema` only: prompts are a database schema ++ a question): depth 3, the
  schema once for all k questions of its database, each question once for its G completions.
(The padded prompt-once layout these replaced was measured beside them before its removal; see
the README.) `--model smollm2-135m` runs the fetched pretrained model (its real weights and shape:
30 layers, d 576, vocab 49,152) instead of the small benchmark model; `--groups` / `--samples` then
shrink a distribution's B / G so its steps fit this machine's RAM (30 layers of activations: one
sql group of 8 replicated samples needs ~25 GiB of XLA temp buffers). A variant whose step needs more than 75% of the machine's RAM in XLA temp buffers (or that XLA
refuses) runs as one-row micro-batches (packed) or is reported as out of memory (padded).
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
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common import (
    COMPLETION_LENGTHS,
    QUESTION_LENGTHS,
    SCHEMA_LENGTHS,
    SCHEMA_QUESTIONS,
    SCHEMA_SAMPLES,
    SQL_COMPLETION_LENGTHS,
    SQL_GROUPS,
    SQL_PROMPT_LENGTHS,
    SQL_SAMPLES,
    bench_model_of_width,
    flop_rates,
    load_benchmark_model,
    lognormal_lengths,
    machine_note,
    write_json,
)
from zorro_jax.attention import XLA_TREE_TILES
from zorro_jax.checkpoints.pretrained import PRETRAINED
from zorro_jax.layouts import pack_groups_balanced
from zorro_jax.model.forward import dense_logprobs, packed_logprobs
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.batches import group_trees
from zorro_jax.rl.losses import LossConfig, loss_normaliser, policy_loss


@dataclasses.dataclass(frozen=True)
class LengthDist:
    """B prompts × G completions; lengths lognormal(median, sigma) clipped to [lo, hi]. With a
    `schema` spec, prompts are a database schema ++ a question: `groups` databases with
    `questions` questions each (B = groups · questions), `prompt` then draws the question."""

    groups: int
    samples: int
    prompt: tuple[float, float, int, int]  # median, sigma, lo, hi
    completion: tuple[float, float, int, int]
    schema: tuple[float, float, int, int] | None = None
    questions: int = 1

    def draw(self, seed: int = 0):
        """(schema lengths [D] or None, prompt lengths [B], completion lengths [B, G])."""
        rng = np.random.default_rng(seed)
        lognormal = lambda spec, size: lognormal_lengths(rng, spec, size)
        b = self.groups * self.questions
        schema = None if self.schema is None else lognormal(self.schema, self.groups)
        return schema, lognormal(self.prompt, b), lognormal(self.completion, (b, self.samples))


DISTRIBUTIONS = {
    "uniform": LengthDist(2, 8, (1024, 0.0, 1024, 1024), (128, 0.0, 128, 128)),
    "sql": LengthDist(SQL_GROUPS, SQL_SAMPLES, SQL_PROMPT_LENGTHS, SQL_COMPLETION_LENGTHS),
    "reasoning": LengthDist(2, 8, (512, 0.5, 128, 3072), (384, 0.8, 16, 2048)),
    "long-prompt": LengthDist(2, 8, (3072, 0.2, 1024, 6144), (192, 0.8, 8, 1024)),
    # One database: schema ~1536 tokens, k = 8 questions of ~48, G = 8 completions of ~96.
    "schema": LengthDist(1, SCHEMA_SAMPLES, QUESTION_LENGTHS, COMPLETION_LENGTHS,
                         schema=SCHEMA_LENGTHS, questions=SCHEMA_QUESTIONS),
}
VARIANTS = ("padded_naive", "packed_naive", "packed_prompt_once", "packed_three_level")
# Each packed row holds at most this many tokens (raised to the largest tree when needed).
TOKEN_BUDGET = 8192


def make_groups(dist: LengthDist, vocab: int, seed: int = 0):
    """([(prompt ids, [completion ids] * G)], shared lengths [B] or None) with the distribution's
    lengths (random tokens); with a schema, prompt b = schema of database b // questions ++ its
    question, and shared length = that schema's length."""
    slen, plen, clen = dist.draw(seed)
    rng = np.random.default_rng(seed + 1)
    tokens = lambda n: rng.integers(3, vocab, int(n)).astype(np.int32)
    schemas = [tokens(n) for n in slen] if slen is not None else None
    groups = []
    for b, (p, cs) in enumerate(zip(plen, clen)):
        prompt = tokens(p) if schemas is None else np.concatenate([schemas[b // dist.questions], tokens(p)])
        groups.append((prompt, [tokens(c) for c in cs]))
    shared = None if schemas is None else [len(schemas[b // dist.questions]) for b in range(len(groups))]
    return groups, shared


def tree_counts(trees) -> tuple[int, int]:
    """(real tokens, visible (query, key) pairs of the tree rule) of packing units: a segment of n
    tokens under ancestors of A tokens sees n·A + n(n+1)/2 pairs. Sharing a prefix removes the
    pairs of its copies only; what its descendants see of it is the same, so attention's ratio is
    below the token ratio."""
    tokens = pairs = 0
    for t in trees:
        above = []  # tokens of each segment's ancestors (parents come first: depth-first order)
        for seg, parent in zip(t.segments, t.parents):
            n = len(seg)
            a = 0 if parent < 0 else above[parent] + len(t.segments[parent])
            above.append(a)
            tokens += n
            pairs += n * a + n * (n + 1) // 2
    return tokens, pairs


def model_flops(cfg, trees, scored: int) -> float:
    """Forward FLOPs an exact implementation needs for `trees`: real tokens, visible pairs and
    scored tokens priced by `flop_rates` (padding and masked block work excluded)."""
    per_token, per_pair, head = flop_rates(cfg)
    tokens, pairs = tree_counts(trees)
    return per_token * tokens + per_pair * pairs + head * scored


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


def variant_trees(groups, shared_lens=None) -> dict:
    """variant -> packing units: packed naive (depth 1), packed prompt-once (depth 2) and, when
    the prompts share schemas, packed three-level (schema → questions → completions)."""
    out = {"packed_naive": group_trees(groups, "naive"),
           "packed_prompt_once": group_trees(groups, "prompt_once")}
    if shared_lens is not None:
        out["packed_three_level"] = group_trees(groups, "prompt_once", shared_lens)
    return out


def build_variants(groups, shared_lens=None, token_budget: int = TOKEN_BUDGET, one_row: bool = False):
    """variant -> (step kind, [(batch, micro-batch, computed tokens)] one per micro-batch, trees).
    The packed variants put every row in one micro-batch, or with `one_row` each row in a
    micro-batch of its own (gradients accumulated: the same update in less memory)."""
    r = max(1, max(len(c) for _, cs in groups for c in cs))
    out = {}
    for name, trees in variant_trees(groups, shared_lens).items():
        largest = max(sum(len(s) for s in t.segments) for t in trees)
        budget = max(token_budget, largest)
        total = tree_counts(trees)[0]
        rows = 1 if one_row else -(-total // budget)
        mbs = pack_groups_balanced(trees, token_budget=budget, rows_per_batch=rows, loss_width=r,
                                   tiles=XLA_TREE_TILES)
        out[name] = ("packed", [(m.packed, m, int(np.asarray(m.packed.positions_NxT).size))
                                for m in mbs], trees)
    prompt_once = out["packed_prompt_once"][2]
    whole = pack_groups_balanced(prompt_once, token_budget=max(
        token_budget, max(sum(len(s) for s in t.segments) for t in prompt_once)),
        rows_per_batch=len(prompt_once), loss_width=r, tiles=XLA_TREE_TILES)[0]
    dense = whole.packed.to_dense()
    out["padded_naive"] = ("padded_dense", [((dense, whole.packed), whole,
                                             int(dense.tokens_NxT.size))], out["packed_naive"][2])
    return out


def _targets(groups, seed=1):
    b, g = len(groups), len(groups[0][1])
    r = max(1, max(len(c) for _, cs in groups for c in cs))
    rng = np.random.default_rng(seed)
    return np.full((b, g, r), -7.0, np.float32), rng.normal(size=(b, g)).astype(np.float32)


class TooLarge(Exception):
    """A compiled step whose XLA temp buffers exceed the share of RAM a variant may use."""


def memory_limit_bytes(fraction: float = 0.75) -> int:
    """The temp-buffer bytes one step may need: a fraction of this machine's RAM (the host
    backend's memory is the RAM; a larger step would be killed by the OS, not refused by XLA)."""
    return int(fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _measure(step, params, parts, old, adv, repeats):
    """Compile once per micro-batch shape, then time the whole update (all micro-batches)."""
    calls = []
    for batch, mb, _ in parts:
        # Group order inside a micro-batch is the packer's: map the host arrays through it.
        o, a = mb.take_groups(old), mb.take_groups(adv)
        args = (params, batch, jnp.asarray(o), jnp.asarray(a))
        compiled = step.lower(*args).compile()
        need = int(compiled.memory_analysis().temp_size_in_bytes)
        if need > memory_limit_bytes():
            raise TooLarge(f"{need / 2**30:.1f} GiB of temp buffers")
        calls.append((compiled, args))
    jax.block_until_ready([fn(*args) for fn, args in calls])
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready([fn(*args) for fn, args in calls])
        times.append(time.perf_counter() - t0)
    return {"time_s": float(np.median(times)),
            "temp_bytes": max(int(fn.memory_analysis().temp_size_in_bytes) for fn, _ in calls)}


def run_distribution(params, steps, name: str, cfg, repeats: int, seed: int = 0, groups_override: int = 0,
                     samples_override: int = 0, variants: tuple[str, ...] = ()):
    """Time and measure every variant (or those named in `variants`) on one distribution (with
    `groups_override` prompts (databases for `schema`) and `samples_override` completions each
    instead of its own B and G); returns the JSON row."""
    dist = DISTRIBUTIONS[name]
    if groups_override:
        dist = dataclasses.replace(dist, groups=groups_override)
    if samples_override:
        dist = dataclasses.replace(dist, samples=samples_override)
    groups, shared = make_groups(dist, cfg.vocab_size, seed)
    old, adv = _targets(groups)
    row = {"distribution": name, "groups": len(groups), "samples": len(groups[0][1])}
    one_row = build_variants(groups, shared, one_row=True)
    scored = sum(len(c) for _, cs in groups for c in cs)
    for variant, (kind, parts, trees) in build_variants(groups, shared).items():
        if variants and variant not in variants:
            continue
        real, pairs = tree_counts(trees)
        try:
            row[variant] = _measure(steps[kind], params, parts, old, adv, repeats)
        except (jax.errors.JaxRuntimeError, TooLarge) as e:
            if isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" not in str(e):
                raise
            if kind != "packed":
                row[variant] = {"out_of_memory": True, "real_tokens": real}
                print(f"  {name:12s} {variant:19s} out of memory", flush=True)
                continue
            # Too big as one step: the same update over one-row micro-batches.
            parts = one_row[variant][1]
            row[variant] = _measure(steps[kind], params, parts, old, adv, repeats)
        row[variant].update(computed_tokens=sum(t for _, _, t in parts), real_tokens=real,
                            attention_pairs=pairs, model_flops=model_flops(cfg, trees, scored),
                            micro_batches=len(parts))
        print(f"  {name:12s} {variant:19s} {row[variant]['time_s']:8.3f} s  "
              f"{row[variant]['temp_bytes'] / 2**20:9.1f} MiB  "
              f"{row[variant]['computed_tokens']:7d} tokens", flush=True)

    def ratios(base, new, prefix=""):
        row[prefix + "ideal_token_ratio"] = base["real_tokens"] / new["real_tokens"]
        row[prefix + "attention_pair_ratio"] = base["attention_pairs"] / new["attention_pairs"]
        row[prefix + "flop_ratio"] = base["model_flops"] / new["model_flops"]
        # Per-micro-batch memory is comparable only when both ran as one step.
        comparable = base["micro_batches"] == new["micro_batches"] == 1
        return base["time_s"] / new["time_s"], (base["temp_bytes"] / new["temp_bytes"]
                                                if comparable else None)

    once = row.get("packed_prompt_once")
    if once and "packed_naive" in row:
        row["time_ratio_vs_packed_naive"], row["memory_ratio_vs_packed_naive"] = ratios(row["packed_naive"], once)
    if once and "padded_naive" in row:
        padded = row["padded_naive"]
        row["time_ratio_vs_padded_naive"] = (padded["time_s"] / once["time_s"]
                                             if "time_s" in padded else None)
    if once and "packed_three_level" in row:
        # Three-level sharing against two-level (prompt-once): the multi-level comparison.
        row["three_vs_two_level_ratio"], row["three_vs_two_level_memory_ratio"] = ratios(
            once, row["packed_three_level"], prefix="three_vs_two_level_")
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
    ap.add_argument("--model", default="", choices=["", *sorted(PRETRAINED)],
                    help="a fetched pretrained model (python -m experiments.fetch_model NAME) instead "
                         "of the benchmark model; --hidden-size is then ignored")
    ap.add_argument("--groups", type=int, default=0,
                    help="prompts per distribution (B; databases for schema); 0 = the distribution's own")
    ap.add_argument("--samples", type=int, default=0,
                    help="completions per prompt (G); 0 = the distribution's own")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="layouts to run (packed_three_level only where prompts share a schema); e.g. "
                         "packed_prompt_once packed_three_level for the multi-level comparison alone")
    ap.add_argument("--json", default=None, help="write one row per distribution to this path")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.groups < 0 or args.samples < 0:
        ap.error("--repeats must be at least 1, --groups and --samples at least 0")
    if "packed_prompt_once" not in args.variants:
        ap.error("--variants must include packed_prompt_once (every ratio is taken against it)")
    names = ["uniform", "sql"] if args.preset == "ci" else args.distributions
    if args.model:
        try:
            model = load_benchmark_model(args.model)
        except FileNotFoundError as e:
            ap.error(str(e))
    else:
        try:
            model = init_model(bench_model_of_width(args.hidden_size), seed=0)
        except ValueError as e:
            ap.error(str(e))
    cfg = model.config
    graphdef, params = nnx.split(model)
    steps = make_steps(graphdef, LossConfig())
    print(f"actor update, {machine_note()}; model {args.model or 'benchmark'} d={cfg.hidden_size} "
          f"L={cfg.num_hidden_layers} H={cfg.num_attention_heads} V={cfg.vocab_size} fp32, xla attention")
    rows = [run_distribution(params, steps, n, cfg, args.repeats, groups_override=args.groups,
                             samples_override=args.samples, variants=tuple(args.variants)) for n in names]
    print(f"{'distribution':12s} | {'ideal':>6} {'pairs':>6} {'flops':>6} | {'time x packed naive':>19} "
          f"{'mem x packed naive':>18} | {'time x padded naive':>19}")
    for r in rows:
        if "time_ratio_vs_packed_naive" not in r or "time_ratio_vs_padded_naive" not in r:
            continue
        padded = r["time_ratio_vs_padded_naive"]
        print(f"{r['distribution']:12s} | {r['ideal_token_ratio']:6.2f} "
              f"{r['attention_pair_ratio']:6.2f} {r['flop_ratio']:6.2f} | "
              f"{r['time_ratio_vs_packed_naive']:19.2f} {_fmt(r['memory_ratio_vs_packed_naive']):>18} | "
              f"{_fmt(padded, 'out of memory'):>19}")
    for r in rows:
        if "three_vs_two_level_ratio" in r:
            print(f"{r['distribution']:12s} three-level vs two-level: ideal "
                  f"{r['three_vs_two_level_ideal_token_ratio']:.2f}, pairs "
                  f"{r['three_vs_two_level_attention_pair_ratio']:.2f}, flops "
                  f"{r['three_vs_two_level_flop_ratio']:.2f}, time {r['three_vs_two_level_ratio']:.2f}, "
                  f"memory {_fmt(r['three_vs_two_level_memory_ratio'])}")
    write_json(args.json, {"machine": machine_note(), "hidden_size": cfg.hidden_size, "model": args.model or None,
                           "layers": cfg.num_hidden_layers, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
