"""Logits processing for sampling: temperature, top-k, top-p (nucleus), and the draw itself.

Everything runs in float32 and is jit-friendly: `top_k` is a static int, `top_p` and
`temperature` are Python floats fixed per compiled program. Truncation sets logits to -inf, so a
processed row is still a valid input to `jax.random.categorical`.

The policy log-prob the sampler records is *not* taken from the processed logits: see
`policy_logprob`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_temperature(logits_xV, temperature: float):
    """Logits in float32 divided by a positive temperature."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return logits_xV.astype(jnp.float32) / temperature


def top_k_filter(logits_xV, k: int):
    """Keep the k largest logits of each row (all of them tied with the k-th); -inf elsewhere."""
    v = logits_xV.shape[-1]
    if k <= 0 or k >= v:
        return logits_xV
    kth_x1 = jax.lax.top_k(logits_xV, k)[0][..., k - 1:k]
    return jnp.where(logits_xV >= kth_x1, logits_xV, -jnp.inf)


def top_p_filter(logits_xV, p: float):
    """Nucleus filter: keep the smallest set of most likely tokens whose mass reaches p.

    Token i (in descending probability order) is kept when the mass of the tokens strictly
    before it is < p, so the token that crosses p is kept and the top token always is. Tokens
    tied with the last kept one are kept too (the cut is a logit threshold, independent of how
    the sort orders ties).
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1.0:
        return logits_xV
    sorted_xV = -jnp.sort(-logits_xV, axis=-1)
    probs_xV = jax.nn.softmax(sorted_xV, axis=-1)
    mass_before_xV = jnp.cumsum(probs_xV, axis=-1) - probs_xV
    n_keep_x1 = jnp.sum(mass_before_xV < p, axis=-1, keepdims=True)
    cutoff_x1 = jnp.take_along_axis(sorted_xV, n_keep_x1 - 1, axis=-1)
    return jnp.where(logits_xV >= cutoff_x1, logits_xV, -jnp.inf)


def process_logits(logits_xV, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Temperature, then top-k, then top-p (the order of Hugging Face's warpers)."""
    x = apply_temperature(logits_xV, temperature)
    x = top_k_filter(x, top_k)
    return top_p_filter(x, top_p)


def sample_tokens(key, logits_xV, *, greedy: bool, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0):
    """One token per row: argmax when greedy, else a categorical draw from the processed logits."""
    if greedy:
        return jnp.argmax(logits_xV, axis=-1).astype(jnp.int32)
    x = process_logits(logits_xV, temperature=temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, x, axis=-1).astype(jnp.int32)


def policy_logprob(logits_xV, tokens_x, *, temperature: float = 1.0):
    """log_softmax(logits / temperature)[token], with no top-k / top-p truncation.

    RL losses compare these against log-probs recomputed by the training forward (old-policy
    ratios, KL terms). The training forward knows nothing of truncation, so at temperature 1
    these must equal its log-probs of the same tokens; using the truncated distribution would
    bias every ratio by the renormalisation constant of the nucleus. Greedy decoding passes
    temperature 1 for the same reason.
    """
    logp_xV = jax.nn.log_softmax(apply_temperature(logits_xV, temperature), axis=-1)
    return jnp.take_along_axis(logp_xV, tokens_x[..., None].astype(jnp.int32), axis=-1)[..., 0]
