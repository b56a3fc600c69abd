"""Shared-prefix decode attention over a cascade of prefix levels: each level's KV is read once
per step for every sample under it.

At a decode (T = 1) or speculative-verify (T = γ+1) step, sample g of row b has T new queries.
Its keys are, level by level, the entry it hangs under (a database schema, then a question, ...:
level l holds B_l entries [B_l, P_l, K, D] with real lengths [B_l], row b under entry
b // (B/B_l)), then its own suffix keys s <= q_start[b, g] + t ([B, G, S, K, D]; the new tokens'
K/V are already written at q_start .. q_start+T-1). Each part is computed separately and the
parts are merged exactly with the log-sum-exp helpers of `lse_merge`. Two-level decoding (one
prompt per row) is the cascade with one prefix level.

The prefix parts are the expensive ones. For level l and each KV head, the queries of all
(B/B_l)·G samples × T tokens × H//K query heads under an entry are stacked into one matrix, so
every KV block of the level is loaded once per entry and step and feeds a matrix product rather
than one matrix-vector product per sample.

Public functions:
- `shared_prefix_attention` — the Pallas kernel for one prefix level's part (o, lse).
- `shared_prefix_attention_xla` — the same part in plain jnp.
- `suffix_attention` (from `suffix_decode`, beside its Pallas kernel) — each sample's causal
  attention over its own suffix, in jnp.
- `shared_prefix_decode_attention` — levels ⊕ suffix, with impl "xla" or "pallas".
- `shared_prefix_decode_reference` — dense masked attention over all levels ++ suffix; ground truth.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pl_tpu
from jax.experimental.pallas import triton as pl_triton

from pallas_kernels import suffix_decode
from pallas_kernels.lse_merge import KERNEL_DOT_PRECISION, NEG_INF, merge_attention
from pallas_kernels.suffix_decode import default_scale, suffix_attention


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


def _check_shapes(q_BxGxTxHxD, k_prompt_BxPxKxD, v_prompt_BxPxKxD, prompt_len_B):
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
    if prompt_len_B.shape != (b,):
        raise ValueError(f"prompt_len must have shape ({b},), got {prompt_len_B.shape}")


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


def _prompt_kernel(plen_ref, q_ref, k_ref, v_ref, acc_ref, m_ref, l_ref, *, sm_scale, block_k):
    """One (group, kv head, row block, prompt split) program.

    plen_ref [B] (all prompt lengths); q_ref [Mb, D]; k_ref, v_ref [split_len, D] (this head's
    slice of the split). Outputs: acc [Mb, D] = Σ exp(s - m) v, m [Mb, 1] running max,
    l [Mb, 1] = Σ exp(s - m). Row statistics stay 2-D so the body also lowers through Mosaic TPU.
    """
    split_len = k_ref.shape[0]
    num_blocks = split_len // block_k
    split_start = pl.program_id(3) * split_len
    prompt_len = plen_ref[pl.program_id(0)]
    # Blocks at or beyond prompt_len hold no visible key: the loop stops before them.
    live_blocks = jnp.clip(pl.cdiv(prompt_len - split_start, block_k), 0, num_blocks)

    q_MxD = q_ref[...]
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
        s_MxN = jnp.where(pos_1xN < prompt_len, s_MxN, NEG_INF)
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
    acc_MxD, m_Mx1, l_Mx1 = lax.fori_loop(0, live_blocks, body, init)
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
    plen_B,
    q_BxKxMxD,
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
    grid = (b, k, rows_padded // block_m, num_splits)
    sq = pl.squeezed
    if tpu:
        plen_spec = pl.BlockSpec(memory_space=pl_tpu.SMEM)
        compiler_params = pl_tpu.CompilerParams(dimension_semantics=("parallel",) * len(grid))
    else:
        plen_spec = pl.BlockSpec((b,), lambda bi, ki, mi, si: (0,))
        num_warps = block_sizes.num_warps or (8 if block_m >= 128 else 4)
        compiler_params = pl_triton.CompilerParams(
            num_warps=num_warps, num_stages=block_sizes.num_stages
        )
    stat_spec = pl.BlockSpec((sq, sq, sq, block_m, 1), lambda bi, ki, mi, si: (bi, ki, si, mi, 0))
    stat_shape = jax.ShapeDtypeStruct((b, k, num_splits, rows_padded, 1), jnp.float32)
    return pl.pallas_call(
        functools.partial(_prompt_kernel, sm_scale=sm_scale, block_k=block_k),
        grid=grid,
        in_specs=[
            plen_spec,
            pl.BlockSpec((sq, sq, block_m, d), lambda bi, ki, mi, si: (bi, ki, mi, 0)),
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
    )(plen_B, q_BxKxMxD, k_BxPxKD, v_BxPxKD)


def shared_prefix_attention(
    q_BxGxTxHxD,
    k_prompt_BxPxKxD,
    v_prompt_BxPxKxD,
    prompt_len_B,
    *,
    sm_scale=None,
    block_sizes=BlockSizes(),
    interpret=False,
    out_dtype=None,
):
    """Attention of all G·T queries of each group over the group's prompt KV (Pallas kernel).

    Returns (o [B, G, T, H, D] normalised over the prompt keys j < prompt_len, in out_dtype
    (default: q's dtype); lse [B, G, T, H] fp32 log-sum-exp of the scaled scores).
    prompt_len must be >= 1.
    """
    _check_shapes(q_BxGxTxHxD, k_prompt_BxPxKxD, v_prompt_BxPxKxD, prompt_len_B)
    b, g, t, _, d = q_BxGxTxHxD.shape
    _, p, k, _ = k_prompt_BxPxKxD.shape
    sm_scale = default_scale(sm_scale, d)

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
    args = (prompt_len_B.astype(jnp.int32), q_BxKxMxD, k_BxPxKD, v_BxPxKD)
    # The platform is known only at lowering: TPU gets Mosaic parameters and prompt lengths in
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
    prompt_len_B,
    *,
    sm_scale=None,
    block_sizes=BlockSizes(),
    interpret=False,
    out_dtype=None,
):
    """`shared_prefix_attention` in plain jnp: one [G·T·R, D] query matrix per KV head.

    block_sizes and interpret are accepted for a drop-in signature and ignored.
    """
    del block_sizes, interpret
    _check_shapes(q_BxGxTxHxD, k_prompt_BxPxKxD, v_prompt_BxPxKxD, prompt_len_B)
    _, g, t, _, d = q_BxGxTxHxD.shape
    _, p, k, _ = k_prompt_BxPxKxD.shape
    sm_scale = default_scale(sm_scale, d)

    q_BxKxMxD = _group_queries(q_BxGxTxHxD, k)
    s_BxKxMxP = (
        jnp.einsum(
            "bkmd,bpkd->bkmp", q_BxKxMxD, k_prompt_BxPxKxD, preferred_element_type=jnp.float32
        )
        * sm_scale
    )
    visible_BxP = jnp.arange(p)[None, :] < prompt_len_B[:, None]
    s_BxKxMxP = jnp.where(visible_BxP[:, None, None, :], s_BxKxMxP, NEG_INF)
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


_SUFFIX_BLOCKS = suffix_decode.BlockSizes()


def _check_levels(q_BxGxTxHxD, prefix_levels):
    if not prefix_levels:
        raise ValueError("decode attention needs at least one prefix level")
    b = q_BxGxTxHxD.shape[0]
    for i, (k_NxPxKxD, _v, _len) in enumerate(prefix_levels):
        if b % k_NxPxKxD.shape[0]:
            raise ValueError(
                f"prefix level {i} has {k_NxPxKxD.shape[0]} entries, which do not divide the "
                f"{b} rows of the queries"
            )


def stack_under_entries(x_BxGx_, num_entries):
    """[B, G, ...] -> [N, (B/N)·G, ...]: the rows under each of N prefix entries as one group.

    Row b hangs under entry b // (B/N) (levels nest row-major), so this is a free reshape.
    """
    b, g = x_BxGx_.shape[:2]
    return x_BxGx_.reshape(num_entries, (b // num_entries) * g, *x_BxGx_.shape[2:])


def shared_prefix_decode_attention(
    q_BxGxTxHxD,
    prefix_levels,
    k_suffix_BxGxSxKxD,
    v_suffix_BxGxSxKxD,
    q_start_BxG,
    *,
    impl="xla",
    sm_scale=None,
    block_sizes=BlockSizes(),
    suffix_block_sizes=_SUFFIX_BLOCKS,
    interpret=False,
    prompt_fn=None,
    suffix_fn=None,
):
    """Decode/verify attention over a cascade: (level 0) ⊕ ... ⊕ (last level) ⊕ (own suffix).

    prefix_levels: a sequence of (k [N, P, K, D], v [N, P, K, D], len [N]) per level, where level
    l has N = B_l entries, N divides B, and row b of the queries hangs under entry b // (B/N).
    For each level the queries of all rows under an entry are stacked into one group
    (`stack_under_entries`), so the level's KV block is read once per step for all of them.

    impl "pallas" runs the prefix parts with the Pallas kernel (tiles `block_sizes`) and the
    suffix part with `suffix_decode.suffix_attention_pallas` (tiles `suffix_block_sizes`), which
    visits only each sample's written keys; "xla" runs both in jnp. `prompt_fn` / `suffix_fn`,
    when given, replace the Pallas prefix / suffix functions (same signatures, e.g. the kernels
    under shard_map). Returns o [B, G, T, H, D] in q's dtype.
    """
    if impl not in ("xla", "pallas"):
        raise ValueError(f"impl must be 'xla' or 'pallas', got {impl!r}")
    _check_levels(q_BxGxTxHxD, prefix_levels)
    if impl == "pallas":
        prompt_fn = prompt_fn or shared_prefix_attention
        suffix_fn = functools.partial(suffix_fn or suffix_decode.suffix_attention_pallas,
                                      block_sizes=suffix_block_sizes, interpret=interpret)
    else:
        prompt_fn, suffix_fn = shared_prefix_attention_xla, suffix_attention
    b, g, t, h, d = q_BxGxTxHxD.shape
    # Every part stays fp32 until after the last merge, so a bf16 output is rounded once.
    o_BxGxTxHxD, lse_BxGxTxH = suffix_fn(
        q_BxGxTxHxD,
        k_suffix_BxGxSxKxD,
        v_suffix_BxGxSxKxD,
        q_start_BxG,
        sm_scale=sm_scale,
        out_dtype=jnp.float32,
    )
    for k_NxPxKxD, v_NxPxKxD, len_N in prefix_levels:
        o_level, lse_level = prompt_fn(
            stack_under_entries(q_BxGxTxHxD, k_NxPxKxD.shape[0]),
            k_NxPxKxD,
            v_NxPxKxD,
            len_N,
            sm_scale=sm_scale,
            block_sizes=block_sizes,
            interpret=interpret,
            out_dtype=jnp.float32,
        )
        o_BxGxTxHxD, lse_BxGxTxH = merge_attention(
            o_level.reshape(b, g, t, h, d), lse_level.reshape(b, g, t, h), o_BxGxTxHxD, lse_BxGxTxH
        )
    return o_BxGxTxHxD.astype(q_BxGxTxHxD.dtype)


def shared_prefix_decode_reference(
    q_BxGxTxHxD,
    prefix_levels,
    k_suffix_BxGxSxKxD,
    v_suffix_BxGxSxKxD,
    q_start_BxG,
    *,
    sm_scale=None,
):
    """Dense ground truth: per sample, keys = its ancestor entry of every level ++ own suffix,
    under one mask; fp32 math."""
    _check_levels(q_BxGxTxHxD, prefix_levels)
    b, g, t, h, d = q_BxGxTxHxD.shape
    k = k_suffix_BxGxSxKxD.shape[3]
    s = k_suffix_BxGxSxKxD.shape[2]
    sm_scale = default_scale(sm_scale, d)
    f32 = jnp.float32

    keys, values, masks = [], [], []
    for k_NxPxKxD, v_NxPxKxD, len_N in prefix_levels:
        n, p = k_NxPxKxD.shape[:2]
        # Row b's ancestor entry at this level, for every sample of the row.
        entry_B = jnp.arange(b) // (b // n)
        for out, x_NxPxKxD in ((keys, k_NxPxKxD), (values, v_NxPxKxD)):
            out.append(jnp.broadcast_to(x_NxPxKxD[entry_B][:, None], (b, g, p, k, d)))
        visible_BxP = jnp.arange(p)[None, :] < len_N[entry_B][:, None]
        masks.append(jnp.broadcast_to(visible_BxP[:, None, None, :], (b, g, t, p)))
    keys.append(k_suffix_BxGxSxKxD)
    values.append(v_suffix_BxGxSxKxD)
    last_BxGxT = q_start_BxG[:, :, None] + jnp.arange(t)[None, None, :]
    masks.append(jnp.arange(s)[None, None, None, :] <= last_BxGxT[..., None])

    def per_sample(parts):
        x_BxGxNxKxD = jnp.concatenate(parts, axis=2).astype(f32)
        return jnp.repeat(x_BxGxNxKxD, h // k, axis=3)  # [B, G, N, H, D]

    k_BxGxNxHxD, v_BxGxNxHxD = per_sample(keys), per_sample(values)
    mask_BxGxTxN = jnp.concatenate(masks, axis=-1)
    scores_BxGxHxTxN = (
        jnp.einsum("bgthd,bgnhd->bghtn", q_BxGxTxHxD.astype(f32), k_BxGxNxHxD) * sm_scale
    )
    scores_BxGxHxTxN = jnp.where(mask_BxGxTxN[:, :, None], scores_BxGxHxTxN, -jnp.inf)
    probs_BxGxHxTxN = jax.nn.softmax(scores_BxGxHxTxN, axis=-1)
    o_BxGxTxHxD = jnp.einsum("bghtn,bgnhd->bgthd", probs_BxGxHxTxN, v_BxGxNxHxD)
    return o_BxGxTxHxD.astype(q_BxGxTxHxD.dtype)
