"""Every Pallas kernel of the project in each public configuration the code uses: abstract cases
that lower without data (for the GPU checks of `gpu_check.py` and `experiments/kernel_report.py`),
and concrete first-use self-checks against the XLA paths (`SELF_CHECKS`).

A case is a function plus `jax.ShapeDtypeStruct` arguments. Training kernels are lowered as their
gradient (forward and backward kernels in one program); decode kernels as the decode attention.
Two shape families: "small" (what the tests and the quickstart model use: a few heads, D 16–64)
and "realistic" (8 prompts × P 4096, G 16, R 1024, 32 query / 8 KV heads, D 128, bf16).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import shared_prefix_decode as spd
from pallas_kernels import tree_attention as ta
from pallas_kernels import tree_attention_pallas as tap
from pallas_kernels.tree_blocks import TreeBlocks, build_tree_blocks


@dataclasses.dataclass(frozen=True)
class KernelCase:
    """One configuration of one kernel family, lowered as a whole program."""

    name: str
    fn: Callable
    args: tuple
    block_sizes: str  # human-readable tiling, for reports
    family: str  # "small" | "realistic"

    def lower(self, platform: str = "cuda"):
        """`jax.stages.Lowered` of this case for `platform` (no device needed)."""
        return jax.jit(self.fn).trace(*self.args).lower(lowering_platforms=(platform,))


def _struct(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def _decode_case(name, family, levels, g, t, h, k, d, dtype, block_sizes=None, suffix=None):
    """Decode attention over prefix `levels` ((entries, length) each, or (entries, rows, length)
    for a level packed side by side; the last one's entries are the rows B) and G suffixes per
    row of `suffix` slots (default 2T + 8); the program holds the prefix kernel once per level
    and the suffix kernel."""
    block_sizes = block_sizes or spd.BlockSizes()
    s = suffix or 2 * t + 8
    b = levels[-1][0]

    def level(n, *shape):
        r, p = shape if len(shape) == 2 else (n, *shape)
        kv = _struct((r, p, k, d), dtype)
        per_entry = (_struct((n,), jnp.int32),) * (2 if len(shape) == 2 else 1)
        return (kv, kv, *per_entry)

    prefix = tuple(level(*shape) for shape in levels)
    args = (
        _struct((b, g, t, h, d), dtype), prefix,
        _struct((b, g, s, k, d), dtype), _struct((b, g, s, k, d), dtype),
        _struct((b, g), jnp.int32),
    )

    def fn(q, prefix, ks, vs, start):
        return spd.shared_prefix_decode_attention(
            q, prefix, ks, vs, start, impl="pallas", block_sizes=block_sizes
        )

    return KernelCase(f"shared_prefix_decode {name}", fn, args, str(block_sizes), family)


def _tree_case(name, family, n, t, h, k, d, dtype, list_width, block_sizes=None):
    """Tree attention over n rows of t tokens, token blocks from `tap.default_token_blocks`."""
    block_sizes = block_sizes or tap.BlockSizes()
    block_q, block_k = tap.default_token_blocks(h // k, d, dtype)
    nq, nk = t // block_q, t // block_k
    i32 = jnp.int32
    blocks = TreeBlocks(
        _struct((n, nq, min(list_width, nk)), i32), _struct((n, nq), i32),
        _struct((n, nk, min(list_width, nq)), i32), _struct((n, nk), i32),
        # Flat pair lists (read by the XLA path only).
        _struct((n, nq * list_width), i32), _struct((n, nq * list_width), i32),
        _struct((n, nq * list_width), jnp.bool_),
    )
    args = (_struct((n, t, h, d), dtype), _struct((n, t, k, d), dtype),
            _struct((n, t, k, d), dtype), _struct((n, t), i32), blocks)

    def loss(q, k_, v, end, blocks):
        o = tap.tree_attention(q, k_, v, end, blocks, block_sizes=block_sizes)
        return jnp.sum(o.astype(jnp.float32))

    fn = jax.grad(loss, argnums=(0, 1, 2))
    tiles = f"tokens q{block_q}/k{block_k}, {block_sizes}"
    return KernelCase(f"tree_attention {name}", fn, args, tiles, family)


def kernel_cases(family: str = "all") -> list[KernelCase]:
    """The cases of one shape family ("small", "realistic") or of both ("all")."""
    if family not in ("small", "realistic", "all"):
        raise ValueError(f"family must be 'small', 'realistic' or 'all', got {family!r}")
    f32, bf16 = jnp.float32, jnp.bfloat16
    small = [
        _tree_case("fp32 H4/K2 D64", "small", 2, 512, 4, 2, 64, f32, 16),
        _tree_case("bf16 H4/K4 D64", "small", 2, 512, 4, 4, 64, bf16, 16),
        _tree_case("fp32 H7/K1 D96", "small", 1, 256, 7, 1, 96, f32, 8),
        _decode_case("T1 fp32 H4/K2 D64", "small", ((2, 96),), 8, 1, 4, 2, 64, f32),
        _decode_case("T5 bf16 H4/K4 D64", "small", ((2, 96),), 8, 5, 4, 4, 64, bf16),
        _decode_case("T1 fp32 H8/K2 D96", "small", ((2, 96),), 8, 1, 8, 2, 96, f32),
        # A schema of 200 tokens under 4 questions of 48: the schema level stacks 4·G rows.
        _decode_case("cascade T1 fp32 H4/K2 D64 (1 x 200, 4 x 48)", "small",
                     ((1, 200), (4, 48)), 8, 1, 4, 2, 64, f32),
        # The same questions packed side by side in one row of 192 slots, read by key windows.
        _decode_case("cascade packed T5 bf16 H4/K2 D64 (1 x 200, 4 in 1 x 192)", "small",
                     ((1, 200), (4, 1, 192)), 8, 5, 4, 2, 64, bf16),
    ]
    realistic = [
        # 8 trees of a 4096-token prompt and 16 completions of 1024 tokens, one tree per row.
        _tree_case("bf16 8 rows × 20480 (P4096 G16 R1024) H32/K8 D128", "realistic",
                   8, 20480, 32, 8, 128, bf16, 96),
        # Suffix caches of R = 1024 slots: the suffix kernel at the length it skips over.
        _decode_case("T1 bf16 B8 P4096 G16 S1024 H32/K8 D128", "realistic",
                     ((8, 4096),), 16, 1, 32, 8, 128, bf16, suffix=1024),
        _decode_case("T5 bf16 B8 P4096 G16 S1024 H32/K8 D128", "realistic",
                     ((8, 4096),), 16, 5, 32, 8, 128, bf16, suffix=1024),
        _decode_case("T5 bf16 B1 P4096 G16 S1024 H64/K8 D128", "realistic",
                     ((1, 4096),), 16, 5, 64, 8, 128, bf16, suffix=1024),
        # A 4096-token schema under 8 questions packed side by side in one row of 512 slots.
        _decode_case("cascade packed T1 bf16 (1 x 4096, 8 in 1 x 512) G16 S1024 H32/K8 D128",
                     "realistic", ((1, 4096), (8, 1, 512)), 16, 1, 32, 8, 128, bf16, suffix=1024),
    ]
    return {"small": small, "realistic": realistic, "all": small + realistic}[family]


# ---- Concrete self-checks (small inputs, Pallas kernels against the XLA paths) ----------------


def _rand(key, shape, dtype):
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def _rel_err(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(1.0, jnp.max(jnp.abs(b))))


def _check_shared_prefix_decode(interpret: bool = False):
    keys = jax.random.split(jax.random.key(1), 7)
    n, p, b, g, t, s, h, k, d = 2, 100, 4, 4, 3, 16, 8, 2, 64
    # Two prompts, then two questions under each packed side by side in one row of 48 slots.
    prefix = ((_rand(keys[1], (n, p, k, d), jnp.bfloat16), _rand(keys[2], (n, p, k, d), jnp.bfloat16),
               jnp.asarray([100, 37], jnp.int32)),
              (_rand(keys[5], (n, 48, k, d), jnp.bfloat16), _rand(keys[6], (n, 48, k, d), jnp.bfloat16),
               jnp.asarray([30, 17, 1, 40], jnp.int32), jnp.asarray([0, 30, 0, 1], jnp.int32)))
    args = (_rand(keys[0], (b, g, t, h, d), jnp.bfloat16), prefix,
            _rand(keys[3], (b, g, s, k, d), jnp.bfloat16),
            _rand(keys[4], (b, g, s, k, d), jnp.bfloat16), jnp.full((b, g), 5, jnp.int32))
    o = [jax.jit(functools.partial(spd.shared_prefix_decode_attention, impl=impl, interpret=interpret))(*args)
         for impl in ("pallas", "xla")]
    return _rel_err(*o)


def _check_tree_attention(interpret: bool = False):
    n, t, h, k, d = 2, 256, 4, 2, 64
    # Row 0: a prompt of 70 and three completions (40, 1, 33), then padding; row 1: two plain
    # sequences (100, 90) and a prompt of 30 with two completions (12, 20), then padding.
    spans = [[(0, 144, [(70, 110), (110, 111), (111, 144)])],
             [(0, 100, []), (100, 190, []), (190, 252, [(220, 232), (232, 252)])]]
    end = np.arange(1, t + 1)[None].repeat(n, 0)
    for row, trees in enumerate(spans):
        for start, stop, kids in trees:
            end[row, start:stop] = stop
            for a, b in kids:
                end[row, a:b] = b
    blocks = build_tree_blocks(end, *tap.default_token_blocks(h // k, d, jnp.bfloat16))
    keys = jax.random.split(jax.random.key(2), 3)
    args = (_rand(keys[0], (n, t, h, d), jnp.bfloat16), _rand(keys[1], (n, t, k, d), jnp.bfloat16),
            _rand(keys[2], (n, t, k, d), jnp.bfloat16), jnp.asarray(end))
    fns = (functools.partial(tap.tree_attention, interpret=interpret), ta.tree_attention_xla)
    loss = lambda fn: lambda q, k_, v, e: jnp.sum(jnp.sin(fn(q, k_, v, e, blocks).astype(jnp.float32)))
    grads = [jax.jit(jax.grad(loss(fn), argnums=(0, 1, 2)))(*args) for fn in fns]
    outs = [fn(*args, blocks) for fn in fns]
    return max([_rel_err(*outs)] + [_rel_err(a, b) for a, b in zip(*grads)])


# layout -> check(interpret) that runs the layout's Pallas kernels and the XLA path on one small
# bf16 input and returns the largest difference relative to max(1, max |xla|) (outputs and, for
# training, gradients). Used by `zorro_jax.attention.pallas_self_check` on first use.
SELF_CHECKS = {
    "PackedTree": _check_tree_attention,
    "SharedPrefixDecode": _check_shared_prefix_decode,
}
