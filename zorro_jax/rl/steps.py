"""Jitted training steps, pure functions of (params, inputs) with the graphdef closed over.

Every step runs on a `PackedTree` batch (one micro-batch of packed rows). Whether prompts are
shared is decided when the batch is packed (`zorro_jax.rl.batches.pack_groups`): "prompt_once"
packs each prompt once with its G completions under it, "naive" copies the prompt into every
sample (the baseline). The steps and the loss are the same for both.

`params` is always the whole model state; the gradient and the optimiser see only its trainable
part (`zorro_jax.model.lora.split_trainable`: the adapters when the model has LoRA adapters, else
every parameter), so with LoRA the frozen base gets no gradient and no optimiser state, and its
arrays come back from `apply` as the very arrays that went in.

`impl`: the attention backend, a name or, for steps on a mesh, the per-device kernels
(`zorro_jax.parallel.kernels.mesh_impl`; `zorro_jax.parallel.steps` adds the declared shardings).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from zorro_jax.layouts import PackedTree
from zorro_jax.model.forward import packed_logprobs
from zorro_jax.model.lora import split_trainable
from zorro_jax.rl.losses import LossConfig, policy_loss


def make_logprob_fn(graphdef, impl=None):
    """A jitted `fn(params, batch) -> (log-probs [B, G, R], entropy [B, G, R])` of the loss view
    of a PackedTree micro-batch."""

    @jax.jit
    def fn(params, batch: PackedTree):
        lp, ent, _mask = packed_logprobs(nnx.merge(graphdef, params), batch, impl=impl)
        return lp, ent

    return fn


def make_grpo_grad_fn(graphdef, loss_cfg: LossConfig, impl=None):
    """grad(params, batch, old_logp, adv, ref_logp, normaliser) -> (loss, metrics, grads); grads
    of the trainable part of params only."""

    def loss_fn(trainable, frozen, batch, old_logp, adv, ref_logp, normaliser):
        lp, ent, mask = packed_logprobs(nnx.merge(graphdef, trainable, frozen), batch, impl=impl)
        loss, metrics = policy_loss(lp, old_logp, adv, mask, normaliser, loss_cfg,
                                    ref_logp if loss_cfg.kl_coef > 0 else None)
        m = mask.astype(jnp.float32)
        metrics["entropy"] = jnp.sum(jax.lax.stop_gradient(ent) * m) / jnp.maximum(m.sum(), 1.0)
        return loss, metrics

    @jax.jit
    def fn(params, batch, old_logp, adv, ref_logp, normaliser):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            *split_trainable(params), batch, old_logp, adv, ref_logp, normaliser)
        return loss, metrics, grads

    return fn


def make_sft_grad_fn(graphdef, impl=None):
    """Teacher forcing on packed (prompt, answer) trees: Σ -log p(answer token) / normaliser;
    grads of the trainable part of params only."""

    def loss_fn(trainable, frozen, batch, normaliser):
        lp, _, mask = packed_logprobs(nnx.merge(graphdef, trainable, frozen), batch, impl=impl,
                                      with_entropy=False)
        return -jnp.sum(jnp.where(mask, lp, 0.0)) / normaliser

    @jax.jit
    def fn(params, batch, normaliser):
        loss, grads = jax.value_and_grad(loss_fn)(*split_trainable(params), batch, normaliser)
        return loss, {}, grads

    return fn


def init_opt_state(optimizer: optax.GradientTransformation, params):
    """The optimiser state for `make_apply_fn`: of the trainable part of params only."""
    return optimizer.init(split_trainable(params)[0])


def make_update_fn(optimizer: optax.GradientTransformation):
    """update(trainable, opt_state, grads) -> (trainable, opt_state, grad_norm, finite): the
    optimiser step on the trainable part (pure; `make_apply_fn` jits it). A non-finite gradient
    leaves the trainable params and the optimiser state untouched (the caller logs the skip)."""

    def update(trainable, opt_state, grads):
        gnorm = optax.global_norm(grads)
        finite = jnp.isfinite(gnorm)
        updates, new_opt = optimizer.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        return keep(new_trainable, trainable), keep(new_opt, opt_state), gnorm, finite

    return update


def make_apply_fn(optimizer: optax.GradientTransformation, update=None):
    """apply(params, opt_state, grads) -> (params, opt_state, grad_norm, finite).

    grads and opt_state are of the trainable part of params (`init_opt_state`); `update` is the
    jitted `make_update_fn(optimizer)` (a sharded, donating one on a mesh). The frozen part never
    enters it: its arrays are returned as they came (no copy per step, never donated, and shared
    with any reference policy taken from the same state).
    """
    update = jax.jit(make_update_fn(optimizer)) if update is None else update

    def fn(params, opt_state, grads):
        trainable, frozen = split_trainable(params)
        new_trainable, new_opt, gnorm, finite = update(trainable, opt_state, grads)
        return nnx.merge_state(new_trainable, frozen), new_opt, gnorm, finite

    return fn


def add_grads(acc, grads):
    """Accumulate a gradient pytree (`acc` None starts the sum)."""
    return grads if acc is None else jax.tree.map(jnp.add, acc, grads)
