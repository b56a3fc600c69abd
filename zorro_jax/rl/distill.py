"""Draft distillation: fit a small draft model to the policy on the policy's own rollouts.

The loss is the forward KL(p_policy || q_draft) over the full vocabulary (accumulated chunk by
chunk, never as [L, V]) at every completion position, masked to real tokens and averaged over them. Both models run the prompt-once forward
on the same `PackedTree` batch (`packed_hidden`): each completion token is predicted from the
hidden state at its `prev` column (the prompt's last token for the first one). Higher
acceptance in speculative sampling is what this buys: the expected acceptance of a draft token is
Σ min(p, q) = 1 − TV(p, q), and TV is bounded by sqrt(KL / 2).

`distill_step` is a pure jitted function of (graphdefs, states, optimizer state, batch) so GRPO
can call it on the rollouts it already has; `distill_on_rollouts` is the host-side loop used by
the offline entry point.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from zorro_jax.layouts import PackedTree
from zorro_jax.model.forward import packed_hidden
from zorro_jax.model.logprobs import kl_and_overlap
from zorro_jax.model.transformer import Transformer
from zorro_jax.rl.batches import pack_groups, rollout_groups, tiles_for
from zorro_jax.sampling.sampler import SamplerConfig, generate


def _next_token_hidden(model: Transformer, batch: PackedTree, impl):
    """Hidden states [L, E] predicting each flat loss token."""
    h_NxTxE = packed_hidden(model, batch, impl)
    rows_L, cols_L = batch.loss_predictors()
    return h_NxTxE[rows_L, cols_L]


def distill_loss(draft: Transformer, policy: Transformer, batch: PackedTree, *,
                 temperature: float = 1.0, impl=None, chunk_size: int = 2048):
    """Mean over real completion tokens of KL(p_policy || q_draft) over the full vocabulary,
    accumulated over vocabulary chunks (`kl_and_overlap`: no [L, V] array). At SmolLM2's
    vocabulary (49,152, d 576) and 16,384 loss tokens the gradient's XLA temporaries are 0.89 GiB
    in 2048-wide chunks against 3.0 GiB dense. The policy is a fixed target (no gradient flows
    into it). Returns (loss, metrics)."""
    hp_LxE = jax.lax.stop_gradient(_next_token_hidden(policy, batch, impl))
    wp_ExV = jax.lax.stop_gradient(policy.unembedding()) / temperature
    hq_LxE = _next_token_hidden(draft, batch, impl)
    kl_L, overlap_L = kl_and_overlap(hp_LxE, wp_ExV, hq_LxE, draft.unembedding() / temperature,
                                     chunk_size=chunk_size)
    live_L = batch.loss_live_L.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(live_L), 1.0)
    loss = jnp.sum(kl_L * live_L) / n
    # Expected acceptance of a draft token sampled from q: Σ_v min(p, q).
    return loss, {"kl": loss, "expected_acceptance": jnp.sum(overlap_L * live_L) / n}


@functools.partial(jax.jit, static_argnames=("draft_graph", "policy_graph", "tx", "temperature", "impl"),
                   donate_argnames=("draft_params", "opt_state"))
def distill_step(draft_graph, draft_params, draft_rest, opt_state, policy_graph, policy_state,
                 batch: PackedTree, *, tx: optax.GradientTransformation, temperature: float = 1.0,
                 impl=None):
    """One optax step on the draft's parameters. Returns (draft_params, opt_state, metrics).

    draft_params / draft_rest are `nnx.split(draft, nnx.Param, ...)`; the policy state is read
    only. `tx` must be hashable (the same optax object across calls), as it is a static argument.
    """
    policy = nnx.merge(policy_graph, policy_state)

    def loss_fn(params):
        draft = nnx.merge(draft_graph, params, draft_rest)
        return distill_loss(draft, policy, batch, temperature=temperature, impl=impl)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(draft_params)
    updates, opt_state = tx.update(grads, opt_state, draft_params)
    return optax.apply_updates(draft_params, updates), opt_state, metrics


class DraftTrainer:
    """Holds a draft's split state and optimizer state between `distill_step` calls."""

    def __init__(self, draft: Transformer, tx: optax.GradientTransformation, temperature: float = 1.0,
                 impl=None):
        self.graph, self.params, self.rest = nnx.split(draft, nnx.Param, ...)
        self.tx = tx
        self.opt_state = tx.init(self.params)
        self.temperature = temperature
        self.impl = impl

    def step(self, policy: Transformer, batch: PackedTree) -> dict:
        """One distillation step of the draft towards `policy` on a PackedTree batch; returns
        {'kl', 'expected_acceptance'}.
        """
        policy_graph, policy_state = nnx.split(policy)
        self.params, self.opt_state, metrics = distill_step(
            self.graph, self.params, self.rest, self.opt_state, policy_graph, policy_state, batch,
            tx=self.tx, temperature=self.temperature, impl=self.impl)
        return {k: float(v) for k, v in metrics.items()}

    def model(self) -> Transformer:
        """The draft with its current parameters, as an NNX module."""
        return nnx.merge(self.graph, self.params, self.rest)


def distill_on_rollouts(policy: Transformer, draft: Transformer, prompts: list[list[int]], *,
                        steps: int, group_size: int, sampler_cfg: SamplerConfig, rng, lr: float = 3e-3,
                        prompts_per_step: int = 4, log=None) -> tuple[Transformer, list[dict]]:
    """Offline distillation: each step samples `group_size` completions of a few prompts from the
    policy (plain shared-prefix sampler) and takes one KL step on them. Returns (draft, history)."""
    trainer = DraftTrainer(draft, optax.adam(lr), temperature=sampler_cfg.temperature)
    history = []
    for step in range(steps):
        start = (step * prompts_per_step) % len(prompts)
        chunk = [prompts[(start + i) % len(prompts)] for i in range(prompts_per_step)]
        rollouts = generate(policy, chunk, group_size, sampler_cfg, jax.random.fold_in(rng, step))
        groups = rollout_groups(chunk, rollouts.tokens_BxGxR, rollouts.lengths_BxG)
        for mb in pack_groups(groups, mode="prompt_once", tiles=tiles_for(policy.config, None),
                              pad_id=sampler_cfg.pad_token_id):
            metrics = trainer.step(policy, mb.packed)
        history.append(metrics)
        if log is not None:
            log(step, metrics)
    return trainer.model(), history
