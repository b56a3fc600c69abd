"""GRPO iteration invariants: micro-batched (by token budget) == full-batch gradients == the
replicated Dense computation, for every loss aggregation and for two- and three-level sharing
(a schema under several questions); prompt-once == naive iteration, also with several questions
per database."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zorro_jax.model.config import ModelConfig
from zorro_jax.model.forward import dense_logprobs
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.batches import PackingConfig, group_trees, pack_groups, sample_mask, shared_runs
from zorro_jax.rl.grpo import GRPOConfig, GRPOTrainer, Policy, PromptItem, probe_rewards
from zorro_jax.rl.losses import LossConfig, loss_normaliser, policy_loss
from zorro_jax.rl.optim import OptimConfig, make_optimizer
from zorro_jax.rl.steps import add_grads, make_apply_fn, make_grpo_grad_fn
from zorro_jax.sampling.sampler import SamplerConfig

VOCAB = 61


def tiny_model(seed=0):
    cfg = ModelConfig(model_type="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      qk_norm=True)
    return init_model(cfg, seed=seed)


def max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def _groups(rng, n=4, g=3):
    return [(list(rng.integers(3, VOCAB, rng.integers(2, 12))),
             [list(rng.integers(3, VOCAB, rng.integers(0, 9))) for _ in range(g)]) for _ in range(n)]


def _schema_groups(rng, databases=3, questions=2, g=3):
    """Groups whose prompts are a database's schema ++ a question: (groups, shared lengths)."""
    groups, shared = [], []
    for _ in range(databases):
        schema = list(rng.integers(3, VOCAB, rng.integers(3, 10)))
        for _ in range(questions):
            groups.append((schema + list(rng.integers(3, VOCAB, rng.integers(1, 5))),
                           [list(rng.integers(3, VOCAB, rng.integers(0, 9))) for _ in range(g)]))
            shared.append(len(schema))
    return groups, shared


def _full_and_micro(groups, mode, shared_lens=None):
    """The whole batch as one micro-batch, and the same groups over one-row micro-batches of a
    small token budget."""
    full = pack_groups(groups, mode=mode, tiles=(16, 16), shared_lens=shared_lens,
                       cfg=PackingConfig(token_budget=4096, rows_per_micro_batch=1), loss_width=8)
    micro = pack_groups(groups, mode=mode, tiles=(16, 16), shared_lens=shared_lens,
                        cfg=PackingConfig(token_budget=32, rows_per_micro_batch=1), loss_width=8)
    assert len(full) == 1 and len(micro) >= 3
    return full[0], micro


def _dense_loss_and_grads(graphdef, params, packed, old, adv, norm, cfg):
    """The same GRPO loss on the replicated, right-padded `Dense` batch (the oracle)."""

    def loss_fn(p):
        lp, _, _ = dense_logprobs(nnx.merge(graphdef, p), packed.to_dense(), impl="reference")
        lp = packed.from_dense_next_token(lp)
        return policy_loss(lp, old, adv, packed.sample_mask(), norm, cfg)[0]

    return jax.jit(jax.value_and_grad(loss_fn))(params)


# naive packs the same trees without sharing: the slowest, and no sharing logic of its own;
# three_level's sharing is also checked in the default tier by
# test_questions_per_database_iteration_equals_naive_iteration.
# dr_grpo differs from token_mean only by its constant normaliser: slow tier too.
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", pytest.param("dr_grpo", marks=pytest.mark.slow)])
@pytest.mark.parametrize("mode", ["prompt_once", pytest.param("naive", marks=pytest.mark.slow),
                                  pytest.param("three_level", marks=pytest.mark.slow)])
def test_micro_batched_gradient_equals_full_batch_and_dense(mode, agg):
    graphdef, params = nnx.split(tiny_model())
    rng = np.random.default_rng(0)
    if mode == "three_level":
        groups, shared = _schema_groups(rng)
        whole, micro = _full_and_micro(groups, "prompt_once", shared)
        # Each schema is one root segment: its tokens are packed once for its two questions.
        tokens = lambda trees: sum(len(seg) for t in trees for seg in t.segments)
        assert (tokens(group_trees(groups, "prompt_once", shared))
                == tokens(group_trees(groups, "prompt_once")) - sum(shared[::2]))
        assert max(len(t.parents) for t in group_trees(groups, "prompt_once", shared)) == 1 + 2 * 4
    else:
        groups = _groups(rng)
        whole, micro = _full_and_micro(groups, mode)
    b, g, r = len(groups), 3, 8
    old = rng.normal(-4, 0.1, (b, g, r)).astype(np.float32)
    adv = rng.normal(size=(b, g)).astype(np.float32)
    lengths = np.asarray([[len(c) for c in cs] for _, cs in groups])
    cfg = LossConfig(aggregation=agg)
    fn = make_grpo_grad_fn(graphdef, cfg, "xla")
    norm = loss_normaliser(jnp.asarray(sample_mask(lengths, r)), cfg)
    take = lambda mb, x: jnp.asarray(mb.take_groups(x))
    full_loss, _, full = fn(params, whole.packed, take(whole, old), take(whole, adv),
                            take(whole, old), norm)
    acc, loss_sum = None, 0.0
    for mb in micro:
        loss, _, gr = fn(params, mb.packed, take(mb, old), take(mb, adv), take(mb, old), norm)
        acc, loss_sum = add_grads(acc, gr), loss_sum + float(loss)
    np.testing.assert_allclose(loss_sum, float(full_loss), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(acc), jax.tree.leaves(full)):
        assert max_rel(x, y) <= 1e-5
    d_loss, d_grads = _dense_loss_and_grads(graphdef, params, whole.packed, take(whole, old),
                                            take(whole, adv), norm, cfg)
    np.testing.assert_allclose(float(full_loss), float(d_loss), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(full), jax.tree.leaves(d_grads)):
        assert max_rel(x, y) <= 1e-5


class CharTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def count_reward(texts, tasks):
    """Deterministic toy reward: how often the task's favourite token id appears."""
    r = [sum(tok == str(t) for tok in text.split()) / 8 for text, t in zip(texts, tasks)]
    return np.asarray(r, np.float32), [None] * len(texts)


def _iterations_by_mode(items, base, **trainer_kw):
    """{mode: (params, metrics row, extra)} of one GRPO iteration from the same weights and key,
    in prompt-once and in naive mode."""
    results = {}
    for mode in ("prompt_once", "naive"):
        cfg = dataclasses.replace(base, mode=mode)
        graphdef, params = nnx.split(tiny_model(seed=3))
        policy = Policy(graphdef, params)
        opt = make_optimizer(cfg.optim)
        trainer = GRPOTrainer(policy, opt, make_apply_fn(opt), CharTokenizer(), items, count_reward,
                              cfg, **trainer_kw)
        row, _, extra = trainer.iteration(0, opt.init(params))
        results[mode] = (policy.params, row, extra)
    return results


def test_prompt_once_iteration_equals_naive_iteration():
    rng = np.random.default_rng(1)
    items = [PromptItem(task=int(rng.integers(3, VOCAB)), prompt_ids=list(rng.integers(3, VOCAB, n)))
             for n in (5, 9, 14, 3)]
    sampler = SamplerConfig(max_new_tokens=8, temperature=1.0, eos_token_ids=(2,), attention_impl="xla")
    base = GRPOConfig(steps=1, prompts_per_step=4, group_size=4, sampler=sampler,
                      packing=PackingConfig(token_budget=40),
                      optim=OptimConfig(lr=1e-3), attention_impl="xla", loss=LossConfig())
    results = _iterations_by_mode(items, base)
    (p1, r1, e1), (p2, r2, e2) = results["prompt_once"], results["naive"]
    assert e1["texts"] == e2["texts"]  # identical rollouts with the same key
    assert np.asarray(e1["rewards"]).std() > 0  # advantages are non-zero: the update is non-trivial
    np.testing.assert_allclose(r1["loss"], r2["loss"], rtol=1e-5)
    flat = [len(set(g.tolist())) == 1 for g in np.asarray(e1["rewards"])]
    assert r1["zero_signal_groups"] == pytest.approx(np.mean(flat))
    _, p0 = nnx.split(tiny_model(seed=3))
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)))
    assert moved > 1e-4
    # Adam's first step is ~lr·sign(g): elements whose gradient is ~0 amplify float noise up to
    # ±lr, so parameters agree to about lr·1e-3 — checked relative to each tensor's scale.
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        assert max_rel(a, b) <= 1e-5


def test_shared_runs_need_equal_ids_and_a_rest():
    schema = [5, 6, 7]
    prompts = [schema + [1], schema + [2, 3], [5, 6, 8, 1], schema, schema + [4]]
    # Prompt 2 differs inside the schema; prompt 3 has nothing after it (no question segment).
    assert shared_runs(prompts, [3] * 5) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert shared_runs(prompts, [0] * 5) == [(i, i + 1) for i in range(5)]
    with pytest.raises(ValueError, match="shared lengths"):
        shared_runs(prompts, [3])


def test_questions_per_database_iteration_equals_naive_iteration():
    """Three-level trees in the log-prob passes and the update give the naive iteration's loss
    and parameters, on prompts that share a schema two questions at a time."""
    rng = np.random.default_rng(2)
    groups, shared = _schema_groups(rng, databases=2, questions=2)
    items = [PromptItem(task=int(rng.integers(3, VOCAB)), prompt_ids=[int(t) for t in p],
                        shared_len=n, group_key=f"db{i // 2}")
             for i, ((p, _), n) in enumerate(zip(groups, shared))]
    sampler = SamplerConfig(max_new_tokens=8, temperature=1.0, eos_token_ids=(2,), attention_impl="xla")
    base = GRPOConfig(steps=1, prompts_per_step=4, group_size=4, sampler=sampler,
                      optim=OptimConfig(lr=1e-3), attention_impl="xla", loss=LossConfig())
    results = _iterations_by_mode(items, base, questions_per_key=2)
    (p1, r1, e1), (p2, r2, e2) = results["prompt_once"], results["naive"]
    keys = [it.group_key for it in e1["items"]]
    assert keys[0] == keys[1] and keys[2] == keys[3]  # two questions of each drawn database
    assert e1["texts"] == e2["texts"]
    np.testing.assert_allclose(r1["loss"], r2["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        assert max_rel(a, b) <= 1e-5
    policy, opt = Policy(*nnx.split(tiny_model(seed=3))), make_optimizer(base.optim)
    with pytest.raises(ValueError, match="multiple"):
        GRPOTrainer(policy, opt, make_apply_fn(opt), CharTokenizer(), items, count_reward,
                    dataclasses.replace(base, prompts_per_step=3), questions_per_key=2)


def mean_id_reward(texts, tasks):
    """A reward every token moves: the mean completion token id / VOCAB."""
    r = [np.mean([int(t) for t in text.split()]) / VOCAB if text.split() else 0.0 for text in texts]
    return np.asarray(r, np.float32), [None] * len(texts)


def test_probe_rewards_repeat_their_draw_under_one_seed():
    """The probe reuses its random numbers: the same policy gives the same rewards, another seed
    another draw (so a change between two probes is the policy's)."""
    items = [PromptItem(task=0, prompt_ids=p) for p in ([3, 9, 4], [5, 6, 8, 12, 3])]
    sampler = SamplerConfig(max_new_tokens=6, temperature=1.0, eos_token_ids=(2,), attention_impl="xla")
    policy = Policy(*nnx.split(tiny_model(seed=3)))
    draw = lambda seed: probe_rewards(policy, CharTokenizer(), items, 8, sampler, mean_id_reward, seed=seed)
    first = draw(0)
    assert first.shape == (2, 8) and first.dtype == np.float64
    np.testing.assert_array_equal(draw(0), first)
    assert (draw(1) != first).any()
