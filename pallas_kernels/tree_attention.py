"""Attention on packed prefix trees (the `PackedTree` layout): a dense reference and an XLA path.

Rows are packed token streams [N, T]; key j is visible to query i iff j ≤ i < subtree_end[j]
(see `tree_blocks.py`). A shared segment (a prompt, a database schema) is a run of keys whose
subtree_end covers all of its descendants, so its K/V are computed once and read by every
descendant, and autodiff sums their contributions to its dK/dV.

Shapes: q [N, T, H, D], k/v [N, T, K, D], subtree_end [N, T]; query head h reads kv head
h // (H // K).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.lse_merge import NEG_INF
from pallas_kernels.tree_blocks import TreeBlocks, visible_mask


def _default_scale(head_dim, sm_scale):
    return 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)


@functools.partial(jax.jit, static_argnames=("sm_scale",))
def tree_attention_reference(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, *, sm_scale=None):
    """Ground truth: one dense masked softmax per row over all T keys, fp32, K/V repeated per head."""
    _n, _t, h, d = q_NxTxHxD.shape
    rep = h // k_NxTxKxD.shape[2]
    f32 = jnp.float32
    k = jnp.repeat(k_NxTxKxD, rep, axis=2).astype(f32)
    v = jnp.repeat(v_NxTxKxD, rep, axis=2).astype(f32)
    s_NxHxTxT = jnp.einsum("nihd,njhd->nhij", q_NxTxHxD.astype(f32), k) * _default_scale(d, sm_scale)
    mask_NxTxT = visible_mask(subtree_end_NxT)
    s_NxHxTxT = jnp.where(mask_NxTxT[:, None], s_NxHxTxT, -jnp.inf)
    o = jnp.einsum("nhij,njhd->nihd", jax.nn.softmax(s_NxHxTxT, axis=-1), v)
    return o.astype(q_NxTxHxD.dtype)


@functools.partial(jax.jit, static_argnames=("sm_scale",))
def tree_attention_xla(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks: TreeBlocks, *,
                       sm_scale=None):
    """Block-sparse attention over the flat list of visible (query block, key block) pairs.

    Each listed pair is one small batched product ([bq·H/K, bk] scores per kv head; GQA folds the
    H // K query heads of a kv head into the query rows, so K/V are never repeated); the softmax
    over a query block's pairs is combined with segment max / sum. Work and memory scale with the
    number of visible block pairs, not with T² nor with the longest per-block list. Scores and
    probabilities are fp32 (p stays fp32 in the PV product). Block sizes come from the shapes:
    T // (query blocks) and T // (key blocks). Differentiable by plain autodiff: the transpose of
    the key-block gather sums a shared segment's dK/dV over all of its descendants' query blocks.
    """
    n, t, h, d = q_NxTxHxD.shape
    kh = k_NxTxKxD.shape[2]
    hg = h // kh
    nq, nk = blocks.num_blocks
    bq, bk = t // nq, t // nk
    f32 = jnp.float32
    pq_NxP = blocks.pair_q_NxP.astype(jnp.int32)
    pk_NxP = blocks.pair_k_NxP.astype(jnp.int32)
    np_ = pq_NxP.shape[1]
    rows_Nx1 = jnp.arange(n)[:, None]

    # Per pair: its query block [N, P, K, hg·bq, D] (rows head-major) and key block [N, P, K, bk, D].
    q_NxQxKxIxD = (q_NxTxHxD.reshape(n, nq, bq, kh, hg, d).transpose(0, 1, 3, 4, 2, 5)
                   .reshape(n, nq, kh, hg * bq, d))
    q_NxPxKxIxD = q_NxQxKxIxD[rows_Nx1, pq_NxP]

    def key_blocks(x_NxTxKxD):
        return x_NxTxKxD.reshape(n, nk, bk, kh, d).transpose(0, 1, 3, 2, 4)[rows_Nx1, pk_NxP]

    s_NxPxKxIxJ = jnp.einsum("npkid,npkjd->npkij", q_NxPxKxIxD, key_blocks(k_NxTxKxD),
                             preferred_element_type=f32) * _default_scale(d, sm_scale)
    # The tree rule on absolute columns: key j visible to query i iff j <= i < subtree_end[j].
    i_NxPxI = pq_NxP[..., None] * bq + jnp.tile(jnp.arange(bq), hg)[None, None]
    j_NxPxJ = pk_NxP[..., None] * bk + jnp.arange(bk)[None, None]
    end_NxPxJ = subtree_end_NxT.astype(jnp.int32).reshape(n, nk, bk)[rows_Nx1, pk_NxP]
    mask_NxPxIxJ = (blocks.pair_live_NxP[..., None, None]
                    & (j_NxPxJ[:, :, None, :] <= i_NxPxI[..., None])
                    & (i_NxPxI[..., None] < end_NxPxJ[:, :, None, :]))
    s_NxPxKxIxJ = jnp.where(mask_NxPxIxJ[:, :, None], s_NxPxKxIxJ, NEG_INF)

    # Softmax over all pairs of a query block: segment = (row, query block); dead pairs go to
    # segment 0 of their row with all scores masked, so they add nothing.
    seg = (rows_Nx1 * nq + pq_NxP).reshape(-1)
    m_pair = jnp.max(s_NxPxKxIxJ, axis=-1).reshape(n * np_, kh, hg * bq)
    m_seg = jax.ops.segment_max(m_pair, seg, num_segments=n * nq, indices_are_sorted=True)
    # Every query sees itself, so every query row's max is finite.
    m_NxPxKxI = lax.stop_gradient(m_seg)[seg].reshape(n, np_, kh, hg * bq)
    e_NxPxKxIxJ = jnp.exp(s_NxPxKxIxJ - m_NxPxKxI[..., None])
    l_seg = jax.ops.segment_sum(jnp.sum(e_NxPxKxIxJ, axis=-1).reshape(n * np_, kh, hg * bq), seg,
                                num_segments=n * nq, indices_are_sorted=True)
    o_NxPxKxIxD = jnp.einsum("npkij,npkjd->npkid", e_NxPxKxIxJ,
                             key_blocks(v_NxTxKxD).astype(f32), preferred_element_type=f32)
    o_seg = jax.ops.segment_sum(o_NxPxKxIxD.reshape(n * np_, kh, hg * bq, d), seg,
                                num_segments=n * nq, indices_are_sorted=True)
    o_QxKxIxD = o_seg / l_seg[..., None]
    o = (o_QxKxIxD.reshape(n, nq, kh, hg, bq, d).transpose(0, 1, 4, 2, 3, 5)
         .reshape(n, t, h, d))
    return o.astype(q_NxTxHxD.dtype)
