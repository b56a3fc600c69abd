"""GRPO-family policy losses and group-relative advantages, registered by name.

Every loss is written as Σ (per-token contribution) / (a constant of the whole batch), so a batch
split into micro-batches of whole groups and accumulated gives exactly the full-batch gradient:
the normaliser is computed once from the full batch (`loss_normaliser`) and passed to each
micro-batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp

ADVANTAGES: dict[str, Callable] = {}
AGGREGATIONS = ("token_mean", "seq_mean", "dr_grpo")


def register_advantage(name: str):
    """Decorator registering an advantage function `f(rewards_BxG) -> advantages_BxG` under `name`."""
    def deco(fn):
        ADVANTAGES[name] = fn
        return fn

    return deco


@register_advantage("grpo")
def grpo_advantages(rewards_BxG, eps: float = 1e-6):
    """(r - mean) / (std + eps) within each group; a group with equal rewards gets exactly 0."""
    centred = rewards_BxG - rewards_BxG.mean(axis=1, keepdims=True)
    std = rewards_BxG.std(axis=1, keepdims=True)
    same = (rewards_BxG.max(axis=1, keepdims=True) - rewards_BxG.min(axis=1, keepdims=True)) == 0
    return jnp.where(same, 0.0, centred / (std + eps))


@register_advantage("dr_grpo")
def mean_centred_advantages(rewards_BxG, eps: float = 1e-6):
    """Dr. GRPO: mean-centred only, no std scaling (avoids up-weighting near-uniform groups)."""
    del eps
    centred = rewards_BxG - rewards_BxG.mean(axis=1, keepdims=True)
    same = (rewards_BxG.max(axis=1, keepdims=True) - rewards_BxG.min(axis=1, keepdims=True)) == 0
    return jnp.where(same, 0.0, centred)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which advantage estimator, aggregation, clip range and KL weight the policy loss uses."""

    # Advantage estimator, by name in ADVANTAGES.
    advantage: str = "grpo"
    # How token losses are combined: token_mean (DAPO), seq_mean (original GRPO), dr_grpo
    # (sum over tokens / (sequences × max_completion_tokens), no length bias).
    aggregation: str = "token_mean"
    # Clipped importance ratio in [1 - clip_low, 1 + clip_high]; clip_high > clip_low is DAPO's
    # "clip-higher".
    clip_low: float = 0.2
    clip_high: float = 0.28
    # Weight of the k3 KL estimator to the frozen reference policy (0 disables the reference pass).
    kl_coef: float = 0.0

    def __post_init__(self):
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"unknown advantage {self.advantage!r}; registered: {sorted(ADVANTAGES)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose from {AGGREGATIONS}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


def compute_advantages(rewards_BxG, cfg: LossConfig):
    """Advantages [B, G] of rewards [B, G] with the configured estimator."""
    return ADVANTAGES[cfg.advantage](rewards_BxG)


def loss_normaliser(mask_BxGxR, cfg: LossConfig):
    """The batch constant every micro-batch divides by (see module docstring)."""
    b, g, r = mask_BxGxR.shape
    if cfg.aggregation == "token_mean":
        return jnp.maximum(mask_BxGxR.sum(), 1).astype(jnp.float32)
    return jnp.asarray(b * g * (r if cfg.aggregation == "dr_grpo" else 1), jnp.float32)


def policy_loss(logp_BxGxR, old_logp_BxGxR, adv_BxG, mask_BxGxR, normaliser, cfg: LossConfig,
                ref_logp_BxGxR=None):
    """Clipped-ratio policy loss (+ k3 KL). Returns (loss, metrics dict of scalars)."""
    mask = mask_BxGxR.astype(jnp.float32)
    ratio = jnp.exp(logp_BxGxR - old_logp_BxGxR)
    adv = adv_BxG[:, :, None]
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    per_token = jnp.maximum(unclipped, clipped)
    kl = jnp.zeros_like(per_token)
    if ref_logp_BxGxR is not None and cfg.kl_coef > 0:
        # k3 estimator of KL(π || π_ref): exp(ref - logp) - (ref - logp) - 1 ≥ 0, unbiased.
        d = ref_logp_BxGxR - logp_BxGxR
        kl = jnp.exp(d) - d - 1.0
        per_token = per_token + cfg.kl_coef * kl
    if cfg.aggregation == "seq_mean":
        lengths = jnp.maximum(mask.sum(axis=2, keepdims=True), 1.0)
        weights = mask / lengths
    else:
        weights = mask
    loss = jnp.sum(per_token * weights) / normaliser
    n_tok = jnp.maximum(mask.sum(), 1.0)
    clipped_frac = jnp.sum(((ratio < 1 - cfg.clip_low) | (ratio > 1 + cfg.clip_high)) * mask) / n_tok
    metrics = {
        "clip_fraction": clipped_frac,
        "kl": jnp.sum(kl * mask) / n_tok,
        "ratio_mean": jnp.sum(ratio * mask) / n_tok,
    }
    return loss, metrics
