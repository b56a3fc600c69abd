"""Training with LoRA adapters: gradients reach the adapters only (and equal the chain rule through
the merged weights), the optimiser holds only adapter state, the frozen base passes through
updates as the same arrays, SFT on adapters lowers the loss, and the GRPO KL reference taken from
the starting state is exactly the base model while sharing its arrays with the policy; on a mesh
LoRA is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.rl.test_grpo_iteration import CharTokenizer, count_reward
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.lora import (
    LoRAConfig,
    add_lora,
    base_model,
    merge_lora,
    projections,
    reference_state,
    split_trainable,
)
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.batches import PackingConfig, pack_groups
from zorro_jax.rl.grpo import GRPOConfig, GRPOTrainer, Policy, PromptItem
from zorro_jax.rl.losses import LossConfig
from zorro_jax.rl.optim import OptimConfig, make_optimizer
from zorro_jax.rl.sft import SFTConfig, make_sft_step
from zorro_jax.rl.steps import init_opt_state, make_apply_fn, make_sft_grad_fn
from zorro_jax.sampling.sampler import SamplerConfig

VOCAB = 47
LORA = LoRAConfig(rank=4, alpha=8.0)


def tiny_model(seed=0):
    cfg = ModelConfig(model_type="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      qk_norm=True)
    return init_model(cfg, seed=seed)


def lora_model(seed=0, random_b=True):
    model = add_lora(tiny_model(seed), LORA, seed=seed + 1)
    if random_b:
        rng = np.random.default_rng(seed)
        for _name, lin in projections(model).values():
            lin.lora.lora_b.set_value(jnp.asarray(rng.normal(0, 0.05, lin.lora.lora_b.shape), jnp.float32))
    return model


def examples(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return [([int(t) for t in rng.integers(3, VOCAB, rng.integers(3, 9))],
             [int(t) for t in rng.integers(3, VOCAB, rng.integers(2, 7))]) for _ in range(n)]


def max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def sft_batch():
    [mb] = pack_groups([(p, [a]) for p, a in examples()], mode="prompt_once", tiles=(16, 16),
                       cfg=PackingConfig(token_budget=4096))
    return mb.packed


def test_grads_reach_only_the_adapters_and_follow_the_merged_weights():
    model = lora_model()
    graphdef, params = nnx.split(model)
    batch, norm = sft_batch(), jnp.float32(40.0)
    _, _, grads = make_sft_grad_fn(graphdef, "reference")(params, batch, norm)
    leaves = jax.tree.leaves(grads, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(leaves) == 2 * 7 * 2 and all(isinstance(v, nnx.LoRAParam) for v in leaves)
    # The merged model has W' = W + s A B, so dL/dA = s G B^T and dL/dB = s A^T G with G = dL/dW'.
    merged = merge_lora(model)
    mg, mp = nnx.split(merged)
    _, _, full = make_sft_grad_fn(mg, "reference")(mp, batch, norm)
    merged_graph = nnx.merge(mg, full)
    adapted_grads = nnx.merge(graphdef, grads, split_trainable(params)[1])
    s = LORA.alpha / LORA.rank
    for path, (_name, lin) in projections(model).items():
        g_w = np.asarray(dict(projections(merged_graph))[path][1].kernel[...], np.float64)
        g = dict(projections(adapted_grads))[path][1].lora
        a, b = (np.asarray(v[...], np.float64) for v in (lin.lora.lora_a, lin.lora.lora_b))
        assert max_rel(g.lora_a[...], s * g_w @ b.T) <= 1e-5, path
        assert max_rel(g.lora_b[...], s * a.T @ g_w) <= 1e-5, path


def test_optimiser_holds_only_adapters_and_the_base_passes_through():
    model = lora_model()
    graphdef, params = nnx.split(model)
    opt = make_optimizer(OptimConfig(lr=1e-2))
    opt_state = init_opt_state(opt, params)
    trainable, frozen = split_trainable(params)
    adapter_size = sum(lin.lora.lora_a.size + lin.lora.lora_b.size
                       for _name, lin in projections(model).values())
    assert len(jax.tree.leaves(frozen)) == len(jax.tree.leaves(nnx.state(tiny_model())))
    # AdamW's mu and nu per adapter and a few scalar counts; no array of the base's size.
    assert sum(x.size for x in jax.tree.leaves(opt_state)) <= 2 * adapter_size + 4
    _, _, grads = make_sft_grad_fn(graphdef, "xla")(params, sft_batch(), jnp.float32(40.0))
    new_params, _, gnorm, finite = make_apply_fn(opt)(params, opt_state, grads)
    assert bool(finite) and float(gnorm) > 0
    new_trainable, new_frozen = split_trainable(new_params)
    assert all(x is y for x, y in zip(jax.tree.leaves(new_frozen), jax.tree.leaves(frozen)))
    assert all(float(jnp.abs(x - y).max()) > 0
               for x, y in zip(jax.tree.leaves(new_trainable), jax.tree.leaves(trainable)))


def test_sft_on_adapters_lowers_the_loss():
    model = lora_model(random_b=False)
    # The head is frozen: at its random init (std 0.02) it caps every logit near 0.6, so no
    # adapter could fit the answers; a pretrained head is much larger.
    model.lm_head.set_value(25.0 * model.lm_head[...])
    graphdef, params = nnx.split(model)
    cfg = SFTConfig(steps=10, batch_size=8, optim=OptimConfig(lr=1e-2, decay_steps=10))
    opt = make_optimizer(cfg.optim)
    step_fn = make_sft_step(graphdef, make_apply_fn(opt), examples(), cfg, impl="xla")
    state, losses = {"params": params, "opt": init_opt_state(opt, params)}, []
    for step in range(1, cfg.steps + 1):
        state, row = step_fn(step, state)
        losses.append(row["loss"])
    assert losses[-1] < 0.1 * losses[0], losses
    base = lambda p: jax.tree.leaves(split_trainable(p)[1])
    assert all(x is y for x, y in zip(base(state["params"]), base(params)))


@pytest.mark.slow  # a full GRPO iteration with a KL term (~6 s)
def test_grpo_kl_reference_is_the_base_and_shares_its_arrays():
    rng = np.random.default_rng(1)
    items = [PromptItem(task=int(rng.integers(3, VOCAB)), prompt_ids=list(rng.integers(3, VOCAB, n)))
             for n in (5, 9, 14, 3)]
    sampler = SamplerConfig(max_new_tokens=8, temperature=1.0, eos_token_ids=(2,), attention_impl="xla")
    cfg = GRPOConfig(steps=1, prompts_per_step=4, group_size=4, sampler=sampler, epochs=2,
                     optim=OptimConfig(lr=1e-2), attention_impl="xla", loss=LossConfig(kl_coef=0.1))
    model = lora_model(random_b=False)
    ref_graphdef, ref_params = nnx.split(base_model(model))
    graphdef, params = nnx.split(model)
    policy, opt = Policy(graphdef, params), make_optimizer(cfg.optim)
    trainer = GRPOTrainer(policy, opt, make_apply_fn(opt), CharTokenizer(), items, count_reward, cfg,
                          ref_params=ref_params, ref_graphdef=ref_graphdef)
    row, _, extra = trainer.iteration(0, init_opt_state(opt, params))
    assert np.asarray(extra["rewards"]).std() > 0 and row["kl"] > 0  # the second epoch moved away

    # One copy of the base: the reference's arrays are the updated policy's frozen arrays.
    ref_leaves = jax.tree.leaves(trainer.ref_params)
    frozen = jax.tree.leaves(split_trainable(policy.params)[1])
    assert len(ref_leaves) == len(frozen) and all(x is y for x, y in zip(ref_leaves, frozen))

    # The reference is the untrained base model itself (its graph and its values, so its
    # log-probs are the base's bit for bit); fresh adapters (B = 0) gave the same function up to
    # rounding; the trained policy has moved away.
    base_graphdef, base_params = nnx.split(tiny_model())
    assert ref_graphdef == base_graphdef
    for x, y in zip(ref_leaves, jax.tree.leaves(base_params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    groups = [(it.prompt_ids, [list(rng.integers(3, VOCAB, 6)) for _ in range(4)]) for it in items]
    [mb] = pack_groups(groups, mode="prompt_once", tiles=trainer.tiles, loss_width=8)
    ref_lp, _ = trainer.ref_logprob(trainer.ref_params, mb.packed)
    fresh_lp, _ = trainer.steps.logprob(params, mb.packed)
    assert max_rel(fresh_lp, ref_lp) <= 1e-6
    policy_lp, _ = trainer.steps.logprob(policy.params, mb.packed)
    assert float(jnp.abs(policy_lp - ref_lp).max()) > 1e-4

    # A reference rebuilt on the updated (or restored) state: the base alone, or the base with the
    # adapters GRPO started from; either way on the state's own base arrays.
    alone = reference_state(policy.params)
    assert all(x is y for x, y in zip(jax.tree.leaves(alone), frozen, strict=True))
    np.testing.assert_array_equal(trainer.ref_logprob(alone, mb.packed)[0], ref_lp)
    with_start = reference_state(policy.params, split_trainable(params)[0])
    _, start_frozen = split_trainable(with_start)
    assert all(x is y for x, y in zip(jax.tree.leaves(start_frozen), frozen, strict=True))
    np.testing.assert_array_equal(trainer.steps.logprob(with_start, mb.packed)[0], fresh_lp)
