"""The shared-prefix KV cache (layout `SharedPrefixDecode`): a cascade of prefix levels whose
entries' K/V are stored once each, plus a suffix per sample.

Level 0 holds B_0 entries (B unique prompts in two-level decoding, or D database schemas); level
l holds B_l = B_{l-1}·f_l entries ordered row-major (entry i hangs under entry i // f_l of level
l-1), with real lengths [B_l]. A level's K/V are [layers, R_l, C_l, K, D]: one cache row per entry
(R_l = B_l, each right-padded to C_l), or packed: the f_l entries under each parent entry side by
side in one row (R_l = B_{l-1}, entry i at keys [start_i, start_i + len_i) of row i // f_l), so
ragged questions under a schema cost their real lengths, not k times the longest. Each of the B = B_last
entries of the last level has G samples, and each sample owns a suffix cache
[layers, B, G, S, K, D] for the tokens it generates. A step appends T tokens to every sample
(T = 1 for decoding, γ+1 for speculative verification) and attends to (every ancestor level) ⊕
(own suffix keys) through `attention.shared_prefix_decode_attention`, which reads each level's KV
block once per step for all samples under it.

Like `DenseKVCache`, the cache is an explicit pytree passed into and returned from jitted steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from zorro_jax import attention
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.forward import DenseKVCache, dense_step
from zorro_jax.model.transformer import Transformer


class PromptLevel(NamedTuple):
    """The tokens of one prefix level: N right-padded entries [N, P] and real lengths [N] (>= 1).

    A packed level (both fields set) is prefilled as these N rows and then stored in R cache rows
    of C slots: slot c of row r holds token pack[r, c] of the row's own N/R entries (flat index
    j·P + i: token i of its j-th entry), and entry n starts at slot start[n] of its row.
    """

    tokens_NxP: jnp.ndarray
    len_N: jnp.ndarray
    pack_RxC: jnp.ndarray | None = None
    start_N: jnp.ndarray | None = None

    def stored_shape(self) -> tuple[int, int, int]:
        """(entries N, cache rows R, slots per row C) of the K/V this level is stored as."""
        n, p = self.tokens_NxP.shape
        return (n, n, p) if self.pack_RxC is None else (n, *self.pack_RxC.shape)


class PrefixLevel(NamedTuple):
    """The K/V of one prefix level: N entries in R cache rows of C slots; entry n sees the keys
    [start[n], start[n] + len[n]) of row n // (N/R) (start 0 and R = N unless packed)."""

    k_LxRxCxKxD: jnp.ndarray
    v_LxRxCxKxD: jnp.ndarray
    len_N: jnp.ndarray
    start_N: jnp.ndarray

    def layer(self, i: int):
        """(k [R, C, K, D], v [R, C, K, D], len [N], start [N]) of layer i: one level of the
        decode kernel."""
        return self.k_LxRxCxKxD[i], self.v_LxRxCxKxD[i], self.len_N, self.start_N


def _nbytes(x) -> int:
    # Arrays and ShapeDtypeStructs alike, so abstract caches can be measured too.
    return math.prod(x.shape) * jnp.dtype(x.dtype).itemsize


class SharedPrefixKVCache(NamedTuple):
    """Prefix levels (each entry's K/V once) plus per-sample suffix K/V.

    suffix_len_BxG: tokens written into each sample's suffix so far; the next token of sample
    (b, g) sits at RoPE position (sum of its ancestor entries' lengths) + suffix_len[b, g].
    """

    levels: tuple[PrefixLevel, ...]
    k_suffix_LxBxGxSxKxD: jnp.ndarray
    v_suffix_LxBxGxSxKxD: jnp.ndarray
    suffix_len_BxG: jnp.ndarray

    @property
    def group_size(self) -> int:
        """G, the samples per last-level entry."""
        return self.k_suffix_LxBxGxSxKxD.shape[2]

    @property
    def suffix_size(self) -> int:
        """S, the per-sample suffix capacity in tokens."""
        return self.k_suffix_LxBxGxSxKxD.shape[3]

    def prefix_len_B(self) -> jnp.ndarray:
        """Total real prefix length of each row [B]: the sum of its ancestor entries' lengths."""
        b = self.suffix_len_BxG.shape[0]
        return sum(jnp.repeat(lv.len_N, b // lv.len_N.shape[0], total_repeat_length=b)
                   for lv in self.levels)

    def nbytes(self) -> int:
        """Bytes of K/V held: every level's entries once + G·S suffix per row (lengths not counted)."""
        arrays = [x for lv in self.levels for x in (lv.k_LxRxCxKxD, lv.v_LxRxCxKxD)]
        return sum(map(_nbytes, [*arrays, self.k_suffix_LxBxGxSxKxD, self.v_suffix_LxBxGxSxKxD]))

    @classmethod
    def with_empty_suffix(cls, levels: Sequence[PrefixLevel], group_size: int, suffix_size: int):
        """Prefilled levels with zeroed suffixes of `suffix_size` tokens for `group_size` samples."""
        l, _, _, k, d = levels[-1].k_LxRxCxKxD.shape
        b = levels[-1].len_N.shape[0]
        shape = (l, b, group_size, suffix_size, k, d)
        dtype = levels[-1].k_LxRxCxKxD.dtype
        return cls(tuple(levels), jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((b, group_size), jnp.int32))

    @classmethod
    def abstract(cls, config: ModelConfig, level_shapes: Sequence[tuple[int, int, int]],
                 group_size: int, suffix_size: int, dtype=None):
        """The cache as `jax.ShapeDtypeStruct`s (memory accounting, lowering without data): level
        l holds level_shapes[l] = (entries, cache rows, slots per row), as
        `PromptLevel.stored_shape`; dtype defaults to the compute dtype."""
        dtype = jnp.dtype(dtype or config.compute_dtype)
        lkd = (config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
        sds = jax.ShapeDtypeStruct

        def kv(*dims):
            return sds((lkd[0], *dims, *lkd[1:]), dtype)

        entries = lambda n: sds((n,), jnp.int32)
        levels = tuple(PrefixLevel(kv(r, c), kv(r, c), entries(n), entries(n))
                       for n, r, c in level_shapes)
        b = level_shapes[-1][0]
        suffix = kv(b, group_size, suffix_size)
        return cls(levels, suffix, suffix, sds((b, group_size), jnp.int32))


def dense_impl(impl):
    """The backend for the Dense layout, which has no Pallas kernel (asking for one there would
    only print a fallback warning)."""
    return "reference" if impl == "reference" else "xla"


def _prefill_level(model: Transformer, levels: tuple[PrefixLevel, ...], level: PromptLevel, impl):
    """Prefill one level on top of `levels`: its P tokens are T new tokens of a single sample per
    entry, so they attend to their ancestor entries and causally to themselves; the sample's
    suffix K/V become the level's K/V (packed into its cache rows if the level is packed).
    Returns (hidden [N, P, E], the level)."""
    n, p = level.tokens_NxP.shape
    c = model.config
    shape = (c.num_hidden_layers, n, 1, p, c.num_key_value_heads, c.head_dim)
    zeros = jnp.zeros(shape, model.compute_dtype)
    staging = SharedPrefixKVCache(levels, zeros, zeros, jnp.zeros((n, 1), jnp.int32))
    n_new_Nx1 = level.len_N.astype(jnp.int32)[:, None]
    h_Nx1xPxE, staging = shared_prefix_step(model, staging, level.tokens_NxP[:, None], n_new_Nx1,
                                            impl)
    return h_Nx1xPxE[:, 0], _stored(level, staging.k_suffix_LxBxGxSxKxD[:, :, 0],
                                    staging.v_suffix_LxBxGxSxKxD[:, :, 0])


def _stored(level: PromptLevel, k_LxNxPxKxD, v_LxNxPxKxD) -> PrefixLevel:
    """The level's prefilled K/V [L, N, P, K, D] as stored: as they are, or packed into its cache
    rows (each slot gathers from its own row's entries, so a level split over devices by rows
    packs locally)."""
    len_N = level.len_N.astype(jnp.int32)
    if level.pack_RxC is None:
        return PrefixLevel(k_LxNxPxKxD, v_LxNxPxKxD, len_N, jnp.zeros_like(len_N))
    l, n, p = k_LxNxPxKxD.shape[:3]
    r = level.pack_RxC.shape[0]
    row_Rx1 = jnp.arange(r)[:, None]
    k, v = (x.reshape(l, r, (n // r) * p, *x.shape[3:])[:, row_Rx1, level.pack_RxC]
            for x in (k_LxNxPxKxD, v_LxNxPxKxD))
    return PrefixLevel(k, v, len_N, level.start_N.astype(jnp.int32))


def shared_prefix_prefill(model: Transformer, prompt_levels: Sequence[PromptLevel], group_size: int,
                          suffix_size: int, impl=None):
    """Prefill a cascade of right-padded prompt levels, each entry once.

    Level 0 runs the dense prefill; every further level is prefilled on top of the levels before
    it (`_prefill_level`). Returns (hidden state at each last-level entry's last real token
    [B, E], cache with empty suffixes). Padding positions get K/V too, but decoding never sees
    them (keys outside an entry's window are masked).
    """
    if not prompt_levels:
        raise ValueError("shared_prefix_prefill needs at least one prompt level")
    first, *rest = prompt_levels
    n, p = first.tokens_NxP.shape
    h_NxPxE, dense = dense_step(model, DenseKVCache.empty(model, n, p), first.tokens_NxP,
                                first.len_N, dense_impl(impl))
    levels = (_stored(first, dense.k_LxNxSxKxD, dense.v_LxNxSxKxD),)
    for level in rest:
        h_NxPxE, kv = _prefill_level(model, levels, level, impl)
        levels += (kv,)
    last_B11 = (levels[-1].len_N - 1)[:, None, None]
    h_last_BxE = jnp.take_along_axis(h_NxPxE, last_B11, axis=1)[:, 0]
    return h_last_BxE, SharedPrefixKVCache.with_empty_suffix(levels, group_size, suffix_size)


def shared_prefix_step(model: Transformer, cache: SharedPrefixKVCache, tokens_BxGxT, n_new_BxG,
                       impl=None):
    """Append T tokens to every sample, of which the first n_new[b, g] are real.

    Token t of sample (b, g) gets RoPE position prefix_len[b] + suffix_len[b, g] + t and its K/V
    are written into the suffix cache at suffix_len[b, g] + t; it attends to its ancestor entry of
    every level and to suffix keys s <= suffix_len[b, g] + t. The caller keeps suffix_len + T <= S
    (writes past the end would be clamped by XLA onto earlier entries). Only n_new advances
    suffix_len, so a stopped sample (n_new = 0) keeps overwriting the same free slot, and a verify
    step can keep the accepted prefix of its γ+1 tokens.

    Returns (final-normed hidden states [B, G, T, E], updated cache).
    """
    b, g, t = tokens_BxGxT.shape
    start_BxG = cache.suffix_len_BxG
    pos_BxGxT = (cache.prefix_len_B()[:, None, None] + start_BxG[:, :, None]
                 + jnp.arange(t, dtype=jnp.int32)[None, None, :])
    # Scatter indices for the new entries of every (b, g, t); all of rank 3, so they broadcast
    # without rank promotion.
    b_idx = jnp.arange(b)[:, None, None]
    g_idx = jnp.arange(g)[None, :, None]
    s_idx_BxGxT = start_BxG[:, :, None] + jnp.arange(t, dtype=jnp.int32)[None, None, :]
    # The full [L, ...] suffix arrays are threaded through the layers and updated in place with
    # one scatter per layer, instead of building per-layer copies and restacking them: on a
    # decode step the suffix cache can be larger than the prefix levels (G·S vs P).
    suffix = {"k": cache.k_suffix_LxBxGxSxKxD, "v": cache.v_suffix_LxBxGxSxKxD}

    def attend(i, q_BxGxTxHxD, k_BxGxTxKxD, v_BxGxTxKxD):
        for name, new in (("k", k_BxGxTxKxD), ("v", v_BxGxTxKxD)):
            arr = suffix[name]
            suffix[name] = arr.at[i, b_idx, g_idx, s_idx_BxGxT].set(new.astype(arr.dtype))
        return attention.shared_prefix_decode_attention(
            q_BxGxTxHxD, tuple(lv.layer(i) for lv in cache.levels), suffix["k"][i], suffix["v"][i],
            start_BxG, impl=impl,
        )

    h_BxGxTxE = model.hidden(tokens_BxGxT, pos_BxGxT, attend)
    new = cache._replace(k_suffix_LxBxGxSxKxD=suffix["k"], v_suffix_LxBxGxSxKxD=suffix["v"],
                         suffix_len_BxG=start_BxG + n_new_BxG.astype(jnp.int32))
    return h_BxGxTxE, new
