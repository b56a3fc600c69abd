"""Exact merge of attention results computed over disjoint key sets.

Attention over keys K1 ∪ K2 equals a convex combination of the attention over K1 and over K2,
weighted by each part's softmax mass exp(lse_i). Split attention (training) and shared-prefix
decoding (generation) both compute a prompt part and an own-tokens part separately and merge them
with these helpers.
"""

import jax.numpy as jnp

# A finite stand-in for log(0): a part with no visible keys gets weight exp(-inf)-like zero
# without producing NaNs through inf - inf.
NEG_INF = -1e30


def merge_attention(o1, lse1, o2, lse2):
    """Merge two normalised partial attention outputs.

    o1, o2: [..., D] outputs, each normalised over its own key set.
    lse1, lse2: [...] log-sum-exp of the scaled scores of each key set (NEG_INF when empty).
    Returns (o, lse) for the union of the key sets; o has the dtype of o1.
    """
    lse1 = lse1.astype(jnp.float32)
    lse2 = lse2.astype(jnp.float32)
    lse = jnp.logaddexp(lse1, lse2)
    w1 = jnp.exp(lse1 - lse)[..., None]
    w2 = jnp.exp(lse2 - lse)[..., None]
    o = w1 * o1.astype(jnp.float32) + w2 * o2.astype(jnp.float32)
    return o.astype(o1.dtype), lse


def merge_unnormalised(acc1, m1, l1, acc2, m2, l2):
    """Merge two flash-style running states (acc = Σ exp(s - m) v, m = running max, l = Σ exp(s - m)).

    Returns the merged (acc, m, l); the normalised output is acc / l[..., None] and the
    log-sum-exp is m + log(l).
    """
    m = jnp.maximum(m1, m2)
    a1 = jnp.exp(m1 - m)
    a2 = jnp.exp(m2 - m)
    acc = acc1 * a1[..., None] + acc2 * a2[..., None]
    return acc, m, l1 * a1 + l2 * a2
