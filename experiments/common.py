"""Helpers shared by the benchmark entry points: the benchmark model, timing, JSON output."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from zorro_jax.model.config import ModelConfig


def bench_model_config(**overrides) -> ModelConfig:
    """The benchmarks' small model: d_model 256, 4 layers, 4 heads, vocab 2048, fp32 (Qwen3-style)."""
    kw = dict(model_type="qwen3", vocab_size=2048, hidden_size=256, intermediate_size=1024,
              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, head_dim=64,
              qk_norm=True, compute_dtype="float32")
    kw.update(overrides)
    return ModelConfig(**kw)


# The text-to-SQL "schema" distribution of the rollout and actor-update benchmarks: lognormal
# (median, sigma, lo, hi) lengths of a database schema, of each of its SCHEMA_QUESTIONS questions
# and of each of a question's SCHEMA_SAMPLES completions.
SCHEMA_LENGTHS = (1536, 0.3, 256, 6144)
QUESTION_LENGTHS = (48, 0.4, 8, 256)
COMPLETION_LENGTHS = (96, 0.6, 8, 512)
SCHEMA_QUESTIONS, SCHEMA_SAMPLES = 8, 8
# The "sql" distribution (text-to-SQL prompts with their schema inline, one question each):
# SQL_GROUPS prompts of lognormal length, SQL_SAMPLES completions each.
SQL_PROMPT_LENGTHS = (768, 0.5, 128, 3072)
SQL_COMPLETION_LENGTHS = COMPLETION_LENGTHS
SQL_GROUPS, SQL_SAMPLES = 4, 8


def lognormal_lengths(rng, spec, size):
    """Integer lengths of shape `size` from a (median, sigma, lo, hi) spec (sigma 0: the median)."""
    median, sigma, lo, hi = spec
    x = np.exp(rng.normal(np.log(median), sigma, size)) if sigma else np.full(size, median)
    return np.clip(np.round(x), lo, hi).astype(np.int64)


def load_benchmark_model(name: str):
    """A fetched pretrained model (`python -m experiments.fetch_model NAME`) in fp32;
    FileNotFoundError saying how to fetch it when it has not been."""
    from zorro_jax.checkpoints.hf import load_hf_model
    from zorro_jax.checkpoints.pretrained import default_folder, is_fetched

    folder = default_folder(name)
    if not is_fetched(folder):
        raise FileNotFoundError(f"no converted model in {folder}: run `python -m experiments.fetch_model "
                                f"{name}` first")
    return load_hf_model(folder, compute_dtype="float32")


def bench_model_of_width(hidden_size: int, layers: int = 4) -> ModelConfig:
    """The benchmark model at another width: head_dim 64, hidden_size // 64 heads, intermediate 4×.
    Wider models spend a smaller share of their FLOPs in attention."""
    if hidden_size % 64 or hidden_size < 64 or layers < 1:
        raise ValueError(f"hidden size {hidden_size} must be a positive multiple of 64, layers >= 1")
    heads = hidden_size // 64
    return bench_model_config(hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                              num_hidden_layers=layers, num_attention_heads=heads,
                              num_key_value_heads=heads)


def flop_rates(cfg: ModelConfig) -> tuple[float, float, float]:
    """Forward FLOPs (position-wise layers per token, attention per visible (query, key) pair —
    QK^T and PV, 4·H·D a layer —, LM head per scored token) of the model. Backward ≈ 2× forward
    for all three, so ratios of forward FLOPs are ratios of training FLOPs too."""
    e, h, k, d, f, v, n = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                           cfg.head_dim, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers)
    per_token = n * (2 * e * (h + 2 * k) * d + 2 * h * d * e + 6 * e * f)
    return float(per_token), float(4 * n * h * d), float(2 * e * v)


def median_time(fn, *args, repeats: int = 3) -> float:
    """Median wall time of fn(*args) (blocked on its outputs) over `repeats` runs after a warm-up."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def temp_bytes(jitted, *args) -> int:
    """XLA's deterministic temp-buffer figure for the compiled program."""
    return int(jitted.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def machine_note() -> str:
    import os
    import platform

    return f"{platform.machine()} CPU, {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()})"


def write_json(path: str | None, payload: dict):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")
