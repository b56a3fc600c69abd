"""Fused Pallas tree attention on packed prefix trees: forward kernel, custom_vjp and public API.

Rows are packed token streams [N, T]; key j is visible to query i iff j ≤ i < subtree_end[j]
(see `tree_blocks.py`). The kernels are block-sparse flash attention driven by the host-side
lists of `build_tree_blocks`: the forward and dQ programs of a query block visit only the key
blocks in `kv_index[n, qb, :kv_count[n, qb]]`; the dK/dV program of a key block visits only the
query blocks in `q_index[n, kb, :q_count[n, kb]]`. A shared prompt's key block is listed by every
query block of its descendants, so its dK/dV accumulate over the whole group in one program and
the prompt's backward runs once.

Token blocks are implied by the metadata: block_q_tokens = T // kv_count.shape[1] and
block_k_tokens = T // q_count.shape[1] (both powers of two; block_k_tokens ≥ 16).

Kernel layout: the query heads of one kv head are folded into the query rows (row = token · Hp +
head, Hp = H // K rounded up to a power of two, extra heads zero), so each K/V tile is read once
for all of them; a query block holds block_q_tokens · Hp rows. D is zero-padded to a power of two
≥ 16. The kernel math lives in small backend-neutral helpers (`tree_mask`, `masked_scores`,
`online_softmax_update`, ...); the Pallas bodies are thin shells around them, lowered through
Triton (GPU) or Mosaic (TPU). Dots use `KERNEL_DOT_PRECISION` (TF32 for fp32 inputs on a GPU:
IEEE fp32 dots spill registers at these tiles). The mask is applied on every tile
(skipping the mask on full tiles waits for a GPU measurement). The backward kernels live in
`tree_attention_bwd.py`.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.lse_merge import KERNEL_DOT_PRECISION, NEG_INF
from pallas_kernels.tree_blocks import TreeBlocks


def _is_power_of_2(n):
    return n > 0 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Per-kernel Triton launch parameters (tile sizes come from the `TreeBlocks` metadata).

    Ignored in interpret mode and on TPU.
    """

    # Forward kernel.
    num_warps: int = 4
    num_stages: int = 3
    # Backward dQ kernel.
    num_warps_dq: int = 4
    num_stages_dq: int = 3
    # Backward dK/dV kernel.
    num_warps_dkv: int = 8
    num_stages_dkv: int = 2

    def __post_init__(self):
        for name in ("num_warps", "num_warps_dq", "num_warps_dkv"):
            value = getattr(self, name)
            if not (_is_power_of_2(value) and value <= 32):
                raise ValueError(f"{name}={value} must be a power of two in [1, 32]")
        for name in ("num_stages", "num_stages_dq", "num_stages_dkv"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}={value} must be ≥ 1")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static facts every kernel of one call needs (hashable, a nondiff argument)."""

    sm_scale: float
    block_k: int  # key tokens per block
    block_rows: int  # query rows per block: block_q_tokens · heads_per_kv
    heads_per_kv: int  # Hp: H // K rounded up to a power of two, folded into the query rows
    block_sizes: BlockSizes
    interpret: bool


# ---- Backend-neutral block math (shared by the forward and backward kernels) -------------------


def _dot(a, b, contract):
    # The precision is stated, so a global matmul-precision setting cannot change the kernel
    # (see lse_merge.KERNEL_DOT_PRECISION: TF32 on GPU, fp32 when interpreted).
    return lax.dot_general(
        a, b, (contract, ((), ())), precision=KERNEL_DOT_PRECISION,
        preferred_element_type=jnp.float32,
    )


def dot_nt(a_MxD, b_NxD):
    """a · bᵀ in fp32 ([M, N])."""
    return _dot(a_MxD, b_NxD, ((1,), (1,)))


def dot_nn(a_MxN, b_NxD):
    """a · b in fp32 ([M, D])."""
    return _dot(a_MxN, b_NxD, ((1,), (0,)))


def dot_tn(a_MxN, b_MxD):
    """aᵀ · b in fp32 ([N, D])."""
    return _dot(a_MxN, b_MxD, ((0,), (0,)))


def query_positions(row_start, block_rows, heads_per_kv):
    """Token position [block_rows, 1] of each query row of a block (rows interleave heads)."""
    rows_Rx1 = row_start + lax.broadcasted_iota(jnp.int32, (block_rows, 1), 0)
    return lax.div(rows_Rx1, jnp.int32(heads_per_kv))


def key_positions(key_start, block_k):
    """Token position [1, block_k] of each key of a block."""
    return key_start + lax.broadcasted_iota(jnp.int32, (1, block_k), 1)


def tree_mask(q_pos_Rx1, k_pos_1xB, end_1xB):
    """The tree rule on a tile: key j visible to query i iff j ≤ i < subtree_end[j]."""
    return (k_pos_1xB <= q_pos_Rx1) & (q_pos_Rx1 < end_1xB)


def masked_scores(q_RxD, k_BxD, mask_RxB, sm_scale):
    """Scaled scores q·kᵀ in fp32, NEG_INF where the mask is False."""
    return jnp.where(mask_RxB, dot_nt(q_RxD, k_BxD) * sm_scale, NEG_INF)


def init_softmax_state(block_rows, head_dim):
    """Empty online-softmax state (acc [R, D], running max m [R], running sum l [R])."""
    return (
        jnp.zeros((block_rows, head_dim), jnp.float32),
        jnp.full((block_rows,), NEG_INF, jnp.float32),
        jnp.zeros((block_rows,), jnp.float32),
    )


def online_softmax_update(state, s_RxB, v_BxD):
    """Fold one key block's scores and values into the state (flash attention's inner step).

    A row fully masked so far carries junk with m = NEG_INF; the first visible score rescales it
    by exp(NEG_INF - m) = 0, and every row sees at least itself.
    """
    acc_RxD, m_R, l_R = state
    m_new_R = jnp.maximum(m_R, jnp.max(s_RxB, axis=1))
    alpha_R = jnp.exp(m_R - m_new_R)
    p_RxB = jnp.exp(s_RxB - m_new_R[:, None])
    l_new_R = alpha_R * l_R + jnp.sum(p_RxB, axis=1)
    return alpha_R[:, None] * acc_RxD + probs_times_values(p_RxB, v_BxD), m_new_R, l_new_R


def probs_times_values(p_RxB, v_BxD):
    """p · v in fp32 with p kept to ~16 mantissa bits for narrow v: p = hi + lo, both rounded to
    v's dtype, two tensor-core products. Rounding p itself to bf16 (7 bits) would cost ~1e-3 on
    log-probs, the whole bf16 budget; hi + lo keeps the attention output near fp32."""
    if v_BxD.dtype == jnp.float32:
        return dot_nn(p_RxB, v_BxD)
    hi_RxB = p_RxB.astype(v_BxD.dtype)
    lo_RxB = (p_RxB - hi_RxB.astype(jnp.float32)).astype(v_BxD.dtype)
    return dot_nn(hi_RxB, v_BxD) + dot_nn(lo_RxB, v_BxD)


def finish_softmax(state):
    """Normalised output [R, D] (fp32) and log-sum-exp [R] of a final state."""
    acc_RxD, m_R, l_R = state
    return acc_RxD / l_R[:, None], m_R + jnp.log(l_R)


# ---- Pallas plumbing -----------------------------------------------------------------------


def pallas_call_per_platform(kernel, *, interpret, num_warps, num_stages, **kwargs):
    """pl.pallas_call with Triton parameters on GPU and Mosaic parameters on TPU.

    The kernels are backend-neutral; only the compiler parameters differ, so the backend is
    picked at lowering time. Every grid axis is parallel (each program owns its output block).
    """
    if interpret:
        return pl.pallas_call(kernel, interpret=True, **kwargs)
    gpu_call = pl.pallas_call(
        kernel,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        **kwargs,
    )
    tpu_call = pl.pallas_call(
        kernel,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3),
        **kwargs,
    )
    return lambda *args: lax.platform_dependent(*args, tpu=tpu_call, default=gpu_call)


def metadata_spec(meta):
    """The whole (small) int32 metadata array for every program; kernels index it with their ids.

    Scalar memory on TPU (scalar reads from vector memory do not lower, and Mosaic's tiling rule
    rejects a one-row block of it); Triton ignores the memory space.
    """
    return pl.BlockSpec(meta.shape, lambda *_: (0,) * meta.ndim, memory_space=pltpu.SMEM)


# ---- Forward kernel -----------------------------------------------------------------------------


def _fwd_kernel(kv_index_ref, kv_count_ref, q_ref, k_ref, v_ref, end_ref, o_ref, lse_ref, *, cfg):
    n, qb = pl.program_id(0), pl.program_id(2)
    block_rows, head_dim = q_ref.shape
    bk = cfg.block_k
    q = q_ref[...]
    q_pos_Rx1 = query_positions(qb * block_rows, block_rows, cfg.heads_per_kv)

    def body(t, state):
        start = pl.multiple_of(kv_index_ref[n, qb, t] * bk, bk)
        keys = pl.ds(start, bk)
        mask = tree_mask(q_pos_Rx1, key_positions(start, bk), end_ref[:, keys])
        s = masked_scores(q, k_ref[keys, :], mask, cfg.sm_scale)
        return online_softmax_update(state, s, v_ref[keys, :])

    state = lax.fori_loop(
        jnp.int32(0), kv_count_ref[n, qb], body, init_softmax_state(block_rows, head_dim)
    )
    o, lse = finish_softmax(state)
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[0, :] = lse


def query_grid_specs(block_rows: int, row_len: int, head_dim: int):
    """BlockSpecs of a (N, K, query blocks) grid, shared by the forward and dQ kernels: the block's
    query rows [R, D], their row statistics (lse, delta) [1, R], the row's whole K or V [T, D]
    (read tile by tile through the block lists) and its subtree ends [1, T]."""
    rows = pl.BlockSpec((None, None, block_rows, head_dim), lambda b, h, i: (b, h, i, 0))
    row_stats = pl.BlockSpec((None, None, 1, block_rows), lambda b, h, i: (b, h, 0, i))
    whole_kv = pl.BlockSpec((None, None, row_len, head_dim), lambda b, h, i: (b, h, 0, 0))
    whole_end = pl.BlockSpec((None, 1, row_len), lambda b, h, i: (b, 0, 0))
    return rows, row_stats, whole_kv, whole_end


def _forward(q, k, v, end, kv_index, kv_count, cfg):
    """Kernel-layout forward: q [N,K,T·Hp,Dp], k/v [N,K,T,Dp], end [N,1,T].

    Returns (o like q, lse [N,K,1,T·Hp] fp32).
    """
    n, kh, num_rows, dp = q.shape
    t = k.shape[2]
    br = cfg.block_rows
    rows, row_stats, whole_kv, whole_end = query_grid_specs(br, t, dp)
    return pallas_call_per_platform(
        functools.partial(_fwd_kernel, cfg=cfg),
        interpret=cfg.interpret,
        num_warps=cfg.block_sizes.num_warps,
        num_stages=cfg.block_sizes.num_stages,
        grid=(n, kh, num_rows // br),
        in_specs=[
            metadata_spec(kv_index),
            metadata_spec(kv_count),
            rows,
            whole_kv,
            whole_kv,
            whole_end,
        ],
        out_specs=[rows, row_stats],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((n, kh, 1, num_rows), jnp.float32),
        ],
        name="tree_attention_fwd",
    )(kv_index, kv_count, q, k, v, end)


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _fused(q, k, v, end, kv_index, kv_count, q_index, q_count, cfg):
    o, _ = _forward(q, k, v, end, kv_index, kv_count, cfg)
    return o


def _fused_fwd(q, k, v, end, kv_index, kv_count, q_index, q_count, cfg):
    o, lse = _forward(q, k, v, end, kv_index, kv_count, cfg)
    return o, (q, k, v, end, kv_index, kv_count, q_index, q_count, o, lse)


def _fused_bwd(cfg, residuals, do):
    # Imported late: the backward module builds on this module's helpers.
    from pallas_kernels import tree_attention_bwd

    return tree_attention_bwd.backward(cfg, residuals, do)


_fused.defvjp(_fused_fwd, _fused_bwd)


# ---- Public function ----------------------------------------------------------------------------


# Query rows per block the defaults aim for (tokens × folded heads) and key tokens per block.
DEFAULT_QUERY_ROWS = 64
DEFAULT_KEY_TOKENS = 64


def default_token_blocks(heads_per_kv: int, head_dim: int, dtype) -> tuple[int, int]:
    """(block_q_tokens, block_k_tokens) for the metadata of a model with H // K = heads_per_kv:
    DEFAULT_QUERY_ROWS query rows (tokens × folded heads) and DEFAULT_KEY_TOKENS keys per block,
    halved for fp32 inputs whose padded head dim is ≥ 128 (such tiles spill on sm_90).
    """
    hp = pl.next_power_of_2(heads_per_kv)
    wide_fp32 = jnp.dtype(dtype).itemsize >= 4 and max(16, pl.next_power_of_2(head_dim)) >= 128
    shrink = 2 if wide_fp32 else 1
    rows = DEFAULT_QUERY_ROWS // shrink
    return max(1, rows // hp), DEFAULT_KEY_TOKENS // shrink


def token_blocks(seq_len, blocks: TreeBlocks):
    """(block_q_tokens, block_k_tokens) implied by the metadata of rows of seq_len tokens.

    Raises ValueError when seq_len does not divide into the metadata's blocks or the blocks are
    not tiles the kernels support (powers of two, key blocks ≥ 16).
    """
    num_q, num_k = blocks.num_blocks
    if seq_len % num_q or seq_len % num_k:
        raise ValueError(
            f"row length {seq_len} must divide into the metadata's {num_q} query blocks and "
            f"{num_k} key blocks"
        )
    block_q, block_k = seq_len // num_q, seq_len // num_k
    if not _is_power_of_2(block_q) or not _is_power_of_2(block_k) or block_k < 16:
        raise ValueError(
            f"token blocks ({block_q}, {block_k}) must be powers of two, key blocks ≥ 16"
        )
    return block_q, block_k


def _check_inputs(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks):
    n, t, h, d = q_NxTxHxD.shape
    if k_NxTxKxD.shape != v_NxTxKxD.shape or k_NxTxKxD.shape[:2] != (n, t):
        raise ValueError(f"q {q_NxTxHxD.shape}, k {k_NxTxKxD.shape}, v {v_NxTxKxD.shape} differ")
    if k_NxTxKxD.shape[3] != d or h % k_NxTxKxD.shape[2]:
        raise ValueError(f"q {q_NxTxHxD.shape} does not fit k {k_NxTxKxD.shape} (GQA needs K | H)")
    if tuple(subtree_end_NxT.shape) != (n, t):
        raise ValueError(f"subtree_end must have shape {(n, t)}, got {subtree_end_NxT.shape}")
    num_q, num_k = blocks.num_blocks
    for name, array, lead in [
        ("kv_index", blocks.kv_index_NxQxM, (n, num_q)),
        ("q_index", blocks.q_index_NxKxM, (n, num_k)),
        ("kv_count", blocks.kv_count_NxQ, (n, num_q)),
        ("q_count", blocks.q_count_NxK, (n, num_k)),
    ]:
        if tuple(array.shape[:2]) != lead:
            raise ValueError(f"blocks.{name} has shape {array.shape}, expected {lead}[, M]")


@functools.partial(jax.jit, static_argnames=("sm_scale", "block_sizes", "interpret"))
def tree_attention(
    q_NxTxHxD,
    k_NxTxKxD,
    v_NxTxKxD,
    subtree_end_NxT,
    blocks: TreeBlocks,
    *,
    sm_scale=None,
    block_sizes: BlockSizes = BlockSizes(),
    interpret: bool = False,
):
    """Fused Pallas tree attention (forward and backward kernels under `jax.custom_vjp`).

    blocks: `build_tree_blocks(subtree_end_NxT, block_q, block_k)` of the same rows; the token
    blocks are implied by its shapes (block_q_tokens = T // kv_count.shape[1], block_k_tokens =
    T // q_count.shape[1]), so T must be a multiple of both. Query head h reads kv head
    h // (H // K). D need not be a power of two (zero-padded here). Returns o [N, T, H, D] in q's
    dtype; gradients flow to q, k and v. `interpret=True` runs the kernels on CPU; otherwise they
    lower through Triton (GPU) or Mosaic (TPU; use 128-token blocks there).
    """
    _check_inputs(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks)
    n, t, h, d = q_NxTxHxD.shape
    kh = k_NxTxKxD.shape[2]
    hg = h // kh
    block_q, block_k = token_blocks(t, blocks)
    # Triton tiles are powers of two: fold a power-of-two count of heads, the extra ones zero.
    hp = pl.next_power_of_2(hg)
    if block_q * hp < 16:
        raise ValueError(f"query blocks of {block_q} tokens × {hp} heads must hold ≥ 16 rows")
    dp = max(16, pl.next_power_of_2(d))
    cfg = KernelConfig(
        sm_scale=1.0 / math.sqrt(d) if sm_scale is None else float(sm_scale),
        block_k=block_k,
        block_rows=block_q * hp,
        heads_per_kv=hp,
        block_sizes=block_sizes,
        interpret=interpret,
    )
    q_NxTxKxHpxDp = jnp.pad(
        q_NxTxHxD.reshape(n, t, kh, hg, d), ((0, 0), (0, 0), (0, 0), (0, hp - hg), (0, dp - d))
    )
    q = q_NxTxKxHpxDp.transpose(0, 2, 1, 3, 4).reshape(n, kh, t * hp, dp)
    k, v = (
        jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, dp - d))).transpose(0, 2, 1, 3)
        for x in (k_NxTxKxD, v_NxTxKxD)
    )
    end = jnp.asarray(subtree_end_NxT, jnp.int32).reshape(n, 1, t)
    kv_index, kv_count, q_index, q_count = (
        jnp.asarray(x, jnp.int32)
        for x in (
            blocks.kv_index_NxQxM,
            blocks.kv_count_NxQ,
            blocks.q_index_NxKxM,
            blocks.q_count_NxK,
        )
    )
    o = _fused(q, k, v, end, kv_index, kv_count, q_index, q_count, cfg)
    o_NxTxKxHpxDp = o.reshape(n, kh, t, hp, dp).transpose(0, 2, 1, 3, 4)
    return o_NxTxKxHpxDp[:, :, :, :hg, :d].reshape(n, t, h, d)
