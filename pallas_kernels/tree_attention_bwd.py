"""Backward Pallas kernels of tree attention (see `tree_attention_pallas.py` for rule and layout).

Both kernels recompute the probabilities of a tile from the saved log-sum-exp, p = exp(s - lse),
with delta = rowsum(dO ∘ O) computed outside. The dQ kernel owns one query block and walks the
same key-block lists as the forward pass. The dK/dV kernel owns one key block and walks the
transposed lists: every query block that sees it, so a shared prompt's dK/dV is accumulated over
all of its descendants' queries (and all query heads of the kv head) in one program, and the
prompt's backward runs once per group.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.tree_attention_pallas import (
    dot_nn,
    dot_nt,
    dot_tn,
    key_positions,
    masked_scores,
    metadata_spec,
    pallas_call_per_platform,
    query_grid_specs,
    query_positions,
    tree_mask,
)


def probs_from_lse(s_RxB, lse_R):
    """Recomputed softmax probabilities of a tile from its rows' log-sum-exp."""
    return jnp.exp(s_RxB - lse_R[:, None])


def score_grads(p_RxB, do_RxD, v_BxD, delta_R):
    """dS = P ∘ (dO·Vᵀ − delta), the gradient of the scaled scores (before sm_scale)."""
    return p_RxB * (dot_nt(do_RxD, v_BxD) - delta_R[:, None])


def dq_update(dq_RxD, q_RxD, do_RxD, lse_R, delta_R, k_BxD, v_BxD, mask_RxB, sm_scale):
    """dQ (unscaled by sm_scale) += dS · K for one key block."""
    p = probs_from_lse(masked_scores(q_RxD, k_BxD, mask_RxB, sm_scale), lse_R)
    ds = score_grads(p, do_RxD, v_BxD, delta_R)
    return dq_RxD + dot_nn(ds.astype(k_BxD.dtype), k_BxD)


def dkv_update(carry, k_BxD, v_BxD, q_RxD, do_RxD, lse_R, delta_R, mask_RxB, sm_scale):
    """(dK unscaled by sm_scale, dV) += (dSᵀ · Q, Pᵀ · dO) for one query block."""
    dk_BxD, dv_BxD = carry
    p = probs_from_lse(masked_scores(q_RxD, k_BxD, mask_RxB, sm_scale), lse_R)
    dv_BxD = dv_BxD + dot_tn(p.astype(do_RxD.dtype), do_RxD)
    ds = score_grads(p, do_RxD, v_BxD, delta_R)
    return dk_BxD + dot_tn(ds.astype(q_RxD.dtype), q_RxD), dv_BxD


def _dq_kernel(
    kv_index_ref,
    kv_count_ref,
    q_ref,
    k_ref,
    v_ref,
    end_ref,
    do_ref,
    lse_ref,
    delta_ref,
    dq_ref,
    *,
    cfg,
):
    n, qb = pl.program_id(0), pl.program_id(2)
    block_rows, head_dim = q_ref.shape
    bk = cfg.block_k
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[0, :], delta_ref[0, :]
    q_pos_Rx1 = query_positions(qb * block_rows, block_rows, cfg.heads_per_kv)

    def body(t, dq):
        start = pl.multiple_of(kv_index_ref[n, qb, t] * bk, bk)
        keys = pl.ds(start, bk)
        mask = tree_mask(q_pos_Rx1, key_positions(start, bk), end_ref[:, keys])
        return dq_update(dq, q, do, lse, delta, k_ref[keys, :], v_ref[keys, :], mask, cfg.sm_scale)

    dq = lax.fori_loop(
        jnp.int32(0),
        kv_count_ref[n, qb],
        body,
        jnp.zeros((block_rows, head_dim), jnp.float32),
    )
    dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(
    q_index_ref,
    q_count_ref,
    k_ref,
    v_ref,
    end_ref,
    q_ref,
    do_ref,
    lse_ref,
    delta_ref,
    dk_ref,
    dv_ref,
    *,
    cfg,
):
    n, kb = pl.program_id(0), pl.program_id(2)
    bk, head_dim = k_ref.shape
    br = cfg.block_rows
    k, v = k_ref[...], v_ref[...]
    k_pos_1xB = key_positions(kb * bk, bk)
    end_1xB = end_ref[...]

    def body(t, carry):
        row_start = pl.multiple_of(q_index_ref[n, kb, t] * br, br)
        rows = pl.ds(row_start, br)
        mask = tree_mask(query_positions(row_start, br, cfg.heads_per_kv), k_pos_1xB, end_1xB)
        return dkv_update(
            carry,
            k,
            v,
            q_ref[rows, :],
            do_ref[rows, :],
            lse_ref[0, rows],
            delta_ref[0, rows],
            mask,
            cfg.sm_scale,
        )

    zeros = jnp.zeros((bk, head_dim), jnp.float32)
    dk, dv = lax.fori_loop(jnp.int32(0), q_count_ref[n, kb], body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(cfg, residuals, do):
    """custom_vjp backward in kernel layout: cotangents of (q, k, v, end, kv/q index and count)."""
    q, k, v, end, kv_index, kv_count, q_index, q_count, o, lse = residuals
    n, kh, num_rows, dp = q.shape
    t = k.shape[2]
    br, bk = cfg.block_rows, cfg.block_k
    bs = cfg.block_sizes
    # delta = rowsum(dO ∘ O), the softmax-backward correction per query row.
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)[:, :, None, :]
    do = do.astype(q.dtype)

    # dQ: one program per query block, grid (N, K, query blocks).
    rows, row_stats, whole_kv, whole_end = query_grid_specs(br, t, dp)
    dq = pallas_call_per_platform(
        functools.partial(_dq_kernel, cfg=cfg),
        interpret=cfg.interpret,
        num_warps=bs.num_warps_dq,
        num_stages=bs.num_stages_dq,
        grid=(n, kh, num_rows // br),
        in_specs=[
            metadata_spec(kv_index),
            metadata_spec(kv_count),
            rows,
            whole_kv,
            whole_kv,
            whole_end,
            rows,
            row_stats,
            row_stats,
        ],
        out_specs=rows,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        name="tree_attention_dq",
    )(kv_index, kv_count, q, k, v, end, do, lse, delta)

    # dK/dV: one program per key block, grid (N, K, key blocks).
    keys = pl.BlockSpec((None, None, bk, dp), lambda b, h, j: (b, h, j, 0))
    key_end = pl.BlockSpec((None, 1, bk), lambda b, h, j: (b, 0, j))
    whole_rows = pl.BlockSpec((None, None, num_rows, dp), lambda b, h, j: (b, h, 0, 0))
    whole_stats = pl.BlockSpec((None, None, 1, num_rows), lambda b, h, j: (b, h, 0, 0))
    dk, dv = pallas_call_per_platform(
        functools.partial(_dkv_kernel, cfg=cfg),
        interpret=cfg.interpret,
        num_warps=bs.num_warps_dkv,
        num_stages=bs.num_stages_dkv,
        grid=(n, kh, t // bk),
        in_specs=[
            metadata_spec(q_index),
            metadata_spec(q_count),
            keys,
            keys,
            key_end,
            whole_rows,
            whole_rows,
            whole_stats,
            whole_stats,
        ],
        out_specs=[keys, keys],
        out_shape=[
            jax.ShapeDtypeStruct(k.shape, k.dtype),
            jax.ShapeDtypeStruct(v.shape, v.dtype),
        ],
        name="tree_attention_dkv",
    )(q_index, q_count, k, v, end, q, do, lse, delta)
    return dq, dk, dv, None, None, None, None, None
