"""On-device check for a GPU day: kernel numerics, kernel timings and benchmark ratios in one run.

    python -m experiments.device_check [--json runs/device_check.json] [--budget-s 270]
                                       [--compile-cache DIR]
    python -m experiments.device_check --cpu-smoke     # interpret mode, tiny shapes, on CPU

Sections, each guarded so that a failure is recorded (with its traceback) and the run goes on:
environment; numerics of every Pallas kernel against its reference (fp32 and bf16, outputs and
gradients); tree-attention and decode-kernel timings at a realistic shape against the XLA paths;
the actor-update (packed prompt-once vs packed naive), rollout and speculative-sampling benchmark
ratios at one GPU-sized shape. Timing work is skipped once the time budget is spent. Writes a
JSON report and prints a summary table last; exits 1 if a numerics check failed, 2 when there is
no GPU and no --cpu-smoke.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# (dtype, quantity kind) -> (metric, bound); metric "rel" = max|err| / max|ref|.
TOLERANCES = {
    # Interpret mode computes the kernels' dots in fp32: the project's fp32 bound.
    ("float32", "output"): ("rel", 1e-5),
    ("float32", "grad"): ("rel", 1e-5),
    # Compiled on a GPU, fp32 kernel dots are TF32 by design (lse_merge.KERNEL_DOT_PRECISION:
    # IEEE fp32 dots spill at the kernels' tiles), a 10-bit mantissa: ~1e-3 relative.
    ("float32/tf32", "output"): ("rel", 2e-3),
    ("float32/tf32", "grad"): ("rel", 2e-3),
    ("bfloat16", "output"): ("abs", 2e-2),
    # Gradients of K/V sum over many queries, so their scale grows with the shape: relative.
    ("bfloat16", "grad"): ("rel", 2e-2),
}
DTYPES = (jnp.float32, jnp.bfloat16)
PRECISION_NOTE = (
    "references run under jax.default_matmul_precision('highest') (IEEE fp32 dots); kernel dots "
    "state their own precision (lse_merge.KERNEL_DOT_PRECISION): fp32 in interpret mode (bound "
    "1e-5), TF32 for fp32 inputs on a GPU (bound 2e-3 relative); bf16 kernels at default precision"
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every shape and knob of one run: the GPU plan or the CPU smoke plan."""

    interpret: bool
    repeats: int
    inner: int  # calls per timing sample for sub-millisecond kernels (decode)
    # Numerics: tree attention on random packed trees (trees, G, max prompt P, max completion R,
    # D) with token tiles (None: each dtype's `default_token_blocks`); decode (B, G, P, S, K, D)
    # and its block sizes; the (H/K, K) head layouts of both.
    tree_shape: tuple
    tree_tiles: tuple | None
    decode_shape: tuple
    decode_blocks: dict
    head_layouts: tuple
    # Timings: tree attention on N rows of one tree (P-token prompt, G completions of R tokens)
    # (N, P, G, R, H, K, D); Pallas token tiles (None: the default), launch settings (`BlockSizes`
    # overrides, None: defaults; run with the first tiles, other tiles at defaults), XLA tiles;
    # decode (B, P, G, K, H, D, S).
    tree_timing_shape: tuple
    tree_timing_tiles: tuple
    tree_timing_launch: tuple
    xla_tiles: tuple
    decode_timing_shape: tuple
    timing_dtype: str
    # Benchmarks: `bench_model_config` and `draft_config` overrides; actor-update groups
    # (lognormal lengths (median, sigma, lo, hi) as in bench_actor_update) and row token budget;
    # rollout (P, G, R), speculative (B, P, G, R).
    model: dict
    draft: dict
    actor: dict
    rollout_shape: tuple
    spec_shape: tuple


GPU_PLAN = Plan(
    interpret=False, repeats=3, inner=20, tree_shape=(6, 4, 300, 100, 128), tree_tiles=None,
    decode_shape=(3, 4, 300, 40, 2, 128), decode_blocks=dict(),
    head_layouts=((1, 2), (4, 2), (7, 1)),
    tree_timing_shape=(8, 4096, 16, 1024, 32, 8, 128), tree_timing_tiles=(None, (32, 64)),
    tree_timing_launch=(None, dict(num_warps=8, num_stages=2, num_warps_dq=8, num_stages_dq=2),
                        dict(num_stages=4, num_stages_dq=4, num_warps_dkv=4, num_stages_dkv=3)),
    xla_tiles=(128, 64), decode_timing_shape=(8, 4096, 16, 8, 32, 128, 128),
    timing_dtype="bfloat16",
    model=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
               num_attention_heads=8, num_key_value_heads=2, head_dim=128,
               compute_dtype="bfloat16"),
    draft=dict(hidden_size=256, num_layers=2),
    # bench_actor_update's "sql" lengths, twice its groups.
    actor=dict(groups=8, samples=8, prompt=(768, 0.5, 128, 3072), completion=(96, 0.6, 8, 512),
               token_budget=8192),
    rollout_shape=(2048, 16, 128), spec_shape=(4, 512, 8, 128),
)
SMOKE_PLAN = Plan(
    interpret=True, repeats=1, inner=1, tree_shape=(3, 3, 20, 9, 16), tree_tiles=(16, 16),
    decode_shape=(3, 3, 37, 9, 2, 16), decode_blocks=dict(block_k=16, num_splits=3),
    # Interpret mode compiles slowly: one head layout (H/K=7, the odd one) keeps the smoke short.
    head_layouts=((7, 1),),
    tree_timing_shape=(1, 64, 2, 32, 4, 2, 16), tree_timing_tiles=(None,),
    tree_timing_launch=(None,), xla_tiles=(128, 64),
    decode_timing_shape=(2, 64, 2, 2, 4, 16, 16), timing_dtype="float32",
    model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, head_dim=32, vocab_size=256),
    draft=dict(hidden_size=32, num_layers=1),
    actor=dict(groups=2, samples=4, prompt=(24, 0.5, 8, 48), completion=(8, 0.6, 1, 16),
               token_budget=128),
    rollout_shape=(32, 4, 8), spec_shape=(1, 16, 2, 8),
)


@dataclasses.dataclass
class Budget:
    """Wall-clock budget: timing work stops starting once it is spent."""

    seconds: float
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.elapsed() > self.seconds


@contextlib.contextmanager
def recorded(row: dict, full_traceback: bool = False):
    """Store an exception raised inside in row["error"] instead of raising it: one failing item
    is data, and the run goes on."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - every failure is reported, none stops the run
        row["error"] = (traceback.format_exc() if full_traceback
                        else f"{type(err).__name__}: {err}"[:500])


def matmul_precision(name: str | None):
    """Context setting the default matmul precision (a no-op for None)."""
    return jax.default_matmul_precision(name) if name else contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class NumericsCase:
    """One kernel call to compare with its reference: fn(*float_args, *int_args) -> a tuple of
    outputs."""

    kernel: str
    name: str
    kernel_fn: Callable
    reference_fn: Callable
    float_args: tuple
    int_args: tuple
    output_names: tuple
    # Names of the gradients w.r.t. float_args; empty = forward only (e.g. decode kernels).
    grad_names: tuple = ()
    # The kernel dtypes this case runs in (a case whose tiles depend on the dtype names one).
    dtypes: tuple = DTYPES


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _ragged(rng, low, high, shape):
    """Random int32 lengths in [low, high], with the first at high and the last at low."""
    lengths = rng.integers(low, high + 1, shape)
    lengths.flat[0], lengths.flat[-1] = high, low
    return jnp.asarray(lengths, jnp.int32)


def random_tree_rows(rng, shape, multiple: int) -> np.ndarray:
    """subtree_end [N, T] of random trees (`zorro_jax.layouts`), depth 1 (G sequences prompt ++
    completion), 2 (prompt, G completions) and 3 (a shared root, two questions, G completions
    each) in turn, packed in order into rows that hold the two largest (T a multiple of
    `multiple`, rows ending in padding); prompts in [1, P] (the first P, the last 1),
    completions in [0, R] (one empty and one of R per group)."""
    from zorro_jax.layouts import group_tree, pack_trees, replicated_trees, shared_root_tree

    n_trees, g, p, r, _ = shape

    def ids(n):
        return rng.integers(3, 100, int(n)).astype(np.int32)

    def completions():
        lengths = rng.integers(0, r + 1, g)
        lengths[:2] = (0, r)[:g]
        return [ids(n) for n in lengths]

    trees, b = [], 0
    for i, plen in enumerate(np.asarray(_ragged(rng, 1, p, (n_trees,)))):
        if i % 3 == 0:
            trees += replicated_trees(ids(plen), completions(), b)
        elif i % 3 == 1:
            trees.append(group_tree(ids(plen), completions(), b))
        else:
            questions = [(ids(rng.integers(1, r + 1)), completions()) for _ in range(2)]
            trees.append(shared_root_tree(ids(plen), questions, b))
            b += 1
        b += 1
    big = sum(sorted(sum(map(len, tree.segments)) for tree in trees)[-2:])
    packed = pack_trees(trees, row_tokens=-(-big // multiple) * multiple, tiles=(multiple,) * 2)
    return np.asarray(packed.subtree_end_NxT)


def tree_attention_cases(plan: Plan) -> list[NumericsCase]:
    """Fresh random packed trees (`random_tree_rows`) per head layout, checked with each dtype's
    tiles (`plan.tree_tiles` or the kernel's defaults)."""
    from pallas_kernels import tree_attention as ta
    from pallas_kernels import tree_attention_pallas as tap
    from pallas_kernels.tree_blocks import build_tree_blocks

    def kernel(q, k, v, end, blocks):
        return (tap.tree_attention(q, k, v, end, blocks, interpret=plan.interpret),)

    def reference(q, k, v, end, blocks):
        return (ta.tree_attention_reference(q, k, v, end),)

    d, cases = plan.tree_shape[-1], []
    for seed, (ratio, kh) in enumerate(plan.head_layouts):
        h, rng = ratio * kh, np.random.default_rng(seed)
        tiles = {dt: plan.tree_tiles or tap.default_token_blocks(ratio, d, dt) for dt in DTYPES}
        end = random_tree_rows(rng, plan.tree_shape, max(max(t) for t in tiles.values()))
        n, t = end.shape
        floats = tuple(_normal(rng, (n, t, heads, d)) for heads in (h, kh, kh))
        cases += [NumericsCase(
            "tree_attention", f"H/K={ratio} H={h} N={n} T={t} D={d} {bq}x{bk}", kernel,
            reference, floats, (jnp.asarray(end), build_tree_blocks(end, bq, bk)), ("o",),
            ("dq", "dk", "dv"), dtypes=(dtype,)) for dtype, (bq, bk) in tiles.items()]
    return cases


def _decode_order(fn, num_levels):
    """(q, k_0, v_0, .., k_s, v_s, len_0, .., q_start) -> (fn in its own argument order,): the
    floats first (cast per dtype), then the integer lengths."""

    def call(q, *rest):
        floats, ints = rest[: 2 * num_levels + 2], rest[2 * num_levels + 2:]
        levels = tuple((floats[2 * i], floats[2 * i + 1], ints[i]) for i in range(num_levels))
        return (fn(q, levels, floats[-2], floats[-1], ints[-1]),)

    return call


def shared_prefix_decode_cases(plan: Plan) -> list[NumericsCase]:
    """T = 1 and 5 per head layout; ragged prompt lengths; q_start 0 (empty suffix) and max. Then
    per T a cascade of one root of P tokens over the B rows' own prefixes of P // 3 (the root's
    KV read once for all B·G samples)."""
    from pallas_kernels import shared_prefix_decode as spd

    kernel = functools.partial(spd.shared_prefix_decode_attention, impl="pallas",
                               block_sizes=spd.BlockSizes(**plan.decode_blocks),
                               interpret=plan.interpret)
    B, G, P, S, K, D = plan.decode_shape
    cases = []
    for t in (1, 5):
        layouts = [(ratio, ((B, P),), "") for ratio, _ in plan.head_layouts]
        cascade = ((1, P), (B, P // 3))
        layouts.append((plan.head_layouts[0][0], cascade, f" cascade 1x{P}/{B}x{P // 3}"))
        for ratio, levels, label in layouts:
            H, rng = ratio * K, np.random.default_rng(10 * t + ratio + 100 * (len(levels) - 1))
            shapes = [(B, G, t, H, D)] + [(n, p, K, D) for n, p in levels for _ in "kv"]
            shapes += [(B, G, S, K, D)] * 2
            # A lone root is long but not a whole number of key blocks.
            ints = tuple(_ragged(rng, 1, p, (n,)) if n > 1 else jnp.full((1,), p - 3, jnp.int32)
                         for n, p in levels)
            cases.append(NumericsCase(
                "shared_prefix_decode", f"T={t}{label} H/K={ratio} H={H} P={P} S={S} D={D}",
                _decode_order(kernel, len(levels)),
                _decode_order(spd.shared_prefix_decode_reference, len(levels)),
                tuple(_normal(rng, s) for s in shapes),
                (*ints, _ragged(rng, 0, S - t, (B, G))), ("o",)))
    return cases


# One case builder per kernel. A new kernel adds its builder here (pallas_kernels.tree_attention:

# One case builder per kernel; a new kernel adds its builder here.
KERNEL_CASES = (tree_attention_cases, shared_prefix_decode_cases)


def _outputs_and_grads(fn, float_args, int_args, cotangents):
    """Outputs of fn and, when cotangents are given, the VJP w.r.t. every float argument."""

    def run(float_args, int_args, cotangents):
        if cotangents is None:
            return fn(*float_args, *int_args), ()
        outs, vjp = jax.vjp(lambda *x: fn(*x, *int_args), *float_args)
        return outs, vjp(tuple(c.astype(o.dtype) for c, o in zip(cotangents, outs)))

    return jax.device_get(jax.jit(run)(float_args, int_args, cotangents))


def _error(actual, expected, metric, tol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    max_abs = float(np.max(np.abs(actual - expected)))
    max_ref = float(np.max(np.abs(expected)))
    rel = max_abs / max(max_ref, 1e-30)
    value = rel if metric == "rel" else max_abs
    return {"max_abs": max_abs, "max_ref": max_ref, "rel": rel, "metric": metric, "value": value,
            "tol": tol, "passed": bool(np.isfinite(value) and value <= tol)}


def check_case(case: NumericsCase, dtype) -> dict:
    """Run the kernel in `dtype` and the reference in fp32 on the same (rounded) inputs; one row.

    Both get the same random cotangents, rounded to `dtype`.
    """
    dtype_name = jnp.dtype(dtype).name
    floats = tuple(x.astype(dtype) for x in case.float_args)
    floats_ref = tuple(x.astype(jnp.float32) for x in floats)
    cotangents = None
    if case.grad_names:
        out_shapes = jax.eval_shape(case.reference_fn, *floats_ref, *case.int_args)
        rng = np.random.default_rng(100)
        cotangents = tuple(_normal(rng, o.shape).astype(dtype).astype(jnp.float32)
                           for o in out_shapes)
    with matmul_precision("highest"):
        ref = _outputs_and_grads(case.reference_fn, floats_ref, case.int_args, cotangents)
    precision = "highest" if dtype_name == "float32" else None
    with matmul_precision(precision):
        got = _outputs_and_grads(case.kernel_fn, floats, case.int_args, cotangents)
    quantities = {}
    for kind, names, actual, expected in (("output", case.output_names, got[0], ref[0]),
                                          ("grad", case.grad_names, got[1], ref[1])):
        tf32 = dtype_name == "float32" and jax.default_backend() != "cpu"
        key = "float32/tf32" if tf32 else dtype_name
        metric, tol = TOLERANCES[(key, kind)]
        for name, a, e in zip(names, actual, expected):
            quantities[name] = _error(a, e, metric, tol)
    worst = max(quantities, key=lambda n: quantities[n]["value"] / quantities[n]["tol"])
    return {"kernel": case.kernel, "case": case.name, "dtype": dtype_name,
            "precision": precision or "default", "quantities": quantities, "worst": worst,
            "passed": all(q["passed"] for q in quantities.values())}


def _numerics_line(row):
    short = {"float32": "fp32", "bfloat16": "bf16"}.get(row["dtype"], row["dtype"])
    item = f"{row['kernel']} {short} {row['case']}"
    if "error" in row:
        return [item, "FAIL", row["error"].strip().splitlines()[-1][:100]]
    q = row["quantities"][row["worst"]]
    figures = (f"worst {row['worst']}: abs {q['max_abs']:.2e} rel {q['rel']:.2e} "
               f"({q['metric']} tol {q['tol']:.0e})")
    return [item, "pass" if row["passed"] else "FAIL", figures]


def numerics(plan: Plan, budget: Budget) -> dict:
    """Every case of every kernel in its dtypes (fp32, bf16); a case that raises is a failed
    row."""
    rows = []
    for builder in KERNEL_CASES:
        build = {"kernel": builder.__name__, "case": "build", "dtype": "-", "passed": False}
        cases = []
        with recorded(build, full_traceback=True):
            cases = builder(plan)
        rows += [build] if "error" in build else []
        for case, dtype in ((c, d) for c in cases for d in c.dtypes):
            row = {"kernel": case.kernel, "case": case.name, "dtype": jnp.dtype(dtype).name,
                   "passed": False}
            with recorded(row, full_traceback=True):
                row = check_case(case, dtype)
            rows.append(row)
    return {"rows": rows, "passed": all(r["passed"] for r in rows), "note": PRECISION_NOTE,
            "table": [_numerics_line(r) for r in rows]}


def _fitting_batch(jitted, make_args, batch):
    """Largest b in batch, batch/2, ..., 1 whose compiled program fits in device memory."""
    limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    b = batch
    while True:
        args = make_args(b)
        mem = jitted.lower(*args).compile().memory_analysis()
        need = 0 if mem is None else (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                                      + mem.output_size_in_bytes)
        if limit is None or need <= 0.9 * limit:
            return b, args
        if b == 1:
            raise MemoryError(f"needs {need / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB")
        b //= 2


def _median_time(fn, *args, repeats, inner=1):
    """Median seconds per call (warm-up excluded), `inner` back-to-back calls per sample."""
    from experiments.common import median_time

    return median_time(lambda *a: [fn(*a) for _ in range(inner)], *args, repeats=repeats) / inner


def _random(seed, shapes, dtype):
    """Standard-normal arrays drawn on the device (host RNG is slow at the timing shapes)."""
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float32).astype(dtype) for k, s in zip(keys, shapes)]


@jax.jit
def _max_abs(a, b):
    return jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))


def _figures(row, keys):
    return ", ".join(f"{k} {row[k]:.4g}" for k in keys if k in row) or row.get(
        "skipped", row.get("error", ""))[:100]


def _timed_rows(specs, budget, measure, label, keys):
    """One row per spec: measure(spec) -> figures, skipped once the budget is spent, a failure
    recorded in its row. Returns (rows, table lines)."""
    rows = []
    for spec in specs:
        row = dict(spec)
        rows.append(row)
        if budget.spent():
            row["skipped"] = "time budget spent"
            continue
        with recorded(row):
            row.update(measure(row))
    public = [{k: v for k, v in r.items() if not callable(v)} for r in rows]
    return public, [[label(r), "ok" if "ms" in r else "-", _figures(r, keys)] for r in rows]


def visible_pairs(subtree_end_NxT) -> int:
    """(query, key) pairs of the tree rule: key j is seen by the queries j ≤ i < subtree_end[j]."""
    end = np.asarray(subtree_end_NxT, np.int64)
    return int(np.sum(end - np.arange(end.shape[1])))


def group_rows(n, p, g, r, multiple: int) -> np.ndarray:
    """subtree_end [n, T] of n rows of one tree: a p-token prompt and g completions of r tokens;
    T = the tree rounded up to `multiple` (padding after it)."""
    size = p + g * r
    end_T = np.arange(1, -(-size // multiple) * multiple + 1, dtype=np.int32)
    end_T[:size] = np.concatenate([np.full(p, size), p + r * np.repeat(np.arange(1, g + 1), r)])
    return np.tile(end_T, (n, 1))


def tree_attention_timing(plan: Plan, budget: Budget) -> dict:
    """Forward and forward+backward of the Pallas kernel (per token tiles and launch settings)
    and of the XLA path on N group rows. A program that does not fit in device memory at N rows
    runs at the largest N/2^k that does (TFLOP/s stay comparable)."""
    from pallas_kernels import tree_attention as ta
    from pallas_kernels import tree_attention_pallas as tap
    from pallas_kernels.tree_blocks import TreeBlocks, build_tree_blocks

    N, P, G, R, H, K, D = plan.tree_timing_shape
    default = tap.default_token_blocks(H // K, D, plan.timing_dtype)

    def label(launch):  # "default" or the overrides, e.g. "w=8 s=2 w_dq=8 s_dq=2"
        return " ".join(f"{k.replace('num_warps', 'w').replace('num_stages', 's')}={v}"
                        for k, v in launch.items()) if launch else "default"

    specs = [{"variant": f"pallas {bq}x{bk} {label(launch)}", "tiles": (bq, bk),
              "fn": functools.partial(tap.tree_attention, interpret=plan.interpret,
                                      block_sizes=tap.BlockSizes(**(launch or {})))}
             for i, (bq, bk) in enumerate(t or default for t in plan.tree_timing_tiles)
             for launch in (plan.tree_timing_launch if i == 0 else (None,))]
    specs.append({"variant": "xla {}x{}".format(*plan.xla_tiles), "tiles": tuple(plan.xla_tiles),
                  "fn": ta.tree_attention_xla})
    specs = [{**spec, "mode": mode} for spec in specs for mode in ("fwd", "fwd+bwd")]
    end = group_rows(N, P, G, R, max(max(spec["tiles"]) for spec in specs))
    T = end.shape[1]
    floats = _random(0, [(N, T, H, D), (N, T, K, D), (N, T, K, D), (N, T, H, D)],
                     plan.timing_dtype)
    blocks = {tiles: build_tree_blocks(end, *tiles) for tiles in {s["tiles"] for s in specs}}
    first_o = []

    def make_args(b, tiles, backward):
        floats_b = [x if b == N else x[:b] for x in floats]
        ints = (jnp.asarray(end[:b]), TreeBlocks(*(jnp.asarray(x[:b]) for x in blocks[tiles])))
        return (floats_b[:3], ints, floats_b[3]) if backward else (floats_b[:3], ints)

    def measure(row):
        fn, backward = row["fn"], row["mode"] == "fwd+bwd"
        if backward:
            jitted = jax.jit(lambda f, ints, do: jax.vjp(lambda *x: fn(*x, *ints), *f)[1](do))
        else:
            jitted = jax.jit(lambda f, ints: fn(*f, *ints))
        b, args = _fitting_batch(jitted, functools.partial(
            make_args, tiles=row["tiles"], backward=backward), N)
        seconds = _median_time(jitted, *args, repeats=plan.repeats)
        flops = 4 * D * H * visible_pairs(end[:b]) * (2.5 if backward else 1.0)
        out = {"rows": b, "ms": seconds * 1e3, "tflops": flops / seconds / 1e12}
        if not backward and b == N:
            first_o[:] = first_o or [jitted(*args)]
            out["max_abs_vs_first"] = float(_max_abs(jitted(*args), first_o[0]))
        return out

    rows, table = _timed_rows(specs, budget, measure, lambda r: f"{r['variant']} {r['mode']}",
                              ("rows", "ms", "tflops", "max_abs_vs_first"))
    return {"shape": dict(N=N, T=T, P=P, G=G, R=R, H=H, K=K, D=D, dtype=plan.timing_dtype),
            "flops_rule": "fwd 4*D*H*visible (query, key) pairs of the tree rule, fwd+bwd 2.5x",
            "rows": rows, "table": table}


def decode_timing(plan: Plan, budget: Budget) -> dict:
    """Decode attention (prompt ⊕ suffix) and its prompt part alone, Pallas vs XLA, T = 1 and 5;
    GB/s counts the prompt K/V bytes, read once per step."""
    from pallas_kernels import shared_prefix_decode as spd

    B, P, G, K, H, D, S = plan.decode_timing_shape
    prompt_bytes = 2 * B * P * K * D * jnp.dtype(plan.timing_dtype).itemsize
    kv_p, kv_s = [(B, P, K, D)] * 2, [(B, G, S, K, D)] * 2
    q1, q5, *kv = _random(1, [(B, G, 1, H, D), (B, G, 5, H, D), *kv_p, *kv_s], plan.timing_dtype)
    prompt_len_B = jnp.full((B,), P, jnp.int32)
    def decode(impl):
        fn = functools.partial(spd.shared_prefix_decode_attention, impl=impl,
                               interpret=plan.interpret)
        return lambda q, kp, vp, plen, ks, vs, qs: fn(q, ((kp, vp, plen),), ks, vs, qs)

    fns = {("decode", impl): decode(impl) for impl in ("pallas", "xla")}
    fns["prompt", "pallas"] = functools.partial(spd.shared_prefix_attention,
                                                interpret=plan.interpret)
    fns["prompt", "xla"] = spd.shared_prefix_attention_xla

    def measure(row):
        t, fn = row["T"], fns[row["part"], row["impl"]]
        args = (q1 if t == 1 else q5, *kv[:2], prompt_len_B)
        if row["part"] == "decode":
            args += (*kv[2:], jnp.full((B, G), S - t, jnp.int32))
        seconds = _median_time(jax.jit(fn), *args, repeats=plan.repeats, inner=plan.inner)
        return {"ms": seconds * 1e3, "gbps": prompt_bytes / seconds / 1e9}

    specs = [{"T": t, "part": part, "impl": impl} for t in (1, 5) for part, impl in fns]
    rows, table = _timed_rows(specs, budget, measure,
                              lambda r: f"{r['part']} T={r['T']} {r['impl']}", ("ms", "gbps"))
    return {"shape": dict(B=B, P=P, G=G, K=K, H=H, D=D, S=S, dtype=plan.timing_dtype),
            "rows": rows, "table": table}


def _model(plan: Plan, seed=0):
    from experiments.common import bench_model_config
    from zorro_jax.model.transformer import init_model

    return init_model(bench_model_config(**plan.model), seed=seed)


def actor_groups(spec: dict, vocab: int, seed: int = 0):
    """Random groups, lengths lognormal(median, sigma) clipped to [lo, hi]: ([(prompt ids,
    [completion ids] * G)], prompt lengths [B], completion lengths [B, G])."""
    rng = np.random.default_rng(seed)

    def lengths(dist, size):
        median, sigma, lo, hi = dist
        return np.clip(np.round(np.exp(rng.normal(np.log(median), sigma, size))), lo, hi)

    plen = lengths(spec["prompt"], spec["groups"]).astype(int)
    clen = lengths(spec["completion"], (spec["groups"], spec["samples"])).astype(int)
    ids = [rng.integers(3, vocab, n).astype(np.int32) for n in (*plen, *clen.flat)]
    g = clen.shape[1]
    return [(ids[i], ids[len(plen) + i * g:][:g]) for i in range(len(plen))], plen, clen


def actor_update(plan: Plan, budget: Budget) -> dict:
    """One GRPO actor update (value and grad of the token loss on every micro-batch of
    `rl.batches.pack_groups`), packed prompt-once vs packed naive: time, real and computed
    tokens, XLA temp bytes of one micro-batch (rows of the same token budget, so alike in both).
    Pallas attention on GPU, XLA in the smoke."""
    from flax import nnx

    from experiments.common import temp_bytes
    from zorro_jax import attention
    from zorro_jax.model.forward import packed_logprobs
    from zorro_jax.rl.batches import PackingConfig, pack_groups, sample_mask, tiles_for
    from zorro_jax.rl.losses import LossConfig, loss_normaliser, policy_loss

    model = _model(plan)
    graphdef, params = nnx.split(model)
    vocab, cfg = model.config.vocab_size, LossConfig()
    impl = attention.resolve_impl("xla" if plan.interpret else "pallas", "PackedTree")
    groups, plen, clen = actor_groups(plan.actor, vocab)
    (b, g), r = clen.shape, max(1, int(clen.max()))
    old = np.full((b, g, r), -np.log(vocab), np.float32)
    adv = np.random.default_rng(1).normal(size=(b, g)).astype(np.float32)
    norm = loss_normaliser(jnp.asarray(sample_mask(clen, r)), cfg)

    def loss(params, packed, old, adv, norm):
        lp, _, mask = packed_logprobs(nnx.merge(graphdef, params), packed, impl=impl,
                                      with_entropy=False)
        return policy_loss(lp, old, adv, mask, norm, cfg)[0]

    step = jax.jit(jax.value_and_grad(loss))
    real = {"prompt_once": plen.sum() + clen.sum(), "naive": g * plen.sum() + clen.sum()}
    out = {"impl": impl, "model": plan.model, "groups": b, "samples": g, "lengths": plan.actor}
    for mode in ("prompt_once", "naive"):
        mbs = pack_groups(groups, mode=mode, tiles=tiles_for(model.config, impl), loss_width=r,
                          cfg=PackingConfig(token_budget=plan.actor["token_budget"]))
        calls = [(params, mb.packed, *(jnp.asarray(mb.take_groups(x)) for x in (old, adv)), norm)
                 for mb in mbs]
        out[mode] = {"time_s": _median_time(lambda calls=calls: [step(*c) for c in calls],
                                            repeats=plan.repeats),
                     # The micro-batches of one call share their shapes: one program.
                     "temp_bytes": temp_bytes(step, *calls[0]), "micro_batches": len(mbs),
                     "row_tokens": int(mbs[0].packed.tokens_NxT.shape[1]),
                     "computed_tokens": sum(int(mb.packed.tokens_NxT.size) for mb in mbs),
                     "real_tokens": int(real[mode])}
    naive, once = out["naive"], out["prompt_once"]
    out.update(ideal_token_ratio=naive["real_tokens"] / once["real_tokens"],
               computed_token_ratio=naive["computed_tokens"] / once["computed_tokens"],
               time_ratio=naive["time_s"] / once["time_s"])
    out["table"] = [[f"naive / prompt-once B={b} G={g} {impl}", "ok", _figures(
        out, ("ideal_token_ratio", "computed_token_ratio", "time_ratio"))]]
    return out


def rollout(plan: Plan, budget: Budget) -> dict:
    """`bench_rollout.time_variant`: shared-prefix vs naive sampler (and Pallas decode on GPU)."""
    from experiments import bench_rollout

    model = _model(plan)
    p, g, r = plan.rollout_shape
    prompts = np.random.default_rng(0).integers(0, model.config.vocab_size, (1, p)).tolist()
    cfg = bench_rollout.BenchConfig(repeats=plan.repeats, attention_impl="xla")
    runs = {mode: bench_rollout.time_variant(model, prompts, g, r, mode, cfg)
            for mode in ("shared", "naive")}
    out = {"P": p, "G": g, "R": r, "model": plan.model, "ideal_ratio": g * (p + r) / (p + g * r),
           "speedup": runs["naive"]["seconds"] / runs["shared"]["seconds"],
           "kv_ratio": runs["naive"]["kv_bytes"] / runs["shared"]["kv_bytes"]}
    if not plan.interpret and not budget.spent():
        pallas = dataclasses.replace(cfg, attention_impl="pallas")
        runs["shared_pallas"] = bench_rollout.time_variant(model, prompts, g, r, "shared", pallas)
        out["speedup_pallas"] = runs["naive"]["seconds"] / runs["shared_pallas"]["seconds"]
    out["runs"] = {k: {n: float(v) for n, v in run.items()} for k, run in runs.items()}
    out["table"] = [[f"P={p} G={g} R={r}", "ok", _figures(
        out, ("ideal_ratio", "speedup", "speedup_pallas", "kv_ratio"))]]
    return out


def speculative(plan: Plan, budget: Budget) -> dict:
    """Speculative sampling at γ=4 vs the plain shared-prefix sampler (random policy and draft)."""
    from zorro_jax.model.transformer import init_model
    from zorro_jax.sampling.sampler import SamplerConfig, generate
    from zorro_jax.sampling.speculative import draft_config, generate_speculative

    policy = _model(plan)
    draft = init_model(draft_config(policy.config, **plan.draft), seed=1)
    b, p, g, r = plan.spec_shape
    prompts = np.random.default_rng(0).integers(0, policy.config.vocab_size, (b, p)).tolist()
    sampler = SamplerConfig(max_new_tokens=r, ignore_eos=True)
    key, stats = jax.random.key(0), {}

    def spec():
        out, st = generate_speculative(policy, draft, prompts, g, sampler, key, 4)
        stats.update(st)
        return out

    plain_s = _median_time(lambda: generate(policy, prompts, g, sampler, key),
                           repeats=plan.repeats)
    spec_s = _median_time(spec, repeats=plan.repeats)
    out = {"B": b, "P": p, "G": g, "R": r, "gamma": 4, "draft": plan.draft,
           "note": "random policy and draft: acceptance says little about trained models",
           "plain_tokens_per_s": b * g * r / plain_s, "spec_tokens_per_s": b * g * r / spec_s,
           "speedup": plain_s / spec_s, "acceptance_rate": stats["acceptance_rate"],
           "tokens_per_policy_forward": stats["tokens_per_policy_forward"]}
    out["table"] = [[f"gamma=4 B={b} P={p} G={g} R={r}", "ok", _figures(
        out, ("speedup", "spec_tokens_per_s", "acceptance_rate", "tokens_per_policy_forward"))]]
    return out


def environment(plan: Plan, budget: Budget) -> dict:
    """Devices, platform and library versions."""
    import flax
    import jaxlib
    import optax

    devices = jax.devices()
    out = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": getattr(jaxlib, "__version__", "?"), "flax": flax.__version__,
           "optax": optax.__version__, "numpy": np.__version__, "backend": jax.default_backend(),
           "machine": platform.platform(), "device_count": len(devices),
           "device_kind": devices[0].device_kind, "devices": [str(d) for d in devices],
           "memory_bytes_limit": (devices[0].memory_stats() or {}).get("bytes_limit"),
           "interpret": plan.interpret}
    versions = " ".join(f"{k} {out[k]}" for k in ("jax", "jaxlib", "flax", "python"))
    out["table"] = [[f"{out['backend']} {len(devices)}x {out['device_kind']}", "ok", versions]]
    return out


# (name, function, timing section: skipped once the budget is spent)
SECTIONS = (("environment", environment, False), ("numerics", numerics, False),
            ("tree_attention_timing", tree_attention_timing, True),
            ("decode_timing", decode_timing, True), ("actor_update", actor_update, True),
            ("rollout", rollout, True), ("speculative", speculative, True))


def run_checks(plan: Plan, budget: Budget) -> dict:
    """Run every section in order; returns the report (JSON-ready)."""
    sections = {}
    for name, fn, timed in SECTIONS:
        if timed and budget.spent():
            sections[name] = {"status": "skipped", "seconds": 0.0,
                              "reason": f"time budget of {budget.seconds:.0f} s spent"}
            continue
        t0, sec = time.perf_counter(), {"status": "failed"}
        with recorded(sec, full_traceback=True):
            sec["result"] = fn(plan, budget)
            sec["status"] = "failed" if sec["result"].get("passed") is False else "ok"
        sec["seconds"] = time.perf_counter() - t0
        sections[name] = sec
        print(f"[{budget.elapsed():6.1f} s] {name}: {sec['status']}", flush=True)
    numerics_ok = sections["numerics"].get("result", {}).get("passed", False)
    return {"mode": "cpu-smoke" if plan.interpret else "gpu", "plan": dataclasses.asdict(plan),
            "budget_s": budget.seconds, "elapsed_s": budget.elapsed(),
            "numerics_passed": bool(numerics_ok), "sections": sections}


SUMMARY_HEADER = "== device check summary =="


def summary_lines(report: dict) -> list[str]:
    """The printed table: each section's rows (or its failure), then one verdict line."""
    lines = [SUMMARY_HEADER, f"{'section':<23} {'item':<50} {'status':<7} figures"]
    for name, sec in report["sections"].items():
        if "result" in sec:
            table = sec["result"]["table"]
        else:
            table = [["-", sec["status"], sec.get("reason")
                      or sec["error"].strip().splitlines()[-1][:100]]]
        lines += [f"{name:<23} {item:<50} {status:<7} {figures}" for item, status, figures in table]
    rows = report["sections"]["numerics"].get("result", {}).get("rows", [])
    ok = sum(sec["status"] == "ok" for sec in report["sections"].values())
    lines.append(f"overall: numerics {'PASS' if report['numerics_passed'] else 'FAIL'} "
                 f"({sum(r['passed'] for r in rows)}/{len(rows)} rows), sections ok "
                 f"{ok}/{len(report['sections'])}, {report['elapsed_s']:.1f} s, "
                 f"{report['mode']}; {PRECISION_NOTE}")
    return lines


def main(argv=None) -> int:
    """Parse arguments, run the checks, write the JSON and print the table; the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default="runs/device_check.json", help="report path")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="interpret-mode kernels, tiny shapes and models, on CPU")
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="timing work that would start after this many seconds is skipped")
    ap.add_argument("--compile-cache", default=None, metavar="DIR",
                    help="persistent compilation cache (a rerun then skips most compiles)")
    args = ap.parse_args(argv)
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    if not args.cpu_smoke and jax.default_backend() != "gpu":
        print(f"device_check: no GPU present (jax backend: {jax.default_backend()}); run with "
              "--cpu-smoke for an interpret-mode check on this machine.")
        return 2
    report = run_checks(SMOKE_PLAN if args.cpu_smoke else GPU_PLAN, Budget(args.budget_s))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.json}", flush=True)
    print("\n".join(summary_lines(report)), flush=True)
    return 0 if report["numerics_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
