"""Model forward on the layouts: `Dense` (logits, chunked per-token log-probs, a KV cache) and
`PackedTree` (prompt-once training on packed prefix trees).

These are plain functions of a `Transformer`; jitted entry points wrap them as pure functions of
(graphdef, state, inputs). The KV cache is an explicit pytree passed in and returned.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from zorro_jax import attention
from zorro_jax.layouts import Dense, PackedTree
from zorro_jax.model.logprobs import token_logprobs
from zorro_jax.model.transformer import Transformer


def dense_hidden(model: Transformer, tokens_NxT, impl: str | None = None):
    """Final-normed hidden states [N, T, E] for right-padded rows (causal attention)."""
    n, t = tokens_NxT.shape
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None, :], (n, t))
    zeros = jnp.zeros((n,), jnp.int32)
    attend = lambda i, q, k, v: attention.dense_attention(q, k, v, zeros, impl)
    return model.hidden(tokens_NxT, pos, attend, model.config.remat, model.config.scan_layers)


def dense_logits(model: Transformer, tokens_NxT, impl: str | None = None):
    """Float32 logits [N, T, V]. Padding positions hold values that must be ignored."""
    return model.logits(dense_hidden(model, tokens_NxT, impl))


def dense_logprobs(model: Transformer, batch: Dense, *, impl=None, chunk_size=8192, with_entropy=True):
    """log p(tokens[:, t+1] | tokens[:, :t+1]) for t < T-1: (logp [N, T-1], entropy, mask)."""
    h = dense_hidden(model, batch.tokens_NxT, impl)[:, :-1]
    logp, ent = token_logprobs(
        h, model.unembedding(), batch.tokens_NxT[:, 1:], chunk_size=chunk_size, with_entropy=with_entropy
    )
    mask = batch.mask()[:, 1:]
    return logp, ent, mask


class DenseKVCache(NamedTuple):
    """Per-row KV cache: k, v [layers, N, S, K, D]; lengths [N] = tokens written per row."""

    k_LxNxSxKxD: jnp.ndarray
    v_LxNxSxKxD: jnp.ndarray
    lengths_N: jnp.ndarray

    @classmethod
    def empty(cls, model: Transformer, n: int, max_len: int, dtype=None):
        """A zeroed cache for `n` rows of up to `max_len` tokens (compute dtype unless `dtype`), all
        lengths 0.
        """
        c = model.config
        dtype = dtype or model.compute_dtype
        shape = (c.num_hidden_layers, n, max_len, c.num_key_value_heads, c.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((n,), jnp.int32))

    def nbytes(self) -> int:
        """Bytes held by the K and V buffers."""
        return int(self.k_LxNxSxKxD.nbytes + self.v_LxNxSxKxD.nbytes)


def _write_layer_rows(cache_LxNxSxKxD, layer: int, new_NxTxKxD, start_N):
    """Write each row's T new entries at its own offset, in place in the [L, ...] cache (one
    scatter; no per-step restacking of the layers)."""
    n, t = new_NxTxKxD.shape[:2]
    rows = jnp.arange(n)[:, None]
    pos = start_N[:, None] + jnp.arange(t)[None, :]
    return cache_LxNxSxKxD.at[layer, rows, pos].set(new_NxTxKxD.astype(cache_LxNxSxKxD.dtype))


def dense_step(model: Transformer, cache: DenseKVCache, tokens_NxT, n_new_N, impl=None):
    """Append T tokens per row (of which n_new[n] are real) and return (hidden [N,T,E], cache).

    Prefill is a step from an empty cache; one-token decode is T = 1. Positions continue at each
    row's cache length, so rows of different lengths decode in lockstep.
    """
    _n, t = tokens_NxT.shape
    start = cache.lengths_N
    pos = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
    kv = {"k": cache.k_LxNxSxKxD, "v": cache.v_LxNxSxKxD}

    def attend(i, q, k, v):
        kv["k"] = _write_layer_rows(kv["k"], i, k, start)
        kv["v"] = _write_layer_rows(kv["v"], i, v, start)
        return attention.dense_attention(q, kv["k"][i], kv["v"][i], start, impl)

    h = model.hidden(tokens_NxT, pos, attend)
    new = DenseKVCache(kv["k"], kv["v"], start + n_new_N.astype(jnp.int32))
    return h, new


def dense_prefill(model: Transformer, batch: Dense, max_len: int, impl=None):
    """Prefill right-padded prompts; returns (logits at each row's last real token [N, V], cache)."""
    n, t = batch.tokens_NxT.shape
    if t > max_len:
        raise ValueError(f"prompt length {t} exceeds cache size {max_len}")
    cache = DenseKVCache.empty(model, n, max_len)
    h, cache = dense_step(model, cache, batch.tokens_NxT, batch.lengths_N, impl)
    last = jnp.take_along_axis(h, (batch.lengths_N - 1)[:, None, None], axis=1)[:, 0]
    return model.logits(last), cache


def dense_decode(model: Transformer, cache: DenseKVCache, token_N, impl=None):
    """One decode step for every row: returns (logits [N, V], cache)."""
    h, cache = dense_step(model, cache, token_N[:, None], jnp.ones_like(token_N), impl)
    return model.logits(h[:, 0]), cache


def packed_hidden(model: Transformer, batch: PackedTree, impl: str | None = None, rows=None):
    """Final-normed hidden states [N, T, E] of packed rows: every position-wise layer runs once
    per packed token (a shared prompt once for all its samples); attention is the tree rule.

    rows (optional, a mesh step's `parallel.rules.row_constraint`): pins an array's leading
    packed-row axis to the devices that hold those rows. Applied to the embeddings and the final
    hidden states, it makes XLA keep the residual stream split by rows with the width whole (and
    gather each layer's weights) rather than follow the embedding table's fsdp split of the width,
    which kept every row on every device.
    """
    rows = rows or (lambda x: x)
    attend = lambda i, q, k, v: attention.packed_tree_attention(
        q, k, v, batch.subtree_end_NxT, batch.blocks, impl
    )
    x_NxTxE = rows(model.embed(batch.tokens_NxT))
    return rows(model.hidden_from_embeddings(x_NxTxE, batch.positions_NxT, attend, model.config.remat,
                                             model.config.scan_layers))


def packed_logprobs(model: Transformer, batch: PackedTree, *, impl=None, chunk_size=8192,
                    with_entropy=True, rows=None):
    """log-probs of every loss token in the loss view [B, G, R], entropy [B, G, R] and the mask.

    A loss token is predicted by the hidden state at its `prev` column (the previous token of its
    segment, or the last token of the parent segment for a segment's first token), so each
    sample's tokens are predicted exactly as in its replicated `Dense` row. The LM head runs once
    per loss token (the flat list), not over the padded [B, G, R] view; log-probs and entropies
    are 0 past a sample's length.

    With `rows` (a mesh step's row constraint, see `packed_hidden`) the LM head runs on the
    per-row lists [N, M] instead, split with the rows: each device gathers its own rows'
    predictors and computes only their log-probs, and only those [N, M] floats move into the
    (replicated) loss view. The flat list's entries are not tied to rows, so on a mesh every
    device would run the LM head over every loss token of the micro-batch.
    """
    h_NxTxE = packed_hidden(model, batch, impl, rows)
    if rows is None:
        rows_L, cols_L = batch.loss_predictors()
        # The list's log-probs and entropies: [L].
        logp, ent = token_logprobs(h_NxTxE[rows_L, cols_L], model.unembedding(),
                                   batch.loss_targets(), chunk_size=chunk_size,
                                   with_entropy=with_entropy)
        pick = lambda x_L: x_L[batch.loss_index_BxGxR]
    else:
        pred_NxM = batch.row_loss_predictors()
        h_NxMxE = rows(jnp.take_along_axis(h_NxTxE, pred_NxM[:, :, None], axis=1))
        # [N, M], split with the rows.
        logp, ent = token_logprobs(h_NxMxE, model.unembedding(), batch.row_loss_targets(),
                                   chunk_size=chunk_size, with_entropy=with_entropy)
        pick = lambda x_NxM: rows(x_NxM)[batch.sample_row_BxG[:, :, None], batch.loss_slot_BxGxR]
    # Slots past a sample's length read some entry of the list (not the same one on both paths):
    # zeroed, so the view is one function of the batch whichever list the LM head ran on.
    mask = batch.sample_mask()
    view = lambda x: jnp.where(mask, pick(x), 0.0)
    return view(logp), (view(ent) if with_entropy else None), mask
