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


def _tree_attention_row(q_TxHxD, k_TxKxD, v_TxKxD, end_T, pq_P, pk_P, live_P, *, nq, nk, scale):
    """`tree_attention_xla` on one packed row (the XLA path vmaps it over the rows)."""
    t, h, d = q_TxHxD.shape
    kh = k_TxKxD.shape[1]
    hg = h // kh
    bq, bk = t // nq, t // nk
    f32 = jnp.float32

    # Per pair: its query block [P, K, hg·bq, D] (rows head-major) and key block [P, K, bk, D].
    q_QxKxIxD = q_TxHxD.reshape(nq, bq, kh, hg, d).transpose(0, 2, 3, 1, 4).reshape(nq, kh, hg * bq, d)
    q_PxKxIxD = q_QxKxIxD[pq_P]

    def key_blocks(x_TxKxD):
        return x_TxKxD.reshape(nk, bk, kh, d).transpose(0, 2, 1, 3)[pk_P]

    s_PxKxIxJ = jnp.einsum("pkid,pkjd->pkij", q_PxKxIxD, key_blocks(k_TxKxD),
                           preferred_element_type=f32) * scale
    # The tree rule on absolute columns: key j visible to query i iff j <= i < subtree_end[j].
    i_PxI = pq_P[:, None] * bq + jnp.tile(jnp.arange(bq), hg)[None]
    j_PxJ = pk_P[:, None] * bk + jnp.arange(bk)[None]
    end_PxJ = end_T.reshape(nk, bk)[pk_P]
    mask_PxIxJ = (live_P[:, None, None] & (j_PxJ[:, None, :] <= i_PxI[..., None])
                  & (i_PxI[..., None] < end_PxJ[:, None, :]))
    s_PxKxIxJ = jnp.where(mask_PxIxJ[:, None], s_PxKxIxJ, NEG_INF)

    # Softmax over all pairs of a query block (segment = query block); dead pairs go to segment 0
    # with all scores masked, so they add nothing.
    m_seg = jax.ops.segment_max(jnp.max(s_PxKxIxJ, axis=-1), pq_P, num_segments=nq,
                                indices_are_sorted=True)
    # Every query sees itself, so every query row's max is finite.
    m_PxKxI = lax.stop_gradient(m_seg)[pq_P]
    e_PxKxIxJ = jnp.exp(s_PxKxIxJ - m_PxKxI[..., None])
    l_seg = jax.ops.segment_sum(jnp.sum(e_PxKxIxJ, axis=-1), pq_P, num_segments=nq,
                                indices_are_sorted=True)
    o_PxKxIxD = jnp.einsum("pkij,pkjd->pkid", e_PxKxIxJ, key_blocks(v_TxKxD).astype(f32),
                           preferred_element_type=f32)
    o_seg = jax.ops.segment_sum(o_PxKxIxD, pq_P, num_segments=nq, indices_are_sorted=True)
    o_QxKxIxD = o_seg / l_seg[..., None]
    return o_QxKxIxD.reshape(nq, kh, hg, bq, d).transpose(0, 3, 1, 2, 4).reshape(t, h, d)


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

    Written per row and vmapped: every gather and segment sum then carries the row as a batch
    dimension, so with rows sharded over a mesh XLA partitions attention along them (a row's
    pairs only index its own blocks); indexing the flattened [N·P] pairs instead made it
    all-gather every layer's K/V blocks and all-reduce the per-block sums.
    """
    nq, nk = blocks.num_blocks
    d = q_NxTxHxD.shape[-1]
    row = functools.partial(_tree_attention_row, nq=nq, nk=nk, scale=_default_scale(d, sm_scale))
    o = jax.vmap(row)(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT.astype(jnp.int32),
                      blocks.pair_q_NxP.astype(jnp.int32), blocks.pair_k_NxP.astype(jnp.int32),
                      blocks.pair_live_NxP)
    return o.astype(q_NxTxHxD.dtype)
