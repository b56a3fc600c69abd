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

    python -m experiments.bench_rollout [--preset ci] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np

from zorro_jax.model.config import ModelConfig
from zorro_jax.model.transformer import init_model
from zorro_jax.sampling.sampler import SamplerConfig, generate

ROWS = ((512, 8, 64), (1024, 16, 128), (2048, 16, 128))
PRESETS = {"full": ROWS, "ci": ROWS[:1]}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    # Which (P, G, R) rows to run: "full" (all three) or "ci" (the first, under a minute).
    preset: str = "full"
    # Unique prompts per batch.
    batch: int = 1
    # Key/value heads (4 = multi-head attention; 2 halves both caches).
    kv_heads: int = 4
    # Timed runs per variant; the median is reported.
    repeats: int = 2
    attention_impl: str = "xla"
    json_path: str | None = None

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.batch < 1 or self.repeats < 1:
            raise ValueError("batch and repeats must be >= 1")
        if 4 % self.kv_heads:
            raise ValueError(f"kv_heads must divide the 4 query heads, got {self.kv_heads}")


def bench_model_config(kv_heads: int) -> ModelConfig:
    return ModelConfig(model_type="qwen3", vocab_size=2048, hidden_size=256, intermediate_size=1024,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=kv_heads,
                       head_dim=64, qk_norm=True, compute_dtype="float32")


def time_variant(model, prompts, g, r, mode, cfg: BenchConfig):
    sampler = SamplerConfig(max_new_tokens=r, temperature=1.0, ignore_eos=True,
                            attention_impl=cfg.attention_impl)
    key = jax.random.key(0)
    # Same compiled programs (the response buffer stays R), but a one-token generation.
    warm = dataclasses.replace(sampler, max_new_tokens=1, response_buckets=(r,))
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


def run(cfg: BenchConfig) -> list[dict]:
    model = init_model(bench_model_config(cfg.kv_heads), seed=0)
    rng = np.random.default_rng(0)
    results = []
    for p, g, r in PRESETS[cfg.preset]:
        prompts = rng.integers(0, model.config.vocab_size, (cfg.batch, p)).tolist()
        shared = time_variant(model, prompts, g, r, "shared", cfg)
        naive = time_variant(model, prompts, g, r, "naive", cfg)
        results.append({
            "P": p, "G": g, "R": r, "B": cfg.batch,
            "ideal_ratio": g * (p + r) / (p + g * r),
            "kv_bytes_shared": shared["kv_bytes"], "kv_bytes_naive": naive["kv_bytes"],
            "kv_ratio": naive["kv_bytes"] / shared["kv_bytes"],
            "tok_s_shared": float(shared["tokens_per_s"]), "tok_s_naive": float(naive["tokens_per_s"]),
            "s_shared": shared["seconds"], "s_naive": naive["seconds"],
            "prefill_s_shared": shared["prefill_seconds"], "prefill_s_naive": naive["prefill_seconds"],
            "speedup": naive["seconds"] / shared["seconds"],
            "decode_speedup": (naive["seconds"] - naive["prefill_seconds"])
            / (shared["seconds"] - shared["prefill_seconds"]),
        })
        print_row(results[-1], header=len(results) == 1)
    return results


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
    ap.add_argument("--batch", type=int, default=BenchConfig.batch)
    ap.add_argument("--kv-heads", type=int, default=BenchConfig.kv_heads)
    ap.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    ap.add_argument("--attention-impl", default=BenchConfig.attention_impl)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    cfg = BenchConfig(**vars(args))
    print(f"bench_rollout on {jax.default_backend()}: {bench_model_config(cfg.kv_heads)}")
    results = run(cfg)
    if cfg.json_path:
        with open(cfg.json_path, "w") as f:
            json.dump({"config": dataclasses.asdict(cfg), "rows": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
