"""Rollout throughput and KV-cache bytes: shared-prefix sampler vs naive replicated prompts.

Both variants run in one process on the same random-init model (Qwen3-style: 4 layers, d_model
256, 4 query heads and 4 KV heads of width 64, MLP 1024, vocab 2048, fp32) and the same prompts.
Every sample generates exactly R tokens (`ignore_eos`), so both do the same work per sample.
Timing covers prefill + decode + the copy of results to the host; compilation is excluded by a
warm-up call with max_new_tokens = 1 and the response buffer pinned to R, which runs the very
same programs (the token budget is a loop bound, not a shape) without a full generation.

The ideal ratio G(P+R)/(P+G·R) is the KV bytes a replicated cache holds per group over what a
shared-prefix cache holds; with P and R at their bucket sizes the measured KV-bytes ratio is
exactly that, and it bounds the decode-phase gain when attention dominates. The end-to-end
speedup can exceed it: the naive prefill processes G copies of each prompt. Throughput ratios are
what to read; absolute tokens/s depend on the machine.

`--distributions schema` runs text-to-SQL-shaped prompts instead of the fixed (P, G, R) rows:
D databases (`--schema-databases`) with a schema of lognormal length (median 1536, σ 0.3) and
k = 8 questions each (median 48, σ 0.4), G = 8 samples of R = 96 new tokens (the median of the
completion distribution: every sample generates exactly R, `ignore_eos`). Three variants on the
same B = D·k rows: naive (root ++ question replicated G times), two-level (the concatenated
prompts, each stored once) and three-level (a `PromptTree`: each schema once, each question once
on top of it, a schema's questions side by side in one cache row). The ideal KV ratios count
real (unpadded) tokens; the measured ones the buckets each cache is allocated in.

`--distributions sql` runs B = 4 text-to-SQL prompts with their schema inline (lognormal, median
768, σ 0.5), G = 8 samples of R = 96 tokens each, shared vs naive. `--model smollm2-135m` runs a
fetched pretrained model (`python -m experiments.fetch_model NAME`, its real weights and shape,
fp32) instead of the benchmark model.

    python -m experiments.bench_rollout [--preset ci] [--distributions fixed schema sql]
                                        [--schema-databases D] [--model NAME] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np

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
    bench_model_config,
    load_benchmark_model,
    lognormal_lengths,
)
from zorro_jax.checkpoints.pretrained import PRETRAINED
from zorro_jax.model.transformer import init_model
from zorro_jax.sampling.sampler import PromptTree, SamplerConfig, generate

ROWS = ((512, 8, 64), (1024, 16, 128), (2048, 16, 128))
PRESETS = {"full": ROWS, "ci": ROWS[:1]}
DISTRIBUTIONS = ("fixed", "schema", "sql")
# The schema rows (`experiments.common`, as bench_actor_update's "schema"): k questions per
# database, G samples per question, each generating the completions' median R new tokens.
SCHEMA_K, SCHEMA_G, SCHEMA_R = SCHEMA_QUESTIONS, SCHEMA_SAMPLES, int(COMPLETION_LENGTHS[0])


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    # Which (P, G, R) rows to run: "full" (all three) or "ci" (the first, under a minute).
    preset: str = "full"
    # "fixed": the (P, G, R) rows of the preset; "schema": databases with k questions each;
    # "sql": prompts with their schema inline.
    distributions: tuple[str, ...] = ("fixed",)
    # Databases D of the schema rows (B = D·k rows).
    schema_databases: int = 1
    # Unique prompts per batch.
    batch: int = 1
    # Key/value heads (4 = multi-head attention; 2 halves both caches).
    kv_heads: int = 4
    # Timed runs per variant; the median is reported.
    repeats: int = 2
    attention_impl: str = "xla"
    # A fetched pretrained model's name (e.g. "smollm2-135m") instead of the benchmark model.
    model: str = ""
    json_path: str | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.batch < 1 or self.repeats < 1 or self.schema_databases < 1:
            raise ValueError("batch, repeats and schema_databases must be >= 1")
        if not self.distributions or set(self.distributions) - set(DISTRIBUTIONS):
            raise ValueError(f"distributions must be among {DISTRIBUTIONS}, got {self.distributions!r}")
        if self.model and self.model not in PRETRAINED:
            raise ValueError(f"model must be one of {sorted(PRETRAINED)}, got {self.model!r}")
        if 4 % self.kv_heads:
            raise ValueError(f"kv_heads must divide the 4 query heads, got {self.kv_heads}")


def time_variant(model, prompts, g, r, mode, cfg: BenchConfig):
    """Seconds (median), prefill seconds, tokens/s and KV bytes of `generate` on `prompts` (a list
    or a PromptTree), prefill included."""
    # The response buffer is exactly R, so the one-token warm-up compiles the timed programs;
    # prompt levels are padded to multiples of 64 (the decode kernel's key block) rather than to
    # powers of two, so the KV bytes compare the layouts, not the bucket policy.
    sampler = SamplerConfig(max_new_tokens=r, temperature=1.0, ignore_eos=True,
                            attention_impl=cfg.attention_impl, response_buckets=(r,),
                            prompt_buckets=tuple(range(64, 16385, 64)))
    key = jax.random.key(0)
    warm = dataclasses.replace(sampler, max_new_tokens=1)
    generate(model, prompts, g, warm, key, mode=mode)
    # The one-token run is the prefill (its decode loop exits at once): it splits the total into
    # prefill and decode, which scale differently (naive prefill does G times the work).
    t0 = time.perf_counter()
    generate(model, prompts, g, warm, key, mode=mode)
    prefill_s = time.perf_counter() - t0
    times = []
    for i in range(cfg.repeats):
        t0 = time.perf_counter()
        out = generate(model, prompts, g, sampler, jax.random.fold_in(key, i), mode=mode)
        times.append(time.perf_counter() - t0)
    assert (out.lengths_BxG == r).all()
    seconds = statistics.median(times)
    return {"seconds": seconds, "prefill_seconds": prefill_s,
            "tokens_per_s": out.lengths_BxG.sum() / seconds, "kv_bytes": out.kv_cache_bytes}


def run(cfg: BenchConfig, model=None) -> list[dict]:
    """Every row of the chosen distributions, printed as it completes (on `model`, or the one
    `cfg` names)."""
    if model is None:
        model = (load_benchmark_model(cfg.model) if cfg.model
                 else init_model(bench_model_config(num_key_value_heads=cfg.kv_heads), seed=0))
    results = []
    if "fixed" in cfg.distributions:
        results += run_fixed(model, cfg)
    if "schema" in cfg.distributions:
        results.append(run_schema(model, cfg))
    if "sql" in cfg.distributions:
        results.append(run_sql(model, cfg))
    return results


def compare(shared: dict, naive: dict) -> dict:
    """The shared-vs-naive columns of a row from two `time_variant` results."""
    return {
        "kv_bytes_shared": shared["kv_bytes"], "kv_bytes_naive": naive["kv_bytes"],
        "kv_ratio": naive["kv_bytes"] / shared["kv_bytes"],
        "tok_s_shared": float(shared["tokens_per_s"]), "tok_s_naive": float(naive["tokens_per_s"]),
        "s_shared": shared["seconds"], "s_naive": naive["seconds"],
        "prefill_s_shared": shared["prefill_seconds"], "prefill_s_naive": naive["prefill_seconds"],
        "speedup": naive["seconds"] / shared["seconds"],
        "decode_speedup": (naive["seconds"] - naive["prefill_seconds"])
        / (shared["seconds"] - shared["prefill_seconds"]),
    }


def run_fixed(model, cfg: BenchConfig) -> list[dict]:
    """The preset's (P, G, R) rows: B random prompts of P tokens, shared vs naive."""
    rng = np.random.default_rng(0)
    results = []
    for p, g, r in PRESETS[cfg.preset]:
        prompts = rng.integers(0, model.config.vocab_size, (cfg.batch, p)).tolist()
        shared = time_variant(model, prompts, g, r, "shared", cfg)
        naive = time_variant(model, prompts, g, r, "naive", cfg)
        results.append({
            "P": p, "G": g, "R": r, "B": cfg.batch,
            "ideal_ratio": g * (p + r) / (p + g * r),
            **compare(shared, naive)})
        print_row(results[-1], header=len(results) == 1)
    return results


def schema_tree(rng, databases: int, vocab: int) -> PromptTree:
    """D random schemas with k random questions each, lengths from the lognormal specs."""

    lengths = lambda spec, size: lognormal_lengths(rng, spec, size)
    ids = lambda n: rng.integers(0, vocab, n).tolist()
    roots = [ids(n) for n in lengths(SCHEMA_LENGTHS, databases)]
    questions = lengths(QUESTION_LENGTHS, (databases, SCHEMA_K))
    return PromptTree(roots, [[ids(n) for n in qs] for qs in questions])


def run_schema(model, cfg: BenchConfig) -> dict:
    """Naive, two-level and three-level sampling of the same schema ++ question rows."""
    tree = schema_tree(np.random.default_rng(0), cfg.schema_databases, model.config.vocab_size)
    g, r = SCHEMA_G, SCHEMA_R
    flat = tree.prompts()
    runs = {"naive": time_variant(model, flat, g, r, "naive", cfg),
            "two_level": time_variant(model, flat, g, r, "shared", cfg),
            "three_level": time_variant(model, tree, g, r, "shared", cfg)}
    root_len = [len(x) for x in tree.roots]
    question_len = [len(q) for qs in tree.questions for q in qs]
    prompt_tokens = sum(map(len, flat))
    # KV entries at real lengths: replicated per sample, a prompt per row, each part once.
    ideal = {"naive": g * (prompt_tokens + len(flat) * r),
             "two_level": prompt_tokens + len(flat) * g * r,
             "three_level": sum(root_len) + sum(question_len) + len(flat) * g * r}
    row = {"distribution": "schema", "D": cfg.schema_databases, "k": SCHEMA_K, "G": g, "R": r,
           "B": len(flat), "root_lengths": root_len, "question_lengths": question_len}
    for name, out in runs.items():
        row |= {f"kv_bytes_{name}": out["kv_bytes"], f"tok_s_{name}": float(out["tokens_per_s"]),
                f"s_{name}": out["seconds"], f"prefill_s_{name}": out["prefill_seconds"]}
    row |= {
        "three_vs_two_level_ratio": row["tok_s_three_level"] / row["tok_s_two_level"],
        "three_vs_naive_ratio": row["tok_s_three_level"] / row["tok_s_naive"],
        "kv_bytes_ratio": row["kv_bytes_two_level"] / row["kv_bytes_three_level"],
        "ideal_kv_ratio": ideal["two_level"] / ideal["three_level"],
        "kv_bytes_ratio_vs_naive": row["kv_bytes_naive"] / row["kv_bytes_three_level"],
        "ideal_kv_ratio_vs_naive": ideal["naive"] / ideal["three_level"],
    }
    print_schema_row(row)
    return row


def run_sql(model, cfg: BenchConfig) -> dict:
    """Shared vs naive sampling of B prompts of the "sql" lengths (G samples of R tokens each)."""
    rng = np.random.default_rng(0)
    plen = lognormal_lengths(rng, SQL_PROMPT_LENGTHS, SQL_GROUPS)
    prompts = [rng.integers(3, model.config.vocab_size, int(n)).tolist() for n in plen]
    g, r = SQL_SAMPLES, int(SQL_COMPLETION_LENGTHS[0])
    shared = time_variant(model, prompts, g, r, "shared", cfg)
    naive = time_variant(model, prompts, g, r, "naive", cfg)
    p_sum, b = int(plen.sum()), len(prompts)
    row = {"distribution": "sql", "model": cfg.model or "benchmark", "B": b, "G": g, "R": r,
           "prompt_lengths": plen.tolist(),
           # KV entries at real lengths: each prompt once + every sample's suffix, over replicated.
           "ideal_ratio": g * (p_sum + b * r) / (p_sum + b * g * r),
           **compare(shared, naive)}
    print(f"sql rows ({row['model']}): B={b} prompts of {row['prompt_lengths']} tokens, G={g}, R={r}")
    print(f"tok/s shared {row['tok_s_shared']:.1f} vs naive {row['tok_s_naive']:.1f}: "
          f"{row['speedup']:.2f}x (decode alone {row['decode_speedup']:.2f}x); prefill s "
          f"{row['prefill_s_shared']:.2f} vs {row['prefill_s_naive']:.2f}; KV MiB "
          f"{row['kv_bytes_shared'] / 2**20:.1f} vs {row['kv_bytes_naive'] / 2**20:.1f} "
          f"({row['kv_ratio']:.2f}x, ideal {row['ideal_ratio']:.2f})", flush=True)
    return row


def print_schema_row(row):
    print(f"schema rows: D={row['D']} databases (schema lengths {row['root_lengths']}) x k={row['k']} "
          f"questions (mean {np.mean(row['question_lengths']):.0f} tokens), G={row['G']}, R={row['R']}")
    print(f"{'variant':>11} | {'KV MiB':>8} {'KV x 3-level':>12} | {'tok/s':>8} {'s':>7} "
          f"{'prefill s':>9} {'3-level speedup':>15}")
    mib = 2.0**20
    for name in ("naive", "two_level", "three_level"):
        print(f"{name:>11} | {row[f'kv_bytes_{name}'] / mib:>8.1f} "
              f"{row[f'kv_bytes_{name}'] / row['kv_bytes_three_level']:>12.2f} | "
              f"{row[f'tok_s_{name}']:>8.1f} {row[f's_{name}']:>7.2f} {row[f'prefill_s_{name}']:>9.3f} "
              f"{row[f's_{name}'] / row['s_three_level']:>14.2f}x", flush=True)
    print(f"three_vs_two_level_ratio {row['three_vs_two_level_ratio']:.2f} (tok/s) | kv_bytes_ratio "
          f"{row['kv_bytes_ratio']:.2f} (ideal {row['ideal_kv_ratio']:.2f}) | vs naive: tok/s "
          f"{row['three_vs_naive_ratio']:.2f}, KV {row['kv_bytes_ratio_vs_naive']:.2f} "
          f"(ideal {row['ideal_kv_ratio_vs_naive']:.2f})", flush=True)


def print_row(row, header):
    if header:
        print(f"{'P':>5} {'G':>3} {'R':>4} {'B':>2} | {'ideal':>6} {'KV MiB shared':>13} "
              f"{'KV MiB naive':>12} {'KV ratio':>8} | {'tok/s shared':>12} {'tok/s naive':>11} "
              f"{'speedup':>7} | {'prefill s shared':>16} {'prefill s naive':>15} {'decode speedup':>14}")
    mib = 2.0**20
    print(f"{row['P']:>5} {row['G']:>3} {row['R']:>4} {row['B']:>2} | {row['ideal_ratio']:>6.2f} "
          f"{row['kv_bytes_shared'] / mib:>13.1f} {row['kv_bytes_naive'] / mib:>12.1f} "
          f"{row['kv_ratio']:>8.2f} | {row['tok_s_shared']:>12.1f} {row['tok_s_naive']:>11.1f} "
          f"{row['speedup']:>6.2f}x | {row['prefill_s_shared']:>16.3f} {row['prefill_s_naive']:>15.3f} "
          f"{row['decode_speedup']:>13.2f}x", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--distributions", nargs="+", default=list(BenchConfig.distributions),
                    choices=DISTRIBUTIONS, help="fixed: the preset's (P, G, R) rows; schema: "
                    "databases with k questions each (naive, two-level, three-level); sql: "
                    "prompts with their schema inline (naive, shared)")
    ap.add_argument("--schema-databases", type=int, default=BenchConfig.schema_databases,
                    help="databases D of the schema rows")
    ap.add_argument("--batch", type=int, default=BenchConfig.batch)
    ap.add_argument("--kv-heads", type=int, default=BenchConfig.kv_heads)
    ap.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    ap.add_argument("--attention-impl", default=BenchConfig.attention_impl)
    ap.add_argument("--model", default="", choices=["", *sorted(PRETRAINED)],
                    help="a fetched pretrained model instead of the benchmark model")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    cfg = BenchConfig(**{**vars(args), "distributions": tuple(args.distributions)})
    try:
        model = load_benchmark_model(cfg.model) if cfg.model else None
    except FileNotFoundError as e:
        ap.error(str(e))
    print(f"bench_rollout on {jax.default_backend()}: "
          f"{cfg.model or bench_model_config(num_key_value_heads=cfg.kv_heads)}")
    results = run(cfg, model)
    if cfg.json_path:
        with open(cfg.json_path, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "rows": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
