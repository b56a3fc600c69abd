"""The shared-prefix KV cache (layout `SharedPrefixDecode`): a group's prompt K/V stored once.

B unique prompts are prefilled once each; their K/V live in [layers, B, P, K, D]. Each of the G
samples of a group owns a suffix cache [layers, B, G, S, K, D] for the tokens it generates. A
step appends T tokens to every sample (T = 1 for decoding, γ+1 for speculative verification) and
attends to (shared prompt keys) ⊕ (own suffix keys) through
`attention.shared_prefix_decode_attention`, which reads each prompt KV block once per group.

Like `DenseKVCache`, the cache is an explicit pytree passed into and returned from jitted steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from zorro_jax import attention
from zorro_jax.model.forward import DenseKVCache, dense_step
from zorro_jax.model.transformer import Transformer


class SharedPrefixKVCache(NamedTuple):
    """Prompt K/V once per group plus per-sample suffix K/V.

    prompt_len_B: real prompt tokens (keys j < prompt_len are visible; the rest is padding).
    suffix_len_BxG: tokens written into each sample's suffix so far; the next token of sample
    (b, g) sits at RoPE position prompt_len[b] + suffix_len[b, g].
    """

    k_prompt_LxBxPxKxD: jnp.ndarray
    v_prompt_LxBxPxKxD: jnp.ndarray
    prompt_len_B: jnp.ndarray
    k_suffix_LxBxGxSxKxD: jnp.ndarray
    v_suffix_LxBxGxSxKxD: jnp.ndarray
    suffix_len_BxG: jnp.ndarray

    @property
    def group_size(self) -> int:
        """G, the samples per prompt."""
        return self.k_suffix_LxBxGxSxKxD.shape[2]

    @property
    def suffix_size(self) -> int:
        """S, the per-sample suffix capacity in tokens."""
        return self.k_suffix_LxBxGxSxKxD.shape[3]

    def nbytes(self) -> int:
        """Bytes of K/V held: prompt P per group + suffix G·S per group (lengths not counted)."""
        return int(self.k_prompt_LxBxPxKxD.nbytes + self.v_prompt_LxBxPxKxD.nbytes
                   + self.k_suffix_LxBxGxSxKxD.nbytes + self.v_suffix_LxBxGxSxKxD.nbytes)

    @classmethod
    def from_prompt_cache(cls, prompt: DenseKVCache, group_size: int, suffix_size: int):
        """Wrap a prefilled per-prompt `DenseKVCache` [L, B, P, K, D] with empty suffixes."""
        l, b, _, k, d = prompt.k_LxNxSxKxD.shape
        shape = (l, b, group_size, suffix_size, k, d)
        dtype = prompt.k_LxNxSxKxD.dtype
        return cls(prompt.k_LxNxSxKxD, prompt.v_LxNxSxKxD, prompt.lengths_N.astype(jnp.int32),
                   jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((b, group_size), jnp.int32))


def _dense_impl(impl):
    # The prompt prefill runs on the Dense layout, which has no Pallas kernel; asking for one
    # there would only print a fallback warning.
    return "reference" if impl == "reference" else "xla"


def shared_prefix_prefill(model: Transformer, tokens_BxP, prompt_len_B, group_size: int,
                          suffix_size: int, impl=None):
    """Prefill B unique right-padded prompts once.

    Returns (hidden state at each prompt's last real token [B, E], cache with empty suffixes).
    Padding positions get K/V too, but decoding never sees them (keys j >= prompt_len are masked).
    """
    b, p = tokens_BxP.shape
    empty = DenseKVCache.empty(model, b, p)
    h_BxPxE, prompt = dense_step(model, empty, tokens_BxP, prompt_len_B, _dense_impl(impl))
    last_B11 = (prompt_len_B - 1).astype(jnp.int32)[:, None, None]
    h_last_BxE = jnp.take_along_axis(h_BxPxE, last_B11, axis=1)[:, 0]
    return h_last_BxE, SharedPrefixKVCache.from_prompt_cache(prompt, group_size, suffix_size)


def shared_prefix_step(model: Transformer, cache: SharedPrefixKVCache, tokens_BxGxT, n_new_BxG,
                       impl=None):
    """Append T tokens to every sample, of which the first n_new[b, g] are real.

    Token t of sample (b, g) gets RoPE position prompt_len[b] + suffix_len[b, g] + t and its K/V
    are written into the suffix cache at suffix_len[b, g] + t; it attends to the prompt and to
    suffix keys s <= suffix_len[b, g] + t. The caller keeps suffix_len + T <= S (writes past the
    end would be clamped by XLA onto earlier entries). Only n_new advances suffix_len, so a
    stopped sample (n_new = 0) keeps overwriting the same free slot, and a verify step can keep
    the accepted prefix of its γ+1 tokens.

    Returns (final-normed hidden states [B, G, T, E], updated cache).
    """
    b, g, t = tokens_BxGxT.shape
    start_BxG = cache.suffix_len_BxG
    pos_BxGxT = (cache.prompt_len_B[:, None, None] + start_BxG[:, :, None]
                 + jnp.arange(t, dtype=jnp.int32)[None, None, :])
    # Scatter indices for the new entries of every (b, g, t); all of rank 3, so they broadcast
    # without rank promotion.
    b_idx = jnp.arange(b)[:, None, None]
    g_idx = jnp.arange(g)[None, :, None]
    s_idx_BxGxT = start_BxG[:, :, None] + jnp.arange(t, dtype=jnp.int32)[None, None, :]
    # The full [L, ...] suffix arrays are threaded through the layers and updated in place with
    # one scatter per layer, instead of building per-layer copies and restacking them: on a
    # decode step the suffix cache can be larger than the prompt cache (G·S vs P).
    suffix = {"k": cache.k_suffix_LxBxGxSxKxD, "v": cache.v_suffix_LxBxGxSxKxD}

    def attend(i, q_BxGxTxHxD, k_BxGxTxKxD, v_BxGxTxKxD):
        for name, new in (("k", k_BxGxTxKxD), ("v", v_BxGxTxKxD)):
            arr = suffix[name]
            suffix[name] = arr.at[i, b_idx, g_idx, s_idx_BxGxT].set(new.astype(arr.dtype))
        return attention.shared_prefix_decode_attention(
            q_BxGxTxHxD, cache.k_prompt_LxBxPxKxD[i], cache.v_prompt_LxBxPxKxD[i], cache.prompt_len_B,
            suffix["k"][i], suffix["v"][i], start_BxG, impl=impl,
        )

    h_BxGxTxE = model.hidden(tokens_BxGxT, pos_BxGxT, attend)
    new = cache._replace(k_suffix_LxBxGxSxKxD=suffix["k"], v_suffix_LxBxGxSxKxD=suffix["v"],
                         suffix_len_BxG=start_BxG + n_new_BxG.astype(jnp.int32))
    return h_BxGxTxE, new

