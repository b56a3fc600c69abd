"""One prefix level's part of shared-prefix decode attention: the queries of every row under a
cache row, stacked into one matrix per KV head, against that row's K/V, each query row masked to
its own key window. A Pallas kernel and the same math in plain jnp.

A cache row holds one entry (a prompt, a database schema: every row of the group sees the keys
0 .. len-1) or, for a packed level, several entries side by side (the questions of one schema):
each row of the group then sees only its own entry's window [start, start + len). The kernel
visits, per block of query rows, only the key blocks that meet the union of the rows' windows,
so a packed row costs what its entries' keys cost, not their padded rectangle.

Public functions:
- `shared_prefix_attention` — the Pallas kernel: (o, lse).
- `shared_prefix_attention_xla` — the same part in plain jnp.
- `key_windows` — the (start, length) of every query group row from the accepted forms.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pl_tpu
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels.lse_merge import KERNEL_DOT_PRECISION, NEG_INF
from pallas_kernels.suffix_decode import default_scale


def _is_power_of_2(n):
    return n > 0 and (n & (n - 1)) == 0


# Programs per streaming multiprocessor the split heuristic aims for (H100/H200 have 132 SMs).
_TARGET_PROGRAMS = 2 * 132


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the prompt-attention kernel.

    The grid is (B, K, query-row blocks, splits of P). Each program walks its split of the prompt
    in blocks of `block_k` keys and returns an unnormalised partial result; splits are merged
    outside the kernel. More splits mean more parallel programs for small B·K (long prompts,
    few groups) at the price of a larger merge.
    """

    # Prompt keys per inner-loop iteration (a power of two ≥ 16 for Triton dots).
    block_k: int = 64
    # Number of independent programs along the prompt length; None chooses it from the shape so
    # the grid has about two programs per SM (and the split divides the prompt into whole key
    # blocks, so a cache whose length is a multiple of block_k is never re-padded).
    num_splits: int | None = None
    # Query rows (G·T·H/K, padded) per program; None puts all rows of a KV head in one program up
    # to `max_block_m` rows, so each prompt KV block is read once per group (or once per
    # max_block_m rows: larger tiles spill registers and overflow shared memory on sm_90).
    block_m: int | None = None
    max_block_m: int = 128
    # Triton launch parameters (ignored in interpret mode); num_warps None is 8 for row blocks of
    # ≥ 128 rows (their fp32 accumulator spills at 4 warps on sm_90), else 4.
    num_warps: int | None = None
    num_stages: int = 2

    def __post_init__(self):
        if not (_is_power_of_2(self.block_k) and self.block_k >= 16):
            raise ValueError(f"block_k must be a power of two >= 16, got {self.block_k}")
        if self.num_splits is not None and self.num_splits < 1:
            raise ValueError(f"num_splits must be >= 1 or None, got {self.num_splits}")
        if self.block_m is not None and not (_is_power_of_2(self.block_m) and self.block_m >= 16):
            raise ValueError(f"block_m must be a power of two >= 16 or None, got {self.block_m}")
        if not (_is_power_of_2(self.max_block_m) and self.max_block_m >= 16):
            raise ValueError(f"max_block_m must be a power of two >= 16, got {self.max_block_m}")
        if (self.num_warps is not None and self.num_warps < 1) or self.num_stages < 1:
            raise ValueError("num_warps and num_stages must be >= 1")


def key_windows(prompt_len, key_start, b, g):
    """The key window (start [B, G], length [B, G], int32) of every query group row: a length per
    entry [B] (every row of the entry sees keys 0 .. len-1) or per row [B, G], and an optional
    start per row [B, G] (a packed level: the entries of one row of the cache side by side)."""
    len_BxG = prompt_len.astype(jnp.int32)
    if len_BxG.shape == (b,):
        len_BxG = jnp.broadcast_to(len_BxG[:, None], (b, g))
    if len_BxG.shape != (b, g):
        raise ValueError(f"prompt_len must have shape ({b},) or ({b}, {g}), got {prompt_len.shape}")
    if key_start is None:
        return jnp.zeros((b, g), jnp.int32), len_BxG
    if key_start.shape != (b, g):
        raise ValueError(f"key_start must have shape ({b}, {g}), got {key_start.shape}")
    return key_start.astype(jnp.int32), len_BxG


def _check_shapes(q_BxGxTxHxD, k_prompt_BxPxKxD, v_prompt_BxPxKxD):
    b, _, _, h, d = q_BxGxTxHxD.shape
    bk, _, k, dk = k_prompt_BxPxKxD.shape
    if k_prompt_BxPxKxD.shape != v_prompt_BxPxKxD.shape:
        raise ValueError(
            f"k/v prompt shapes differ: {k_prompt_BxPxKxD.shape} vs {v_prompt_BxPxKxD.shape}"
        )
    if bk != b or dk != d:
        raise ValueError(
            f"q {q_BxGxTxHxD.shape} does not match prompt cache {k_prompt_BxPxKxD.shape}"
        )
    if h % k:
        raise ValueError(f"query heads {h} must be a multiple of kv heads {k}")


def _group_queries(q_BxGxTxHxD, num_kv_heads):
    """[B, G, T, H, D] -> [B, K, G·T·R, D] with R = H // K; row order (g, t, r)."""
    b, g, t, h, d = q_BxGxTxHxD.shape
    r = h // num_kv_heads
    q_BxGxTxKxRxD = q_BxGxTxHxD.reshape(b, g, t, num_kv_heads, r, d)
    return q_BxGxTxKxRxD.transpose(0, 3, 1, 2, 4, 5).reshape(b, num_kv_heads, g * t * r, d)


def _ungroup(x_BxKxMx_, g, t):
    """Inverse of `_group_queries` for outputs [B, K, M, ...] -> [B, G, T, H, ...]."""
    b, k, m = x_BxKxMx_.shape[:3]
    rest = x_BxKxMx_.shape[3:]
    r = m // (g * t)
    x = x_BxKxMx_.reshape(b, k, g, t, r, *rest)
    x = jnp.moveaxis(x, 1, 3)  # [B, G, T, K, R, ...]
    return x.reshape(b, g, t, k * r, *rest)


def _prompt_kernel(lo_ref, hi_ref, q_ref, start_ref, end_ref, k_ref, v_ref, acc_ref, m_ref, l_ref,
                   *, sm_scale, block_k, row_blocks):
    """One (entry, kv head, row block, prompt split) program.

    lo_ref, hi_ref [B · row blocks] (all programs'): the union [lo, hi) of the key windows of each
    row block; q_ref [Mb, D]; start_ref, end_ref [Mb, 1]: each row's window [start, end);
    k_ref, v_ref [split_len, D] (this head's slice of the split). Outputs: acc [Mb, D] =
    Σ exp(s - m) v, m [Mb, 1] running max, l [Mb, 1] = Σ exp(s - m). Row statistics stay 2-D so
    the body also lowers through Mosaic TPU.
    """
    split_len = k_ref.shape[0]
    split_start = pl.program_id(3) * split_len
    block = pl.program_id(0) * row_blocks + pl.program_id(2)
    # Only the key blocks of this split that meet the row block's windows are visited: a packed
    # level's rows see their own entry's keys, so the union is a fraction of the row.
    # Both bounds are clipped to the split first, so lax.div (truncating) is the floor here.
    first = lax.div(jnp.clip(lo_ref[block] - split_start, 0, split_len), jnp.int32(block_k))
    last = pl.cdiv(jnp.clip(hi_ref[block] - split_start, 0, split_len), block_k)

    q_MxD = q_ref[...]
    start_Mx1, end_Mx1 = start_ref[...], end_ref[...]
    rows = q_MxD.shape[0]

    def body(i, carry):
        acc_MxD, m_Mx1, l_Mx1 = carry
        start = pl.multiple_of(i * block_k, block_k)
        k_NxD = k_ref[pl.ds(start, block_k), :]
        v_NxD = v_ref[pl.ds(start, block_k), :]
        s_MxN = (
            lax.dot_general(
                q_MxD,
                k_NxD,
                (((1,), (1,)), ((), ())),
                precision=KERNEL_DOT_PRECISION,
                preferred_element_type=jnp.float32,
            )
            * sm_scale
        )
        pos_1xN = split_start + start + lax.broadcasted_iota(jnp.int32, (1, block_k), 1)
        visible_MxN = (pos_1xN >= start_Mx1) & (pos_1xN < end_Mx1)
        s_MxN = jnp.where(visible_MxN, s_MxN, NEG_INF)
        # A row with no visible key yet keeps m = NEG_INF and collects junk (exp(0) per key):
        # its first visible key rescales the junk by exp(NEG_INF - m) = 0, and a split where it
        # never sees one is weighted exp(NEG_INF - max) = 0 by the merge of the splits.
        m_new_Mx1 = jnp.maximum(m_Mx1, jnp.max(s_MxN, axis=1, keepdims=True))
        p_MxN = jnp.exp(s_MxN - m_new_Mx1)
        alpha_Mx1 = jnp.exp(m_Mx1 - m_new_Mx1)
        l_new_Mx1 = alpha_Mx1 * l_Mx1 + jnp.sum(p_MxN, axis=1, keepdims=True)
        pv_MxD = lax.dot_general(
            p_MxN.astype(v_NxD.dtype),
            v_NxD,
            (((1,), (0,)), ((), ())),
            precision=KERNEL_DOT_PRECISION,
            preferred_element_type=jnp.float32,
        )
        return alpha_Mx1 * acc_MxD + pv_MxD, m_new_Mx1, l_new_Mx1

    init = (
        jnp.zeros((rows, q_MxD.shape[1]), jnp.float32),
        jnp.full((rows, 1), NEG_INF, jnp.float32),
        jnp.zeros((rows, 1), jnp.float32),
    )
    acc_MxD, m_Mx1, l_Mx1 = lax.fori_loop(first, jnp.maximum(first, last), body, init)
    acc_ref[...] = acc_MxD
    m_ref[...] = m_Mx1
    l_ref[...] = l_Mx1


def _plan(num_rows, prompt_size, batch_heads, block_sizes):
    """Static tiling: (rows padded, row block, key block, split length, number of splits).

    batch_heads = B·K, the programs per row block and split.
    """
    if block_sizes.block_m is None:
        block_m = min(max(16, pl.next_power_of_2(num_rows)), block_sizes.max_block_m)
    else:
        block_m = block_sizes.block_m
    rows_padded = pl.cdiv(num_rows, block_m) * block_m
    block_k = min(block_sizes.block_k, max(16, pl.next_power_of_2(prompt_size)))
    key_blocks = pl.cdiv(prompt_size, block_k)
    if block_sizes.num_splits is None:
        wanted = pl.cdiv(_TARGET_PROGRAMS, batch_heads * (rows_padded // block_m))
        # The largest divisor of the key blocks not above the wanted count: no padding of P.
        num_splits = max(d for d in range(1, min(wanted, key_blocks) + 1) if key_blocks % d == 0)
    else:
        num_splits = min(block_sizes.num_splits, key_blocks)
    split_len = pl.cdiv(prompt_size, num_splits * block_k) * block_k
    return rows_padded, block_m, block_k, split_len, num_splits


def _prompt_call(
    lo_BR,
    hi_BR,
    q_BxKxMxD,
    start_BxMx1,
    end_BxMx1,
    k_BxPxKD,
    v_BxPxKD,
    *,
    sm_scale,
    block_k,
    block_m,
    split_len,
    block_sizes,
    interpret,
    tpu,
):
    """pallas_call of `_prompt_kernel` over the grid (B, K, row blocks, splits).

    Returns acc [B, K, splits, M, D], m and l [B, K, splits, M, 1], all fp32.
    """
    b, k, rows_padded, d = q_BxKxMxD.shape
    num_splits = k_BxPxKD.shape[1] // split_len
    row_blocks = rows_padded // block_m
    grid = (b, k, row_blocks, num_splits)
    sq = pl.squeezed
    if tpu:
        bounds_spec = pl.BlockSpec(memory_space=pl_tpu.SMEM)
        compiler_params = pl_tpu.CompilerParams(dimension_semantics=("parallel",) * len(grid))
    else:
        bounds_spec = pl.BlockSpec((b * row_blocks,), lambda bi, ki, mi, si: (0,))
        num_warps = block_sizes.num_warps or (8 if block_m >= 128 else 4)
        compiler_params = pl_triton.CompilerParams(
            num_warps=num_warps, num_stages=block_sizes.num_stages
        )
    window_spec = pl.BlockSpec((sq, block_m, 1), lambda bi, ki, mi, si: (bi, mi, 0))
    stat_spec = pl.BlockSpec((sq, sq, sq, block_m, 1), lambda bi, ki, mi, si: (bi, ki, si, mi, 0))
    stat_shape = jax.ShapeDtypeStruct((b, k, num_splits, rows_padded, 1), jnp.float32)
    return pl.pallas_call(
        functools.partial(_prompt_kernel, sm_scale=sm_scale, block_k=block_k,
                          row_blocks=row_blocks),
        grid=grid,
        in_specs=[
            bounds_spec,
            bounds_spec,
            pl.BlockSpec((sq, sq, block_m, d), lambda bi, ki, mi, si: (bi, ki, mi, 0)),
            window_spec,
            window_spec,
            pl.BlockSpec((sq, split_len, d), lambda bi, ki, mi, si: (bi, si, ki)),
            pl.BlockSpec((sq, split_len, d), lambda bi, ki, mi, si: (bi, si, ki)),
        ],
        out_specs=[
            pl.BlockSpec((sq, sq, sq, block_m, d), lambda bi, ki, mi, si: (bi, ki, si, mi, 0)),
            stat_spec,
            stat_spec,
        ],
        out_shape=[
            jax.ShapeDtypeStruct((b, k, num_splits, rows_padded, d), jnp.float32),
            stat_shape,
            stat_shape,
        ],
        compiler_params=compiler_params,
        interpret=interpret,
        name="shared_prefix_attention",
    )(lo_BR, hi_BR, q_BxKxMxD, start_BxMx1, end_BxMx1, k_BxPxKD, v_BxPxKD)


def _row_windows(start_BxG, len_BxG, rows_per_g, rows_padded, block_m):
    """Per query row (rows (g, t, r), padded by repeating the last row's window): start and end
    [B, M, 1]; and per row block the union [lo, hi) of its windows, flat [B · row blocks]."""
    b = start_BxG.shape[0]
    start_BxM = jnp.repeat(start_BxG, rows_per_g, axis=1)
    end_BxM = jnp.repeat(start_BxG + len_BxG, rows_per_g, axis=1)
    pad = ((0, 0), (0, rows_padded - start_BxM.shape[1]))
    start_BxM, end_BxM = (jnp.pad(x, pad, mode="edge") for x in (start_BxM, end_BxM))
    blocks = (b, rows_padded // block_m, block_m)
    lo_BR = jnp.min(start_BxM.reshape(blocks), axis=-1).reshape(-1)
    hi_BR = jnp.max(end_BxM.reshape(blocks), axis=-1).reshape(-1)
    return start_BxM[..., None], end_BxM[..., None], lo_BR, hi_BR


def shared_prefix_attention(
    q_BxGxTxHxD,
    k_prompt_BxPxKxD,
    v_prompt_BxPxKxD,
    prompt_len,
    key_start=None,
    *,
    sm_scale=None,
    block_sizes=BlockSizes(),
    interpret=False,
    out_dtype=None,
):
    """Attention of all G·T queries of each group over the group's prompt KV (Pallas kernel).

    Query group row g of group b sees the keys [key_start[b, g], key_start + len) with len
    `prompt_len` [B] (the same for every row) or [B, G]; key_start [B, G] defaults to 0 (see
    `key_windows`). Every window must hold a key. Returns (o [B, G, T, H, D] normalised over the
    row's window, in out_dtype (default: q's dtype); lse [B, G, T, H] fp32 log-sum-exp of the
    scaled scores).
    """
    _check_shapes(q_BxGxTxHxD, k_prompt_BxPxKxD, v_prompt_BxPxKxD)
    b, g, t, h, d = q_BxGxTxHxD.shape
    _, p, k, _ = k_prompt_BxPxKxD.shape
    sm_scale = default_scale(sm_scale, d)
    start_BxG, len_BxG = key_windows(prompt_len, key_start, b, g)

    q_BxKxMxD = _group_queries(q_BxGxTxHxD, k)
    num_rows = q_BxKxMxD.shape[2]
    rows_padded, block_m, block_k, split_len, num_splits = _plan(num_rows, p, b * k, block_sizes)
    # Triton tiles need a power-of-two width: a head dim such as 96 is zero-padded (scores and
    # the kept columns of the output are unchanged).
    dp = max(16, pl.next_power_of_2(d))
    if rows_padded != num_rows or dp != d:
        q_BxKxMxD = jnp.pad(q_BxKxMxD, ((0, 0), (0, 0), (0, rows_padded - num_rows), (0, dp - d)))
    p_padded = split_len * num_splits
    k_BxPxKxD, v_BxPxKxD = k_prompt_BxPxKxD, v_prompt_BxPxKxD
    if p_padded != p or dp != d:
        # Only when the cache length is not a multiple of the key block, or D is padded: the
        # sampler allocates its prompt cache in such multiples, so decoding never re-pads it.
        pad = ((0, 0), (0, p_padded - p), (0, 0), (0, dp - d))
        k_BxPxKxD, v_BxPxKxD = jnp.pad(k_BxPxKxD, pad), jnp.pad(v_BxPxKxD, pad)
    # Heads folded into the last axis (a free reshape): block (split_len, D) at column block k
    # selects one KV head without transposing the cache.
    k_BxPxKD = k_BxPxKxD.reshape(b, p_padded, k * dp)
    v_BxPxKD = v_BxPxKxD.reshape(b, p_padded, k * dp)

    call = functools.partial(
        _prompt_call,
        sm_scale=sm_scale,
        block_k=block_k,
        block_m=block_m,
        split_len=split_len,
        block_sizes=block_sizes,
        interpret=interpret,
    )
    start_BxMx1, end_BxMx1, lo_BR, hi_BR = _row_windows(start_BxG, len_BxG, t * (h // k),
                                                       rows_padded, block_m)
    args = (lo_BR, hi_BR, q_BxKxMxD, start_BxMx1, end_BxMx1, k_BxPxKD, v_BxPxKD)
    # The platform is known only at lowering: TPU gets Mosaic parameters and window bounds in
    # SMEM, every other platform (CUDA, and CPU in interpret mode) the Triton configuration.
    acc_BxKxSxMxD, m_BxKxSxMx1, l_BxKxSxMx1 = lax.platform_dependent(
        *args, tpu=functools.partial(call, tpu=True), default=functools.partial(call, tpu=False)
    )

    # Merge the splits in one pass: rescale each split's state to the common maximum.
    m_BxKxSxM = m_BxKxSxMx1[..., 0]
    m_BxKxM = jnp.max(m_BxKxSxM, axis=2)
    scale_BxKxSxM = jnp.exp(m_BxKxSxM - m_BxKxM[:, :, None])
    l_BxKxM = jnp.sum(l_BxKxSxMx1[..., 0] * scale_BxKxSxM, axis=2)
    acc_BxKxMxD = jnp.sum(acc_BxKxSxMxD * scale_BxKxSxM[..., None], axis=2)
    o_BxKxMxD = (acc_BxKxMxD / l_BxKxM[..., None])[:, :, :num_rows, :d]
    lse_BxKxM = (m_BxKxM + jnp.log(l_BxKxM))[:, :, :num_rows]
    o_BxGxTxHxD = _ungroup(o_BxKxMxD, g, t).astype(out_dtype or q_BxGxTxHxD.dtype)
    return o_BxGxTxHxD, _ungroup(lse_BxKxM, g, t)


def shared_prefix_attention_xla(
    q_BxGxTxHxD,
    k_prompt_BxPxKxD,
    v_prompt_BxPxKxD,
    prompt_len,
    key_start=None,
    *,
    sm_scale=None,
    block_sizes=BlockSizes(),
    interpret=False,
    out_dtype=None,
):
    """`shared_prefix_attention` in plain jnp: one [G·T·R, D] query matrix per KV head, each row
    masked to its key window.

    block_sizes and interpret are accepted for a drop-in signature and ignored.
    """
    del block_sizes, interpret
    _check_shapes(q_BxGxTxHxD, k_prompt_BxPxKxD, v_prompt_BxPxKxD)
    b, g, t, h, d = q_BxGxTxHxD.shape
    _, p, k, _ = k_prompt_BxPxKxD.shape
    sm_scale = default_scale(sm_scale, d)
    start_BxG, len_BxG = key_windows(prompt_len, key_start, b, g)

    q_BxKxMxD = _group_queries(q_BxGxTxHxD, k)
    s_BxKxMxP = (
        jnp.einsum(
            "bkmd,bpkd->bkmp", q_BxKxMxD, k_prompt_BxPxKxD, preferred_element_type=jnp.float32
        )
        * sm_scale
    )
    # Rows (g, t, r): the T·R rows of group row g share its window.
    pos_P = jnp.arange(p, dtype=jnp.int32)
    visible_BxGxP = ((pos_P[None, None, :] >= start_BxG[..., None])
                     & (pos_P[None, None, :] < (start_BxG + len_BxG)[..., None]))
    s_BxKxGxTRxP = s_BxKxMxP.reshape(b, k, g, t * (h // k), p)
    s_BxKxMxP = jnp.where(visible_BxGxP[:, None, :, None, :], s_BxKxGxTRxP, NEG_INF).reshape(
        s_BxKxMxP.shape)
    m_BxKxM = jnp.max(s_BxKxMxP, axis=-1)
    e_BxKxMxP = jnp.exp(s_BxKxMxP - m_BxKxM[..., None])
    l_BxKxM = jnp.sum(e_BxKxMxP, axis=-1)
    acc_BxKxMxD = jnp.einsum(
        "bkmp,bpkd->bkmd",
        e_BxKxMxP.astype(v_prompt_BxPxKxD.dtype),
        v_prompt_BxPxKxD,
        preferred_element_type=jnp.float32,
    )
    o_BxKxMxD = acc_BxKxMxD / l_BxKxM[..., None]
    lse_BxKxM = m_BxKxM + jnp.log(l_BxKxM)
    o_BxGxTxHxD = _ungroup(o_BxKxMxD, g, t).astype(out_dtype or q_BxGxTxHxD.dtype)
    return o_BxGxTxHxD, _ungroup(lse_BxKxM, g, t)
