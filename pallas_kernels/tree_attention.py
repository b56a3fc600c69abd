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

from pallas_kernels.tree_blocks import visible_mask


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
