"""Optimiser: AdamW with linear warmup + cosine decay and global-norm gradient clipping (optax)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup, cosine decay and global-norm clipping."""

    # Peak learning rate reached after warmup.
    lr: float = 1e-5
    warmup_steps: int = 0
    # Steps of the cosine decay after warmup; the rate ends at lr * final_lr_fraction.
    decay_steps: int = 1000
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    # Global-norm clip; 0 disables.
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError("warmup_steps must be >= 0 and decay_steps >= 1")
        if not 0 <= self.final_lr_fraction <= 1:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")


def schedule(cfg: OptimConfig):
    """The learning-rate schedule: linear warmup to `lr`, then cosine decay to `lr *
    final_lr_fraction`.
    """
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if cfg.warmup_steps else cfg.lr,
        peak_value=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.warmup_steps + cfg.decay_steps,
        end_value=cfg.lr * cfg.final_lr_fraction,
    )


def check_float32_params(params) -> None:
    """Refuse trained parameters that are not float32.

    The trained weights are the fp32 master copy (bf16 is a compute dtype only): a bf16 weight
    has 8 significant bits, so an AdamW step of lr ~1e-5 on a weight of ~0.02 is far below half
    its spacing and would be rounded away.
    """
    low = sorted({str(x.dtype) for x in jax.tree.leaves(params) if x.dtype != jnp.float32})
    if low:
        raise ValueError(f"trained parameters must be float32 (fp32 master weights), got {low}; "
                         "load or initialise with param_dtype float32 and set compute_dtype "
                         "bfloat16 for bf16 matmuls")


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The optax transformation: optional global-norm clip, then AdamW on the schedule. Its init
    accepts float32 parameters only (`check_float32_params`)."""
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    parts.append(optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay))
    chain = optax.chain(*parts)

    def init(params):
        check_float32_params(params)
        return chain.init(params)

    return optax.GradientTransformation(init, chain.update)
