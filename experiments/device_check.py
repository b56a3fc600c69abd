"""On-device check for a GPU day: kernel numerics, kernel timings and benchmark ratios in one run.

    python -m experiments.device_check [--json runs/device_check.json] [--budget-s 270]
                                       [--compile-cache DIR]
    python -m experiments.device_check --cpu-smoke     # interpret mode, tiny shapes, on CPU

Sections, each guarded so that a failure is recorded (with its traceback) and the run goes on:
environment; numerics of every Pallas kernel against its reference (fp32 and bf16, outputs and
gradients); split-attention and decode-kernel timings at a realistic shape against the XLA paths;
the actor-update, rollout and speculative-sampling benchmark ratios at one GPU-sized shape.
Timing work is skipped once the time budget is spent. Writes a JSON report and prints a summary
table last; exits 1 if a numerics check failed, 2 when there is no GPU and no --cpu-smoke.
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
    ("float32", "output"): ("rel", 1e-4),
    ("float32", "grad"): ("rel", 1e-4),
    ("bfloat16", "output"): ("abs", 2e-2),
    # Gradients of K/V sum over many queries, so their scale grows with the shape: relative.
    ("bfloat16", "grad"): ("rel", 2e-2),
}
DTYPES = (jnp.float32, jnp.bfloat16)
PRECISION_NOTE = (
    "fp32 kernels and all references run under jax.default_matmul_precision('highest') (IEEE "
    "fp32 dots; the kernels' GPU default for fp32 is TF32, ~1e-3 relative); bf16 kernels run at "
    "default precision"
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every shape and knob of one run: the GPU plan or the CPU smoke plan."""

    interpret: bool
    repeats: int
    # Calls per timing sample for sub-millisecond kernels (decode).
    inner: int
    # Numerics: split attention (B, G, P, R, D), decode (B, G, P, S, K, D), their tiles (None =
    # the kernel's own default for the inputs) and the (H/K, K) head layouts checked.
    split_shape: tuple
    split_blocks: tuple | None
    decode_shape: tuple
    decode_blocks: dict
    head_layouts: tuple
    # Timings: split (B, P, G, R, H, K, D) and its BlockSizes settings (None = the kernel's
    # default); decode (B, P, G, K, H, D, S).
    split_timing_shape: tuple
    split_timing_blocks: tuple
    decode_timing_shape: tuple
    timing_dtype: str
    # Benchmarks: overrides of `experiments.common.bench_model_config` and of `draft_config`;
    # actor (P, R, G), rollout (P, G, R), speculative (B, P, G, R).
    model: dict
    draft: dict
    actor_shape: tuple
    rollout_shape: tuple
    spec_shape: tuple


GPU_PLAN = Plan(
    interpret=False, repeats=3, inner=20,
    split_shape=(2, 3, 200, 72, 128), split_blocks=None,
    decode_shape=(3, 4, 300, 40, 2, 128), decode_blocks=dict(),
    head_layouts=((1, 2), (4, 2), (7, 1)),
    split_timing_shape=(8, 4096, 16, 1024, 32, 8, 128),
    split_timing_blocks=(None, (128, 64, 128, 64, 64, 128), (128, 128, 64, 64, 64, 64)),
    decode_timing_shape=(8, 4096, 16, 8, 32, 128, 128), timing_dtype="bfloat16",
    model=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
               num_attention_heads=8, num_key_value_heads=2, head_dim=128,
               compute_dtype="bfloat16"),
    draft=dict(hidden_size=256, num_layers=2),
    actor_shape=(2048, 256, 16), rollout_shape=(2048, 16, 128), spec_shape=(4, 512, 8, 128),
)
SMOKE_PLAN = Plan(
    interpret=True, repeats=1, inner=1,
    split_shape=(2, 3, 40, 24, 16), split_blocks=(16,) * 6,
    decode_shape=(3, 3, 37, 9, 2, 16), decode_blocks=dict(block_k=16, num_splits=3),
    # Interpret mode compiles slowly: one head layout (H/K=7, the odd one) keeps the smoke short.
    head_layouts=((7, 1),),
    split_timing_shape=(1, 64, 2, 32, 4, 2, 16), split_timing_blocks=((16,) * 6,),
    decode_timing_shape=(2, 64, 2, 2, 4, 16, 16), timing_dtype="float32",
    model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, head_dim=32, vocab_size=256),
    draft=dict(hidden_size=32, num_layers=1),
    actor_shape=(48, 16, 4), rollout_shape=(32, 4, 8), spec_shape=(1, 16, 2, 8),
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


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _ragged(rng, low, high, shape):
    """Random int32 lengths in [low, high], with the first at high and the last at low."""
    lengths = rng.integers(low, high + 1, shape)
    lengths.flat[0], lengths.flat[-1] = high, low
    return jnp.asarray(lengths, jnp.int32)


def _split_blocks(blocks):
    """Keyword arguments choosing split-attention tiles; none for the kernel's own default."""
    from pallas_kernels import split_attention as sa

    return {} if blocks is None else {"block_sizes": sa.BlockSizes(*blocks)}


def split_attention_cases(plan: Plan) -> list[NumericsCase]:
    """Ragged prompt/completion lengths (plen 1 and P, clen 0 and R), one case per head layout."""
    from pallas_kernels import split_attention as sa

    kernel = functools.partial(sa.split_attention, interpret=plan.interpret,
                               **_split_blocks(plan.split_blocks))
    B, G, P, R, D = plan.split_shape
    cases = []
    for seed, (ratio, K) in enumerate(plan.head_layouts):
        H, rng = ratio * K, np.random.default_rng(seed)
        shapes = [(B, P, H, D), (B, P, K, D), (B, P, K, D),
                  (B, G, R, H, D), (B, G, R, K, D), (B, G, R, K, D)]
        cases.append(NumericsCase(
            "split_attention", f"H/K={ratio} H={H} P={P} R={R} D={D}", kernel,
            sa.split_attention_reference, tuple(_normal(rng, s) for s in shapes),
            (_ragged(rng, 1, P, (B,)), _ragged(rng, 0, R, (B, G))),
            ("o_p", "o_c"), ("dq_p", "dk_p", "dv_p", "dq_c", "dk_c", "dv_c")))
    return cases


def _decode_order(fn):
    """(q, k_p, v_p, k_s, v_s, prompt_len, q_start) -> (fn in its own argument order,)."""
    return lambda q, kp, vp, ks, vs, plen, qs: (fn(q, kp, vp, plen, ks, vs, qs),)


def shared_prefix_decode_cases(plan: Plan) -> list[NumericsCase]:
    """T = 1 and 5 per head layout; ragged prompt lengths; q_start 0 (empty suffix) and max."""
    from pallas_kernels import shared_prefix_decode as spd

    kernel = functools.partial(spd.shared_prefix_decode_attention, impl="pallas",
                               block_sizes=spd.BlockSizes(**plan.decode_blocks),
                               interpret=plan.interpret)
    B, G, P, S, K, D = plan.decode_shape
    cases = []
    for t in (1, 5):
        for ratio, _ in plan.head_layouts:
            H, rng = ratio * K, np.random.default_rng(10 * t + ratio)
            shapes = [(B, G, t, H, D), (B, P, K, D), (B, P, K, D), (B, G, S, K, D),
                      (B, G, S, K, D)]
            cases.append(NumericsCase(
                "shared_prefix_decode", f"T={t} H/K={ratio} H={H} P={P} S={S} D={D}",
                _decode_order(kernel), _decode_order(spd.shared_prefix_decode_reference),
                tuple(_normal(rng, s) for s in shapes),
                (_ragged(rng, 1, P, (B,)), _ragged(rng, 0, S - t, (B, G))), ("o",)))
    return cases


# One case builder per kernel. A new kernel adds its builder here (pallas_kernels.tree_attention:
# `tree_attention` vs `tree_attention_reference`, to be added with that kernel).
KERNEL_CASES = (split_attention_cases, shared_prefix_decode_cases)


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
        metric, tol = TOLERANCES[(dtype_name, kind)]
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
    """Every case of every kernel in fp32 and bf16; a case that raises is a failed row."""
    rows = []
    for builder in KERNEL_CASES:
        build = {"kernel": builder.__name__, "case": "build", "dtype": "-", "passed": False}
        cases = []
        with recorded(build, full_traceback=True):
            cases = builder(plan)
        rows += [build] if "error" in build else []
        for case, dtype in ((c, d) for c in cases for d in DTYPES):
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


def visible_pairs(prompt_len_B, comp_len_BxG) -> int:
    """Query-key pairs split attention computes: causal prompt, completions see prompt + own."""
    plen = np.asarray(prompt_len_B, np.int64)
    clen = np.asarray(comp_len_BxG, np.int64)
    return int(np.sum(plen * (plen + 1) // 2)
               + np.sum(clen * plen[:, None] + clen * (clen + 1) // 2))


def _median_time(fn, *args, repeats, inner=1):
    """Median seconds per call (warm-up excluded), `inner` back-to-back calls per sample."""
    from experiments.common import median_time

    return median_time(lambda *a: [fn(*a) for _ in range(inner)], *args, repeats=repeats) / inner


def _random(seed, shapes, dtype):
    """Standard-normal arrays drawn on the device (host RNG is slow at the timing shapes)."""
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return [jax.random.normal(k, s, jnp.float32).astype(dtype) for k, s in zip(keys, shapes)]


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


def split_attention_timing(plan: Plan, budget: Budget) -> dict:
    """Forward and forward+backward of the Pallas kernel (per BlockSizes) and of the XLA path.

    A program that does not fit in device memory at B prompts runs at the largest B/2^k that does
    (TFLOP/s stay comparable).
    """
    from pallas_kernels import split_attention as sa

    B, P, G, R, H, K, D = plan.split_timing_shape
    shapes = [(B, P, H, D), (B, P, K, D), (B, P, K, D),
              (B, G, R, H, D), (B, G, R, K, D), (B, G, R, K, D)]
    floats = _random(0, shapes + [shapes[0], shapes[3]], plan.timing_dtype)
    lengths = [jnp.full((B,), P, jnp.int32), jnp.full((B, G), R, jnp.int32)]
    first_o_c = []

    def make_args(b, backward):
        args = [x[:b] for x in floats[:6] + lengths]
        return (args, [c[:b] for c in floats[6:]]) if backward else (args,)

    def measure(row):
        fn, backward = row["fn"], row["mode"] == "fwd+bwd"
        if backward:
            jitted = jax.jit(lambda a, c: jax.vjp(lambda *x: fn(*x, *a[6:]), *a[:6])[1](tuple(c)))
        else:
            jitted = jax.jit(lambda a: fn(*a))
        b, args = _fitting_batch(jitted, functools.partial(make_args, backward=backward), B)
        seconds = _median_time(jitted, *args, repeats=plan.repeats)
        flops = 4 * D * H * visible_pairs(args[0][6], args[0][7]) * (2.5 if backward else 1.0)
        out = {"batch": b, "ms": seconds * 1e3, "tflops": flops / seconds / 1e12}
        if not backward and row["variant"].startswith("pallas") and b == B:
            o_c = jitted(*args)[1].astype(jnp.float32)
            first_o_c[:] = first_o_c or [o_c]
            out["max_abs_vs_first_tiles"] = float(jnp.max(jnp.abs(o_c - first_o_c[0])))
        return out

    variants = [(f"pallas {bs or 'default'}", functools.partial(
        sa.split_attention, interpret=plan.interpret, **_split_blocks(bs)))
        for bs in plan.split_timing_blocks] + [("xla", sa.split_attention_xla)]
    specs = [{"variant": name, "mode": mode, "fn": fn}
             for name, fn in variants for mode in ("fwd", "fwd+bwd")]
    rows, table = _timed_rows(specs, budget, measure, lambda r: f"{r['variant']} {r['mode']}",
                              ("batch", "ms", "tflops", "max_abs_vs_first_tiles"))
    return {"shape": dict(B=B, P=P, G=G, R=R, H=H, K=K, D=D, dtype=plan.timing_dtype),
            "flops_rule": "fwd 4*D*H*visible pairs, fwd+bwd 2.5x", "rows": rows, "table": table}


def decode_timing(plan: Plan, budget: Budget) -> dict:
    """Decode attention (prompt ⊕ suffix) and its prompt part alone, Pallas vs XLA, T = 1 and 5;
    GB/s counts the prompt K/V bytes, read once per step."""
    from pallas_kernels import shared_prefix_decode as spd

    B, P, G, K, H, D, S = plan.decode_timing_shape
    prompt_bytes = 2 * B * P * K * D * jnp.dtype(plan.timing_dtype).itemsize
    kv_p, kv_s = [(B, P, K, D)] * 2, [(B, G, S, K, D)] * 2
    q1, q5, *kv = _random(1, [(B, G, 1, H, D), (B, G, 5, H, D), *kv_p, *kv_s], plan.timing_dtype)
    prompt_len_B = jnp.full((B,), P, jnp.int32)
    fns = {("decode", impl): functools.partial(spd.shared_prefix_decode_attention, impl=impl,
                                               interpret=plan.interpret)
           for impl in ("pallas", "xla")}
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


def actor_update(plan: Plan, budget: Budget) -> dict:
    """`bench_actor_update.run_row`: replicated vs prompt-once GRPO update, time and memory."""
    from flax import nnx

    from experiments import bench_actor_update
    from zorro_jax.rl.losses import LossConfig

    model = _model(plan)
    graphdef, params = nnx.split(model)
    steps = bench_actor_update.make_steps(graphdef, LossConfig())
    p, r, g = plan.actor_shape
    row = bench_actor_update.run_row(params, steps, p, r, g, model.config.vocab_size,
                                     plan.repeats)
    return {"model": plan.model, **row, "table": [[f"P={p} R={r} G={g}", "ok", _figures(
        row, ("ideal_token_ratio", "time_ratio", "memory_ratio"))]]}


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
            ("split_attention_timing", split_attention_timing, True),
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
