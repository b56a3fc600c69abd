"""Supervised warm start on (prompt, answer) pairs by teacher forcing.

Reuses the GRPO machinery: an example is a PromptGroups group with G = 1, the loss is the
token-mean negative log-likelihood of the answer, and the optimiser/apply step are shared.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from zorro_jax.layouts import pack_prompt_groups
from zorro_jax.rl.grpo import data_order
from zorro_jax.rl.optim import OptimConfig
from zorro_jax.rl.steps import make_sft_grad_fn


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised warm start: steps, examples per step, data seed and optimiser."""

    steps: int = 200
    # Examples per optimiser step.
    batch_size: int = 16
    seed: int = 0
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=10, decay_steps=190)

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"need steps >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")


def make_sft_step(graphdef, apply_fn, examples: list[tuple[list[int], list[int]]], cfg: SFTConfig,
                  pad_id: int = 0, impl=None):
    """step_fn(step, state={'params', 'opt'}) -> (state, metrics row) for `run_phase`."""
    if not examples:
        raise ValueError("SFT needs at least one (prompt, answer) example")
    grad_fn = make_sft_grad_fn(graphdef, "prompt_once", impl)

    def step_fn(step: int, state):
        idx = data_order(len(examples), cfg.seed, (step - 1) * cfg.batch_size, cfg.batch_size)
        batch = pack_prompt_groups([(examples[i][0], [examples[i][1]]) for i in idx], pad_id=pad_id)
        n_tok = jnp.maximum(batch.completion_mask().sum(), 1).astype(jnp.float32)
        loss, _, grads = grad_fn(state["params"], batch, n_tok)
        params, opt, gnorm, finite = apply_fn(state["params"], state["opt"], grads)
        row = {"loss": float(loss), "grad_norm": float(gnorm), "skipped_updates": int(not bool(finite)),
               "tokens": int(n_tok)}
        return {"params": params, "opt": opt}, row

    return step_fn
