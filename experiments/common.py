"""Helpers shared by the benchmark entry points: the benchmark model, timing, JSON output."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax

from zorro_jax.model.config import ModelConfig


def bench_model_config(**overrides) -> ModelConfig:
    """The benchmarks' small model: d_model 256, 4 layers, 4 heads, vocab 2048, fp32 (Qwen3-style)."""
    kw = dict(model_type="qwen3", vocab_size=2048, hidden_size=256, intermediate_size=1024,
              num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, head_dim=64,
              qk_norm=True, compute_dtype="float32")
    kw.update(overrides)
    return ModelConfig(**kw)


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
