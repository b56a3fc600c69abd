"""Per-token log-probs and entropy of target tokens, computed over vocabulary chunks.

With a large vocabulary the [N, T, V] float32 logits dominate activation memory. Here the
log-sum-exp (and the entropy's Σ p·z) is accumulated chunk by chunk in a rematerialised scan, so
neither the forward nor the backward holds more than one [N, chunk] slab of logits. The target
logit needs only the target's column of the unembedding, never the full row. Logits accumulate
in float32 whatever the compute dtype: rounding them to bf16 would move a log-prob by up to
|z|·2^-9, 0.08 at the |z| ~ 40 of a real model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_logits(h_NxE, w_ExV, targets_N):
    """z[target] for each row: [N] float32."""
    return jnp.einsum("ne,ne->n", h_NxE, jnp.take(w_ExV.T, targets_N, axis=0),
                      preferred_element_type=jnp.float32)


def logsumexp_and_entropy(h_NxE, w_ExV, *, chunk_size: int = 8192, with_entropy: bool = True):
    """(log Σ exp z, entropy of softmax z) per row for z = h @ w, without materialising all of z."""
    e, v = w_ExV.shape
    n_chunks = -(-v // chunk_size)
    if n_chunks == 1:
        z = jnp.einsum("ne,ev->nv", h_NxE, w_ExV, preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(z, axis=-1)
        ent = lse - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1) if with_entropy else None
        return lse, ent
    pad = n_chunks * chunk_size - v
    w = jnp.pad(w_ExV, ((0, 0), (0, pad))).reshape(e, n_chunks, chunk_size).transpose(1, 0, 2)

    @jax.checkpoint
    def body(carry, xs):
        m, s, sz = carry
        w_c, idx = xs
        z = jnp.einsum("ne,ec->nc", h_NxE, w_c, preferred_element_type=jnp.float32)
        valid = (idx * chunk_size + jnp.arange(chunk_size)) < v
        z = jnp.where(valid[None, :], z, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        a = jnp.exp(m - m_new)
        p = jnp.exp(z - m_new[:, None])
        s = s * a + jnp.sum(p, axis=-1)
        sz = sz * a + jnp.sum(p * jnp.where(valid[None, :], z, 0.0), axis=-1)
        return (m_new, s, sz), None

    n = h_NxE.shape[0]
    init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
            jnp.zeros((n,), jnp.float32))
    (m, s, sz), _ = jax.lax.scan(body, init, (w, jnp.arange(n_chunks)))
    lse = m + jnp.log(s)
    return lse, (lse - sz / s if with_entropy else None)


def token_logprobs(h_xE, w_ExV, targets_x, *, chunk_size: int = 8192, with_entropy: bool = True):
    """log p(target) and entropy for hidden states h [..., E] against unembedding w [E, V].

    Returns (logp [...], entropy [...] or None), both float32.
    """
    lead = h_xE.shape[:-1]
    h = h_xE.reshape(-1, h_xE.shape[-1])
    lse, ent = logsumexp_and_entropy(h, w_ExV, chunk_size=chunk_size, with_entropy=with_entropy)
    logp = (target_logits(h, w_ExV, targets_x.reshape(-1)) - lse).reshape(lead)
    return logp, (ent.reshape(lead) if ent is not None else None)


def kl_and_overlap(hp_NxE, wp_ExV, hq_NxE, wq_ExV, *, chunk_size: int = 8192):
    """(KL(p || q), Σ_v min(p_v, q_v)) per row for p = softmax(hp @ wp) and q = softmax(hq @ wq)
    (two models' next-token distributions over one vocabulary), float32, without materialising
    [N, V]: the log-sum-exps first, then Σ p·(z_p − z_q) and the overlap chunk by chunk in a
    rematerialised scan. KL = Σ p·(z_p − z_q) − lse_p + lse_q."""
    lse_p, _ = logsumexp_and_entropy(hp_NxE, wp_ExV, chunk_size=chunk_size, with_entropy=False)
    lse_q, _ = logsumexp_and_entropy(hq_NxE, wq_ExV, chunk_size=chunk_size, with_entropy=False)
    v = wp_ExV.shape[1]
    n_chunks = -(-v // chunk_size)
    width = min(chunk_size, v)
    pad = n_chunks * width - v
    chunks = lambda w: jnp.pad(w, ((0, 0), (0, pad))).reshape(w.shape[0], n_chunks, width).transpose(1, 0, 2)

    @jax.checkpoint
    def body(carry, xs):
        cross, overlap = carry
        wp_c, wq_c, idx = xs
        zp = jnp.einsum("ne,ec->nc", hp_NxE, wp_c, preferred_element_type=jnp.float32)
        zq = jnp.einsum("ne,ec->nc", hq_NxE, wq_c, preferred_element_type=jnp.float32)
        valid = ((idx * width + jnp.arange(width)) < v)[None, :]
        p = jnp.where(valid, jnp.exp(zp - lse_p[:, None]), 0.0)
        q = jnp.where(valid, jnp.exp(zq - lse_q[:, None]), 0.0)
        cross = cross + jnp.sum(p * jnp.where(valid, zp - zq, 0.0), axis=-1)
        return (cross, overlap + jnp.sum(jnp.minimum(p, q), axis=-1)), None

    zeros = jnp.zeros((hp_NxE.shape[0],), jnp.float32)
    (cross, overlap), _ = jax.lax.scan(body, (zeros, zeros), (chunks(wp_ExV), chunks(wq_ExV), jnp.arange(n_chunks)))
    return cross - lse_p + lse_q, overlap
