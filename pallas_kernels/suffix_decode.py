"""The suffix part of shared-prefix decoding as a Pallas kernel that visits only written keys.

At a decode or verify step, sample (b, g) has T new queries at suffix positions q_start ..
q_start+T-1 (their K/V already written); query t sees the sample's own suffix keys
s <= q_start[b, g] + t. The suffix cache is allocated for the whole response (S keys), but a
sample has written only q_start + T of them: the jnp path (`suffix_attention`)
scores all S keys of every sample at every step, this kernel stops at the last key block that
holds a visible key, so a step reads about q_start + T keys per sample instead of S.

Grid (B, G, K): one program per sample and KV head, whose T·(H/K) query rows form one tile
(rows ordered (t, query head)). The block math is the backend-neutral helpers of
`tree_attention_pallas` (scores, online softmax, hi/lo P·V for narrow dtypes); only the grid and
the mask are this kernel's. The suffix cache is read in place: heads stay folded into the last
axis ([B, G, S, K·D], a free reshape), and a block of key rows at column block k is one head.

Public functions:
- `suffix_attention_pallas` — the Pallas kernel: (o, lse).
- `suffix_attention` — the same math in plain jnp over all S keys (the XLA path).
- `default_scale` — the softmax scale 1/√D unless one is given.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.lse_merge import NEG_INF
from pallas_kernels.tree_attention_pallas import (
    finish_softmax,
    init_softmax_state,
    key_positions,
    masked_scores,
    metadata_spec,
    online_softmax_update,
    pallas_call_per_platform,
    query_positions,
)


def default_scale(sm_scale, head_dim):
    """1/√head_dim unless `sm_scale` is given."""
    return 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the suffix kernel: keys per inner-loop step and Triton launch parameters."""

    # Suffix keys per inner-loop iteration (a power of two >= 16). A suffix length that is not a
    # multiple of it uses the largest power of two (>= 16) dividing the length instead, so the
    # cache is read in place rather than re-padded every step.
    block_k: int = 64
    # Triton launch parameters (ignored in interpret mode).
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if self.block_k < 16 or self.block_k & (self.block_k - 1):
            raise ValueError(f"block_k must be a power of two >= 16, got {self.block_k}")
        if self.num_warps < 1 or self.num_stages < 1:
            raise ValueError("num_warps and num_stages must be >= 1")


def _suffix_kernel(q_start_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, sm_scale, block_k, t,
                   heads_per_kv):
    """One (row, sample, kv head) program: q_start_ref [B, G] (every sample's), q_ref [M, D]
    (rows (t, query head)), k_ref, v_ref [S, D] (this sample's suffix, this head). Outputs the
    normalised o [M, D] and lse [1, M]."""
    rows, head_dim = q_ref.shape
    q_start = q_start_ref[pl.program_id(0), pl.program_id(1)]
    # Key blocks at or beyond q_start + T hold no visible key: the loop stops before them.
    live_blocks = jnp.minimum(pl.cdiv(q_start + t, block_k), k_ref.shape[0] // block_k)
    q = q_ref[...]
    last_Mx1 = q_start + query_positions(0, rows, heads_per_kv)

    def body(i, state):
        start = pl.multiple_of(i * block_k, block_k)
        keys = pl.ds(start, block_k)
        mask = key_positions(start, block_k) <= last_Mx1
        s = masked_scores(q, k_ref[keys, :], mask, sm_scale)
        return online_softmax_update(state, s, v_ref[keys, :])

    state = lax.fori_loop(jnp.int32(0), live_blocks, body, init_softmax_state(rows, head_dim))
    o, lse = finish_softmax(state)
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[0, :] = lse


def _key_block(suffix_len, block_k):
    """(key block, padded suffix length): the largest power of two <= block_k dividing S, or, when
    S is not a multiple of 16, block_k itself with S padded."""
    largest = suffix_len & -suffix_len
    if largest >= 16:
        return min(block_k, largest), suffix_len
    return block_k, pl.cdiv(suffix_len, block_k) * block_k


def suffix_attention_pallas(
    q_BxGxTxHxD,
    k_suffix_BxGxSxKxD,
    v_suffix_BxGxSxKxD,
    q_start_BxG,
    *,
    sm_scale=None,
    block_sizes=BlockSizes(),
    interpret=False,
    out_dtype=None,
):
    """Each sample's causal attention over its own suffix: query t sees keys s <= q_start + t.

    Returns (o [B, G, T, H, D] in out_dtype, default q's dtype; lse [B, G, T, H] fp32). The new
    tokens' keys are in the suffix cache already (q_start + T <= S), so every query sees at least
    its own key.
    """
    b, g, t, h, d = q_BxGxTxHxD.shape
    s, k = k_suffix_BxGxSxKxD.shape[2:4]
    if k_suffix_BxGxSxKxD.shape != (b, g, s, k, d) or v_suffix_BxGxSxKxD.shape != (b, g, s, k, d):
        raise ValueError(f"q {q_BxGxTxHxD.shape} does not match suffix caches "
                         f"{k_suffix_BxGxSxKxD.shape}, {v_suffix_BxGxSxKxD.shape}")
    if h % k:
        raise ValueError(f"query heads {h} must be a multiple of kv heads {k}")
    if q_start_BxG.shape != (b, g):
        raise ValueError(f"q_start must have shape ({b}, {g}), got {q_start_BxG.shape}")
    r = h // k
    sm_scale = default_scale(sm_scale, d)
    block_k, s_padded = _key_block(s, block_sizes.block_k)
    # Triton tiles need power-of-two widths: rows and a head dim such as 96 are zero-padded.
    rows, dp = max(16, pl.next_power_of_2(t * r)), max(16, pl.next_power_of_2(d))

    q_BxGxKxMxD = q_BxGxTxHxD.reshape(b, g, t, k, r, d).transpose(0, 1, 3, 2, 4, 5)
    q_BxGxKxMxD = q_BxGxKxMxD.reshape(b, g, k, t * r, d)
    q_BxGxKxMxD = jnp.pad(q_BxGxKxMxD, ((0, 0),) * 3 + ((0, rows - t * r), (0, dp - d)))
    if s_padded != s or dp != d:
        pad = ((0, 0), (0, 0), (0, s_padded - s), (0, 0), (0, dp - d))
        k_suffix_BxGxSxKxD = jnp.pad(k_suffix_BxGxSxKxD, pad)
        v_suffix_BxGxSxKxD = jnp.pad(v_suffix_BxGxSxKxD, pad)
    k_BxGxSxKD = k_suffix_BxGxSxKxD.reshape(b, g, s_padded, k * dp)
    v_BxGxSxKD = v_suffix_BxGxSxKxD.reshape(b, g, s_padded, k * dp)

    rows_spec = pl.BlockSpec((None, None, None, rows, dp), lambda bi, gi, ki: (bi, gi, ki, 0, 0))
    kv_spec = pl.BlockSpec((None, None, s_padded, dp), lambda bi, gi, ki: (bi, gi, 0, ki))
    stats_spec = pl.BlockSpec((None, None, None, 1, rows), lambda bi, gi, ki: (bi, gi, ki, 0, 0))
    q_start_BxG = q_start_BxG.astype(jnp.int32)
    o_BxGxKxMxD, lse_BxGxKx1xM = pallas_call_per_platform(
        functools.partial(_suffix_kernel, sm_scale=sm_scale, block_k=block_k, t=t, heads_per_kv=r),
        interpret=interpret,
        num_warps=block_sizes.num_warps,
        num_stages=block_sizes.num_stages,
        grid=(b, g, k),
        in_specs=[metadata_spec(q_start_BxG), rows_spec, kv_spec, kv_spec],
        out_specs=[rows_spec, stats_spec],
        out_shape=[
            jax.ShapeDtypeStruct((b, g, k, rows, dp), out_dtype or q_BxGxTxHxD.dtype),
            jax.ShapeDtypeStruct((b, g, k, 1, rows), jnp.float32),
        ],
        name="suffix_attention",
    )(q_start_BxG, q_BxGxKxMxD, k_BxGxSxKD, v_BxGxSxKD)

    o_BxGxKxTxRxD = o_BxGxKxMxD[:, :, :, : t * r, :d].reshape(b, g, k, t, r, d)
    o_BxGxTxHxD = o_BxGxKxTxRxD.transpose(0, 1, 3, 2, 4, 5).reshape(b, g, t, h, d)
    lse_BxGxKxTxR = lse_BxGxKx1xM[:, :, :, 0, : t * r].reshape(b, g, k, t, r)
    return o_BxGxTxHxD, lse_BxGxKxTxR.transpose(0, 1, 3, 2, 4).reshape(b, g, t, h)


def suffix_attention(
    q_BxGxTxHxD,
    k_suffix_BxGxSxKxD,
    v_suffix_BxGxSxKxD,
    q_start_BxG,
    *,
    sm_scale=None,
    out_dtype=None,
):
    """Each sample's causal attention over its own suffix: query t sees keys s <= q_start + t.

    Returns (o [B, G, T, H, D] in out_dtype, default q's dtype; lse [B, G, T, H] fp32). The new
    tokens' keys are in the suffix cache already, so every query sees at least its own key.
    """
    b, g, t, h, d = q_BxGxTxHxD.shape
    _, _, s, k, _ = k_suffix_BxGxSxKxD.shape
    r = h // k
    sm_scale = default_scale(sm_scale, d)
    q_BxGxTxKxRxD = q_BxGxTxHxD.reshape(b, g, t, k, r, d)
    s_BxGxKxRxTxS = (
        jnp.einsum(
            "bgtkrd,bgskd->bgkrts",
            q_BxGxTxKxRxD,
            k_suffix_BxGxSxKxD,
            preferred_element_type=jnp.float32,
        )
        * sm_scale
    )
    last_BxGxT = q_start_BxG[:, :, None] + jnp.arange(t)[None, None, :]
    visible_BxGxTxS = jnp.arange(s)[None, None, None, :] <= last_BxGxT[..., None]
    s_BxGxKxRxTxS = jnp.where(visible_BxGxTxS[:, :, None, None], s_BxGxKxRxTxS, NEG_INF)
    m_BxGxKxRxT = jnp.max(s_BxGxKxRxTxS, axis=-1)
    e_BxGxKxRxTxS = jnp.exp(s_BxGxKxRxTxS - m_BxGxKxRxT[..., None])
    l_BxGxKxRxT = jnp.sum(e_BxGxKxRxTxS, axis=-1)
    acc_BxGxTxKxRxD = jnp.einsum(
        "bgkrts,bgskd->bgtkrd",
        e_BxGxKxRxTxS.astype(v_suffix_BxGxSxKxD.dtype),
        v_suffix_BxGxSxKxD,
        preferred_element_type=jnp.float32,
    )
    l_BxGxTxKxR = l_BxGxKxRxT.transpose(0, 1, 4, 2, 3)
    o_BxGxTxKxRxD = acc_BxGxTxKxRxD / l_BxGxTxKxR[..., None]
    lse_BxGxTxKxR = m_BxGxKxRxT.transpose(0, 1, 4, 2, 3) + jnp.log(l_BxGxTxKxR)
    return (
        o_BxGxTxKxRxD.reshape(b, g, t, h, d).astype(out_dtype or q_BxGxTxHxD.dtype),
        lse_BxGxTxKxR.reshape(b, g, t, h),
    )
