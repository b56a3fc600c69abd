"""Jitted training steps, pure functions of (params, inputs) with the graphdef closed over.

`mode` selects the layout the whole computation runs on: "prompt_once" (PromptGroups, each
prompt processed once per group) or "naive" (the same batch replicated to Dense rows inside the
step: the baseline). Inputs are always a PromptGroups batch so both modes see identical data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from zorro_jax.layouts import PromptGroups
from zorro_jax.model.forward import dense_logprobs, prompt_groups_logprobs
from zorro_jax.rl.losses import LossConfig, policy_loss

MODES = ("prompt_once", "naive")


def check_mode(mode: str):
    """Raise ValueError unless `mode` is 'prompt_once' or 'naive'."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def completion_logprobs(model, batch: PromptGroups, mode: str, impl=None, with_entropy=True):
    """(logp, entropy, mask) [B, G, R] of the completion tokens, on the chosen layout."""
    if mode == "prompt_once":
        return prompt_groups_logprobs(model, batch, impl=impl, with_entropy=with_entropy)
    dense = batch.to_dense()
    lp, ent, _ = dense_logprobs(model, dense, impl=impl, with_entropy=with_entropy)
    ent = batch.from_dense_next_token(ent) if ent is not None else None
    return batch.from_dense_next_token(lp), ent, batch.completion_mask()


def make_logprob_fn(graphdef, mode: str, impl=None):
    """A jitted `fn(params, batch) -> (log-probs [B, G, R], entropy [B, G, R])` of the completions
    of a PromptGroups batch, computed prompt-once or on the replicated batch per `mode`.
    """
    check_mode(mode)

    @jax.jit
    def fn(params, batch: PromptGroups):
        model = nnx.merge(graphdef, params)
        lp, ent, _mask = completion_logprobs(model, batch, mode, impl)
        return lp, ent

    return fn


def make_grpo_grad_fn(graphdef, loss_cfg: LossConfig, mode: str, impl=None):
    """grad(params, batch, old_logp, adv, ref_logp, normaliser) -> (loss, metrics, grads)."""
    check_mode(mode)

    def loss_fn(params, batch, old_logp, adv, ref_logp, normaliser):
        model = nnx.merge(graphdef, params)
        lp, ent, mask = completion_logprobs(model, batch, mode, impl)
        loss, metrics = policy_loss(lp, old_logp, adv, mask, normaliser, loss_cfg,
                                    ref_logp if loss_cfg.kl_coef > 0 else None)
        m = mask.astype(jnp.float32)
        metrics["entropy"] = jnp.sum(jax.lax.stop_gradient(ent) * m) / jnp.maximum(m.sum(), 1.0)
        return loss, metrics

    @jax.jit
    def fn(params, batch, old_logp, adv, ref_logp, normaliser):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch, old_logp, adv, ref_logp, normaliser)
        return loss, metrics, grads

    return fn


def make_sft_grad_fn(graphdef, mode: str = "prompt_once", impl=None):
    """Teacher forcing on (prompt, answer) groups: Σ -log p(answer token) / normaliser."""
    check_mode(mode)

    def loss_fn(params, batch, normaliser):
        model = nnx.merge(graphdef, params)
        lp, _, mask = completion_logprobs(model, batch, mode, impl, with_entropy=False)
        return -jnp.sum(jnp.where(mask, lp, 0.0)) / normaliser

    @jax.jit
    def fn(params, batch, normaliser):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, normaliser)
        return loss, {}, grads

    return fn


def make_apply_fn(optimizer: optax.GradientTransformation):
    """apply(params, opt_state, grads) -> (params, opt_state, grad_norm, finite).

    A non-finite gradient leaves params and optimiser state untouched (the caller logs the skip).
    """

    @jax.jit
    def fn(params, opt_state, grads):
        gnorm = optax.global_norm(grads)
        finite = jnp.isfinite(gnorm)
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        return keep(new_params, params), keep(new_opt, opt_state), gnorm, finite

    return fn


def add_grads(acc, grads):
    """Accumulate a gradient pytree (`acc` None starts the sum)."""
    return grads if acc is None else jax.tree.map(jnp.add, acc, grads)


def slice_groups(tree, start: int, stop: int):
    """Micro-batch of whole groups: every array's leading axis is the unique-prompt axis B."""
    return jax.tree.map(lambda x: x[start:stop], tree)
