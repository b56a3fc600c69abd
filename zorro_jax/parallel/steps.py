"""Sharded jitted steps: train (grad + AdamW apply), log-probs, decode, and greedy/sampled generation.

Each step is the single-device step of `zorro_jax.rl.steps` / `zorro_jax.sampling` jitted with
declared in/out shardings: params and optimizer state follow the preset's rules, a training
`PackedTree` splits its packed rows N over ("data", "fsdp") with its loss view replicated
(`rules.packed_shardings`), decode batches split their groups B there, scalars are replicated.
The apply and train steps donate the params and optimizer state they replace. Inside, XLA's
sharding propagation places the activations; `constrain_packed` pins the batch layout at the
step boundary so the propagation starts from row-sharded tokens even for unplaced host arrays,
and the forward pins its residual stream and LM head to the rows too (`rules.row_constraint`), so
a device computes and stores only its own rows' activations.

`training_steps` bundles what a training run needs (log-probs, GRPO and SFT gradients, apply,
rollouts, placement) for one device or a mesh behind one interface (`TrainSteps`), so the GRPO
trainer and the SFT step run the same code either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from zorro_jax.layouts import PackedTree, bucket
from zorro_jax.model.lora import split_trainable
from zorro_jax.parallel.distributed import place, to_host
from zorro_jax.parallel.kernels import mesh_impl
from zorro_jax.parallel.mesh import BATCH_AXES, batch_shards, check_batch, check_model
from zorro_jax.parallel.rules import (
    batch_sharding,
    batch_shardings,
    opt_state_shardings,
    packed_shardings,
    param_shardings,
    replicated,
    reshard,
    row_constraint,
)
from zorro_jax.rl.losses import LossConfig
from zorro_jax.rl.steps import (
    init_opt_state,
    make_apply_fn,
    make_grpo_grad_fn,
    make_logprob_fn,
    make_sft_grad_fn,
    make_update_fn,
)
from zorro_jax.sampling.cache import PrefixLevel, SharedPrefixKVCache, shared_prefix_step
from zorro_jax.sampling.sampler import (
    PromptTree,
    Rollouts,
    SamplerConfig,
    check_request,
    flat_prompts,
    pack_levels,
    shared_decode,
    shared_prefill,
    to_rollouts,
)


class StepShardings(NamedTuple):
    """Everything a caller needs to place inputs for the sharded steps."""

    mesh: Mesh
    params: object
    # The trainable part of `params` (`model.lora.split_trainable`): what gradients and the
    # optimiser state are laid out like (the adapters alone for a model with LoRA adapters).
    trainable: object
    opt_state: object
    batch: NamedSharding
    replicated: NamedSharding
    # A training PackedTree: rows over ("data", "fsdp"), the loss view replicated.
    packed: PackedTree


def step_shardings(mesh: Mesh, params, preset: str = "training",
                   optimizer: optax.GradientTransformation | None = None) -> StepShardings:
    """Shardings for a (concrete or abstract) params state under a preset; optimizer state
    shardings (of the trainable part) too when an optimizer is given."""
    ps = param_shardings(params, mesh, preset)
    ts = split_trainable(ps)[0]
    os_ = (opt_state_shardings(optimizer, split_trainable(params)[0], ts, mesh)
           if optimizer is not None else None)
    return StepShardings(mesh, ps, ts, os_, batch_sharding(mesh), replicated(mesh),
                         packed_shardings(mesh))


def constrain_batch(tree, mesh: Mesh):
    """Activation hook: pin a batch pytree's B axis to ("data", "fsdp") inside a jitted step."""
    return jax.lax.with_sharding_constraint(tree, batch_shardings(tree, mesh))


def constrain_packed(batch: PackedTree, mesh: Mesh) -> PackedTree:
    """Pin a training PackedTree to its layout (`rules.packed_shardings`) inside a jitted step,
    so the propagation starts from row-sharded tokens even when a caller passes host arrays."""
    return jax.lax.with_sharding_constraint(batch, packed_shardings(mesh))


def make_grad_step(graphdef, loss_cfg: LossConfig, sh: StepShardings, *, impl=None):
    """grad(params, batch, old_logp, adv, ref_logp, normaliser) -> (loss, metrics, grads).

    The single-device GRPO gradient with declared shardings; grads (of the trainable part) come
    back sharded like those params, so micro-batch accumulation stays sharded. The per-sample inputs (old / ref
    log-probs [B, G, R], advantages [B, G]) follow the loss view: replicated.
    """
    grad_fn = make_grpo_grad_fn(graphdef, loss_cfg, mesh_impl(impl, sh.mesh), row_constraint(sh.mesh))

    def fn(params, batch, old_logp, adv, ref_logp, normaliser):
        return grad_fn(params, constrain_packed(batch, sh.mesh), old_logp, adv, ref_logp, normaliser)

    r = sh.replicated
    return jax.jit(fn, in_shardings=(sh.params, sh.packed, r, r, r, r), out_shardings=(r, r, sh.trainable))


def make_sft_grad_step(graphdef, sh: StepShardings, *, impl=None):
    """grad(params, batch, normaliser) -> (loss, {}, grads): teacher forcing
    (`rl.steps.make_sft_grad_fn`) with declared shardings."""
    grad_fn = make_sft_grad_fn(graphdef, mesh_impl(impl, sh.mesh), row_constraint(sh.mesh))

    def fn(params, batch, normaliser):
        return grad_fn(params, constrain_packed(batch, sh.mesh), normaliser)

    r = sh.replicated
    return jax.jit(fn, in_shardings=(sh.params, sh.packed, r), out_shardings=(r, r, sh.trainable))


def make_apply_step(optimizer: optax.GradientTransformation, sh: StepShardings):
    """apply(params, opt_state, grads) -> (params, opt_state, grad_norm, finite); donates the
    trainable params and the optimizer state (a frozen LoRA base passes through, not donated,
    so a KL reference can share its arrays)."""
    if sh.opt_state is None:
        raise ValueError("make_apply_step needs StepShardings built with the optimizer")
    r = sh.replicated
    update = jax.jit(make_update_fn(optimizer),
                     in_shardings=(sh.trainable, sh.opt_state, sh.trainable),
                     out_shardings=(sh.trainable, sh.opt_state, r, r), donate_argnums=(0, 1))
    return make_apply_fn(optimizer, update)


def make_train_step(graphdef, optimizer: optax.GradientTransformation, loss_cfg: LossConfig,
                    sh: StepShardings, *, impl=None):
    """step(params, opt_state, batch, old_logp, adv, ref_logp, normaliser)
    -> (params, opt_state, loss, metrics, grad_norm, finite).

    One GRPO update on a PackedTree micro-batch: the grad and apply steps fused into one program.
    params (all of them, a LoRA base too) and opt_state are donated.
    """
    if sh.opt_state is None:
        raise ValueError("make_train_step needs StepShardings built with the optimizer")
    grad_fn = make_grpo_grad_fn(graphdef, loss_cfg, mesh_impl(impl, sh.mesh), row_constraint(sh.mesh))
    apply_fn = make_apply_fn(optimizer)

    def step(params, opt_state, batch, old_logp, adv, ref_logp, normaliser):
        batch = constrain_packed(batch, sh.mesh)
        loss, metrics, grads = grad_fn(params, batch, old_logp, adv, ref_logp, normaliser)
        # Reduce-scatter the gradients into the params' layout before the optimizer touches them.
        grads = jax.lax.with_sharding_constraint(grads, sh.trainable)
        params, opt_state, gnorm, finite = apply_fn(params, opt_state, grads)
        return params, opt_state, loss, metrics, gnorm, finite

    r = sh.replicated
    return jax.jit(step,
                   in_shardings=(sh.params, sh.opt_state, sh.packed, r, r, r, r),
                   out_shardings=(sh.params, sh.opt_state, r, r, r, r),
                   donate_argnums=(0, 1))


def make_logprob_step(graphdef, sh: StepShardings, *, impl=None):
    """logp(params, batch) -> (logp [B, G, R], entropy [B, G, R]), in the (replicated) loss view."""
    logprob_fn = make_logprob_fn(graphdef, mesh_impl(impl, sh.mesh), row_constraint(sh.mesh))

    def fn(params, batch):
        return logprob_fn(params, constrain_packed(batch, sh.mesh))

    r = sh.replicated
    return jax.jit(fn, in_shardings=(sh.params, sh.packed), out_shardings=(r, r))


def cache_shardings(mesh: Mesh, num_levels: int = 1) -> SharedPrefixKVCache:
    """A shared-prefix cache of `num_levels` prefix levels split over entries / rows (on
    data × fsdp) and kv heads (tensor). Every level's cache rows and entries must divide over
    data × fsdp, so that the rows under an entry live on the entry's device (a packed level's
    rows are its parents' entries, which `_pad_to_shards` makes divide)."""
    kv_p = NamedSharding(mesh, P(None, BATCH_AXES, None, "tensor", None))
    kv_s = NamedSharding(mesh, P(None, BATCH_AXES, None, None, "tensor", None))
    b = batch_sharding(mesh)
    levels = tuple(PrefixLevel(kv_p, kv_p, b, b) for _ in range(num_levels))
    return SharedPrefixKVCache(levels, kv_s, kv_s, b)


def make_decode_step(graphdef, sh: StepShardings, *, impl=None, num_levels: int = 1):
    """step(params, cache, last_BxG, live_BxG) -> (greedy token [B, G], logits [B, G, V], cache).

    One shared-prefix decode step on a cache of `num_levels` prefix levels with declared
    shardings (the cache is donated): the unit the sampler's loop repeats, exposed for memory
    accounting and custom loops.
    """
    cs = cache_shardings(sh.mesh, num_levels)
    impl = mesh_impl(impl, sh.mesh)

    def fn(params, cache, last_BxG, live_BxG):
        model = nnx.merge(graphdef, params)
        h_BxGx1xE, cache = shared_prefix_step(model, cache, last_BxG[:, :, None],
                                              live_BxG.astype(jnp.int32), impl)
        logits_BxGxV = model.logits(h_BxGx1xE[:, :, 0])
        return jnp.argmax(logits_BxGxV, axis=-1).astype(jnp.int32), logits_BxGxV, cache

    b = sh.batch
    return jax.jit(fn, in_shardings=(sh.params, cs, b, b), out_shardings=(b, b, cs),
                   donate_argnums=(1,))


def _pad_to_shards(prompts: list[list[int]] | PromptTree, multiple: int):
    """Repeat the last prompt (or the last root with its questions) so every prefix level's
    entries divide the batch shards; the extra rows are dropped after."""
    if isinstance(prompts, PromptTree):
        extra = (-len(prompts.roots)) % multiple
        return PromptTree(list(prompts.roots) + [prompts.roots[-1]] * extra,
                          list(prompts.questions) + [prompts.questions[-1]] * extra)
    return list(prompts) + [prompts[-1]] * ((-len(prompts)) % multiple)


def generate_sharded(model, prompts: list[list[int]] | PromptTree, group_size: int,
                     cfg: SamplerConfig, rng: jax.Array, mesh: Mesh) -> Rollouts:
    """`sampling.generate` (shared-prefix mode) with the batch split over the mesh.

    The model's params should already be placed (e.g. merged from
    `reshard(state, mesh, "sampling")`). The prompts (a PromptTree's roots) are padded to a
    multiple of data × fsdp and every prefix level is split over those axes; the sampler's jitted
    prefill and decode then run SPMD with shardings propagated from the placed inputs, so each
    device prefills and decodes its own entries and rows against its slice of the heads. Same
    draws as `generate` for the same key.
    """
    check_request(prompts, group_size, cfg, model.config.vocab_size)
    rows = flat_prompts(prompts)
    padded = _pad_to_shards(prompts, batch_shards(mesh))
    levels = place(pack_levels(padded, cfg), batch_sharding(mesh))
    graphdef, params = nnx.split(model)
    response_size = bucket(cfg.max_new_tokens, cfg.response_buckets)
    # "pallas" becomes the per-device kernels: the mesh enters the compiled programs' key.
    spec = cfg.draw_spec()._replace(impl=mesh_impl(cfg.attention_impl, mesh))
    cache, tok0, logp0 = shared_prefill(graphdef, params, levels, rng, spec=spec,
                                        group_size=group_size, response_size=response_size)
    kv_bytes = cache.nbytes() * len(rows) // len(flat_prompts(padded))
    tokens, logp, lengths, _ = shared_decode(graphdef, params, cache, tok0, logp0, rng,
                                             jnp.int32(cfg.max_new_tokens), spec=spec,
                                             response_size=response_size)
    # Every process gets the whole batch back (each scores its own slice of it).
    tokens, logp, lengths = to_host((tokens, logp, lengths))
    return to_rollouts(tokens, logp, lengths, rows, cfg.max_new_tokens, kv_bytes)



class TrainSteps(NamedTuple):
    """The jitted steps of a training run: on one device (`mesh` None: the plain steps of
    `zorro_jax.rl.steps`, unplaced arrays) or on a mesh (declared shardings, donated state).

    logprob(params, packed) -> (logp, entropy) [B, G, R]; grad(params, packed, old, adv, ref,
    normaliser) -> (loss, metrics, grads); sft_grad(params, packed, normaliser); apply(params,
    opt_state, grads) -> (params, opt_state, grad_norm, finite), donating the trainable params
    and opt_state on a mesh; place_params / init_opt / place_batch / place_host put host values
    where the steps want them; generate(params, prompts, G, sampler, key, mode) -> host
    `Rollouts`; logprob_for(graphdef, params) -> a `logprob` step for another graph on the same
    placement (a LoRA policy's KL reference: the base graph on the policy's frozen arrays).
    """

    mesh: Mesh | None
    logprob: Callable
    grad: Callable
    sft_grad: Callable
    apply: Callable
    place_params: Callable
    init_opt: Callable
    place_batch: Callable
    place_host: Callable
    generate: Callable
    logprob_for: Callable

    @property
    def donates(self) -> bool:
        """Whether `apply` consumes the trainable params and optimiser state passed to it."""
        return self.mesh is not None


def training_steps(graphdef, params, optimizer: optax.GradientTransformation, *,
                   loss_cfg: LossConfig | None = None, mesh: Mesh | None = None, impl=None,
                   rows_per_micro_batch: int | None = None) -> TrainSteps:
    """`TrainSteps` for `graphdef` (params: a concrete or abstract state, for the shardings).

    On a mesh the params and optimiser state follow the "training" preset, rollouts run on
    params resharded to the "sampling" preset with the prompts split over data × fsdp, and the
    model's heads and (when given) the micro-batch row count are checked against the mesh up
    front, with messages that say what to change.
    """
    from zorro_jax.sampling.sampler import generate

    loss_cfg = LossConfig() if loss_cfg is None else loss_cfg
    if mesh is None:
        def sample(params, prompts, group_size, cfg, key, mode="shared"):
            return generate(nnx.merge(graphdef, params), prompts, group_size, cfg, key, mode=mode)

        ident = lambda x: x
        return TrainSteps(None, make_logprob_fn(graphdef, impl), make_grpo_grad_fn(graphdef, loss_cfg, impl),
                          make_sft_grad_fn(graphdef, impl), make_apply_fn(optimizer), ident,
                          lambda p: init_opt_state(optimizer, p), ident, ident, sample,
                          lambda gd, _params: make_logprob_fn(gd, impl))

    check_model(mesh, nnx.merge(graphdef, params).config)
    if rows_per_micro_batch is not None:
        check_batch(mesh, rows_per_micro_batch)
    sh = step_shardings(mesh, params, "training", optimizer)

    def sample(params, prompts, group_size, cfg, key, mode="shared"):
        if mode != "shared":
            raise ValueError("rollouts on a mesh use the shared-prefix sampler (mode 'shared'); "
                             "the naive baseline runs on one device")
        model = nnx.merge(graphdef, reshard(params, mesh, "sampling"))
        return generate_sharded(model, prompts, group_size, cfg, key, mesh)

    return TrainSteps(
        mesh, make_logprob_step(graphdef, sh, impl=impl), make_grad_step(graphdef, loss_cfg, sh, impl=impl),
        make_sft_grad_step(graphdef, sh, impl=impl), make_apply_step(optimizer, sh),
        # By each state's own names: the policy's, or a reference graph's (a subset of them).
        place_params=lambda p: place(p, param_shardings(p, mesh, "training")),
        # Built straight into its shardings: the moments never exist whole on one device.
        init_opt=jax.jit(lambda p: init_opt_state(optimizer, p), in_shardings=(sh.params,),
                         out_shardings=sh.opt_state),
        place_batch=lambda packed: place(packed, sh.packed),
        place_host=lambda x: place(x, sh.replicated),
        generate=sample,
        logprob_for=lambda gd, p: make_logprob_step(
            gd, sh._replace(params=param_shardings(p, mesh, "training")), impl=impl))
