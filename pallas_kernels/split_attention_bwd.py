"""Backward Pallas kernels of split attention (see `split_attention.py` for the math and layouts).

dQ kernels stream over key blocks like the forward pass, recomputing probabilities from the saved
log-sum-exp. dK/dV kernels own one key block: a prompt key block accumulates over the prompt's
queries and over the completion queries of all G samples, so the prompt's backward runs once per
group; a completion key block accumulates over its own sample's queries only.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.lse_merge import NEG_INF
from pallas_kernels.split_attention import (
    _cdiv,
    _comp_len,
    _dot_nn,
    _dot_nt,
    _dot_tn,
    _lengths_spec,
    _pallas_call,
    _prompt_len,
    _row_positions,
)


def _dq_stream(dq, q, do, lse, delta, k_ref, v_ref, num_blocks, block_k, visible, sm_scale):
    """Accumulate Σ_j dS_j K_j over key blocks [0, num_blocks) (unscaled by sm_scale)."""

    def body(j, dq):
        k = k_ref[pl.ds(j * block_k, block_k), :]
        v = v_ref[pl.ds(j * block_k, block_k), :]
        key_pos = j * block_k + jnp.arange(block_k, dtype=jnp.int32)[None, :]
        s = jnp.where(visible(key_pos), _dot_nt(q, k) * sm_scale, NEG_INF)
        p = jnp.exp(s - lse[:, None])
        ds = p * (_dot_nt(do, v) - delta[:, None])
        return dq + _dot_nn(ds.astype(k.dtype), k)

    return lax.fori_loop(0, num_blocks, body, dq)


def _dq_prompt_kernel(plen_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, cfg):
    block_q, head_dim = q_ref.shape
    block_k = cfg.block_sizes.block_k_dq
    row_start = pl.program_id(2) * block_q
    plen = _prompt_len(plen_ref)
    q_pos = _row_positions(row_start, block_q, cfg.heads_per_kv)[:, None]
    last_pos = lax.div(row_start + block_q - 1, cfg.heads_per_kv)
    num_blocks = jnp.minimum(_cdiv(last_pos + 1, block_k), _cdiv(plen, block_k))
    dq = _dq_stream(
        jnp.zeros((block_q, head_dim), jnp.float32),
        q_ref[...],
        do_ref[...],
        lse_ref[0, :],
        delta_ref[0, :],
        k_ref,
        v_ref,
        num_blocks,
        block_k,
        lambda key_pos: (key_pos <= q_pos) & (key_pos < plen),
        cfg.sm_scale,
    )
    dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)


def _dq_comp_kernel(
    plen_ref,
    clen_ref,
    q_ref,
    kp_ref,
    vp_ref,
    kc_ref,
    vc_ref,
    do_ref,
    lse_ref,
    delta_ref,
    dq_ref,
    *,
    cfg,
):
    block_q, head_dim = q_ref.shape
    block_k = cfg.block_sizes.block_k_dq
    rows_per_sample = cfg.padded_comp * cfg.heads_per_kv
    row_start = lax.rem(pl.program_id(2) * block_q, rows_per_sample)
    plen = _prompt_len(plen_ref)
    clen = _comp_len(clen_ref, rows_per_sample // block_q)
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[0, :], delta_ref[0, :]
    dq = _dq_stream(
        jnp.zeros((block_q, head_dim), jnp.float32),
        q,
        do,
        lse,
        delta,
        kp_ref,
        vp_ref,
        _cdiv(plen, block_k),
        block_k,
        lambda key_pos: jnp.broadcast_to(key_pos < plen, (block_q, block_k)),
        cfg.sm_scale,
    )
    r_pos = _row_positions(row_start, block_q, cfg.heads_per_kv)[:, None]
    last_pos = lax.div(row_start + block_q - 1, cfg.heads_per_kv)
    num_own = jnp.minimum(_cdiv(last_pos + 1, block_k), _cdiv(clen, block_k))
    dq = _dq_stream(
        dq,
        q,
        do,
        lse,
        delta,
        kc_ref,
        vc_ref,
        num_own,
        block_k,
        lambda key_pos: (key_pos <= r_pos) & (key_pos < clen),
        cfg.sm_scale,
    )
    dq_ref[...] = (dq * cfg.sm_scale).astype(dq_ref.dtype)


def _dkv_stream(
    carry, k, v, q_ref, do_ref, lse_ref, delta_ref, lo, hi, row_start_of, visible, block_q, sm_scale
):
    """Accumulate (dK unscaled, dV) of one key block over query blocks t in [lo, hi).

    row_start_of(t) gives the block's first row in the refs; visible(t) its [block_q, block_k] mask.
    """

    def body(t, carry):
        dk, dv = carry
        rows = pl.ds(row_start_of(t), block_q)
        q = q_ref[rows, :]
        do = do_ref[rows, :]
        lse = lse_ref[0, rows]
        delta = delta_ref[0, rows]
        s = jnp.where(visible(t), _dot_nt(q, k) * sm_scale, NEG_INF)
        p = jnp.exp(s - lse[:, None])
        dv = dv + _dot_tn(p.astype(do.dtype), do)
        ds = p * (_dot_nt(do, v) - delta[:, None])
        dk = dk + _dot_tn(ds.astype(q.dtype), q)
        return dk, dv

    return lax.fori_loop(lo, hi, body, carry)


def _dkv_prompt_kernel(
    plen_ref,
    qp_ref,
    k_ref,
    v_ref,
    dop_ref,
    lsep_ref,
    deltap_ref,
    qc_ref,
    doc_ref,
    lsec_ref,
    deltac_ref,
    dk_ref,
    dv_ref,
    *,
    cfg,
):
    block_k, head_dim = k_ref.shape
    block_q = cfg.block_sizes.block_q_dkv
    hg = cfg.heads_per_kv
    key_start = pl.program_id(2) * block_k
    key_pos = key_start + jnp.arange(block_k, dtype=jnp.int32)[None, :]
    plen = _prompt_len(plen_ref)
    k, v = k_ref[...], v_ref[...]
    # A key block at or past the prompt length is invisible to every query: skip all work.
    active = key_start < plen
    zeros = jnp.zeros((block_k, head_dim), jnp.float32)

    # Prompt queries: only rows at positions ≥ key_start see this block; rows past the true P
    # (internal padding) carry zero cotangents.
    lo = lax.div(key_start * hg, block_q)
    hi = jnp.where(active, -(-cfg.prompt_tokens * hg // block_q), lo)
    carry = _dkv_stream(
        (zeros, zeros),
        k,
        v,
        qp_ref,
        dop_ref,
        lsep_ref,
        deltap_ref,
        lo,
        hi,
        lambda t: t * block_q,
        lambda t: (key_pos <= _row_positions(t * block_q, block_q, hg)[:, None]) & (key_pos < plen),
        block_q,
        cfg.sm_scale,
    )

    # Completion queries of all G samples see every real prompt key.
    real_blocks = -(-cfg.comp_tokens * hg // block_q)
    padded_blocks = cfg.padded_comp * hg // block_q
    # Both branches typed int32: two weak Python ints would take the predicate's i1 type on
    # Triton, and the loop's bounds would then disagree in type (the module fails to verify).
    num = jnp.where(active, jnp.int32(cfg.num_samples * real_blocks), jnp.int32(0))
    dk, dv = _dkv_stream(
        carry,
        k,
        v,
        qc_ref,
        doc_ref,
        lsec_ref,
        deltac_ref,
        0,
        num,
        lambda t: (lax.div(t, real_blocks) * padded_blocks + lax.rem(t, real_blocks)) * block_q,
        lambda t: jnp.broadcast_to(key_pos < plen, (block_q, block_k)),
        block_q,
        cfg.sm_scale,
    )
    dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dkv_comp_kernel(
    clen_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, cfg
):
    block_k, head_dim = k_ref.shape
    block_q = cfg.block_sizes.block_q_dkv
    hg = cfg.heads_per_kv
    key_start = lax.rem(pl.program_id(2) * block_k, cfg.padded_comp)
    key_pos = key_start + jnp.arange(block_k, dtype=jnp.int32)[None, :]
    clen = _comp_len(clen_ref, cfg.padded_comp // block_k)
    zeros = jnp.zeros((block_k, head_dim), jnp.float32)
    lo = lax.div(key_start * hg, block_q)
    hi = jnp.where(key_start < clen, -(-cfg.comp_tokens * hg // block_q), lo)
    dk, dv = _dkv_stream(
        (zeros, zeros),
        k_ref[...],
        v_ref[...],
        q_ref,
        do_ref,
        lse_ref,
        delta_ref,
        lo,
        hi,
        lambda t: t * block_q,
        lambda t: (key_pos <= _row_positions(t * block_q, block_q, hg)[:, None]) & (key_pos < clen),
        block_q,
        cfg.sm_scale,
    )
    dk_ref[...] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(cfg, residuals, cotangents):
    """custom_vjp backward in kernel layout; returns cotangents for (qp, kp, vp, qc, kc, vc, plen, clen)."""
    qp, kp, vp, qc, kc, vc, plen, clen, o_p, o_c, lse_p, lse_c = residuals
    do_p, do_c = cotangents
    B, K, Np, Dp = qp.shape
    Nc = qc.shape[2]
    Pp, Rp, hg = cfg.padded_prompt, cfg.padded_comp, cfg.heads_per_kv
    bs = cfg.block_sizes
    f32 = jnp.float32
    # delta = rowsum(dO ∘ O), the softmax-backward correction per query row.
    delta_p = jnp.sum(o_p.astype(f32) * do_p.astype(f32), axis=-1)[:, :, None, :]
    delta_c = jnp.sum(o_c.astype(f32) * do_c.astype(f32), axis=-1)[:, :, None, :]
    do_p = do_p.astype(qp.dtype)
    do_c = do_c.astype(qc.dtype)

    # dQ: one program per query block, grid (B, K, row blocks).
    bq = bs.block_q_dq
    rows = pl.BlockSpec((None, None, bq, Dp), lambda b, k, i: (b, k, i, 0))
    row_stats = pl.BlockSpec((None, None, 1, bq), lambda b, k, i: (b, k, 0, i))
    prompt_kv = pl.BlockSpec((None, None, Pp, Dp), lambda b, k, i: (b, k, 0, 0))
    dq_p = _pallas_call(
        functools.partial(_dq_prompt_kernel, cfg=cfg),
        grid=(B, K, Np // bq),
        in_specs=[_lengths_spec(plen), rows, prompt_kv, prompt_kv, rows, row_stats, row_stats],
        out_specs=rows,
        out_shape=jax.ShapeDtypeStruct(qp.shape, qp.dtype),
        name="split_attention_dq_prompt",
        cfg=cfg,
        launch=bs.launch_dq,
    )(plen, qp, kp, vp, do_p, lse_p, delta_p)

    dq_blocks_per_sample = Rp * hg // bq

    def sample_of_row_block(i):
        return lax.div(i, dq_blocks_per_sample)

    own_kv = pl.BlockSpec((None, None, Rp, Dp), lambda b, k, i: (b, k, sample_of_row_block(i), 0))
    dq_c = _pallas_call(
        functools.partial(_dq_comp_kernel, cfg=cfg),
        grid=(B, K, Nc // bq),
        in_specs=[
            _lengths_spec(plen),
            _lengths_spec(clen),
            rows,
            prompt_kv,
            prompt_kv,
            own_kv,
            own_kv,
            rows,
            row_stats,
            row_stats,
        ],
        out_specs=rows,
        out_shape=jax.ShapeDtypeStruct(qc.shape, qc.dtype),
        name="split_attention_dq_completion",
        cfg=cfg,
        launch=bs.launch_dq,
    )(plen, clen, qc, kp, vp, kc, vc, do_c, lse_c, delta_c)

    # dK/dV: one program per key block, grid (B, K, key blocks).
    bk = bs.block_k_dkv
    keys = pl.BlockSpec((None, None, bk, Dp), lambda b, k, j: (b, k, j, 0))
    all_prompt_rows = pl.BlockSpec((None, None, Np, Dp), lambda b, k, j: (b, k, 0, 0))
    all_prompt_stats = pl.BlockSpec((None, None, 1, Np), lambda b, k, j: (b, k, 0, 0))
    all_comp_rows = pl.BlockSpec((None, None, Nc, Dp), lambda b, k, j: (b, k, 0, 0))
    all_comp_stats = pl.BlockSpec((None, None, 1, Nc), lambda b, k, j: (b, k, 0, 0))
    dk_p, dv_p = _pallas_call(
        functools.partial(_dkv_prompt_kernel, cfg=cfg),
        grid=(B, K, Pp // bk),
        in_specs=[
            _lengths_spec(plen),
            all_prompt_rows,
            keys,
            keys,
            all_prompt_rows,
            all_prompt_stats,
            all_prompt_stats,
            all_comp_rows,
            all_comp_rows,
            all_comp_stats,
            all_comp_stats,
        ],
        out_specs=[keys, keys],
        out_shape=[
            jax.ShapeDtypeStruct(kp.shape, kp.dtype),
            jax.ShapeDtypeStruct(vp.shape, vp.dtype),
        ],
        name="split_attention_dkv_prompt",
        cfg=cfg,
        launch=bs.launch_dkv,
    )(plen, qp, kp, vp, do_p, lse_p, delta_p, qc, do_c, lse_c, delta_c)

    key_blocks_per_sample = Rp // bk

    def sample_of_key_block(j):
        return lax.div(j, key_blocks_per_sample)

    sample_rows = pl.BlockSpec(
        (None, None, Rp * hg, Dp), lambda b, k, j: (b, k, sample_of_key_block(j), 0)
    )
    sample_stats = pl.BlockSpec(
        (None, None, 1, Rp * hg), lambda b, k, j: (b, k, 0, sample_of_key_block(j))
    )
    dk_c, dv_c = _pallas_call(
        functools.partial(_dkv_comp_kernel, cfg=cfg),
        grid=(B, K, kc.shape[2] // bk),
        in_specs=[
            _lengths_spec(clen),
            sample_rows,
            keys,
            keys,
            sample_rows,
            sample_stats,
            sample_stats,
        ],
        out_specs=[keys, keys],
        out_shape=[
            jax.ShapeDtypeStruct(kc.shape, kc.dtype),
            jax.ShapeDtypeStruct(vc.shape, vc.dtype),
        ],
        name="split_attention_dkv_completion",
        cfg=cfg,
        launch=bs.launch_dkv,
    )(clen, qc, kc, vc, do_c, lse_c, delta_c)
    return dq_p, dk_p, dv_p, dq_c, dk_c, dv_c, None, None
