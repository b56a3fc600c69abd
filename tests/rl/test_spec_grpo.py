"""Speculative rollouts inside GRPO: greedy speculative iteration == greedy plain iteration, the
online draft refresh moves the draft (that a distillation step lowers the KL is tested in
tests/sampling/test_speculative.py), and the metrics row is filled in."""



import jax
import numpy as np
import optax
import pytest
from flax import nnx

from tests.rl.test_grpo_iteration import VOCAB, CharTokenizer, count_reward, max_rel, tiny_model
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.batches import PackingConfig
from zorro_jax.rl.distill import DraftTrainer
from zorro_jax.rl.grpo import GRPOConfig, GRPOTrainer, Policy, PromptItem, SpeculativeRolloutConfig
from zorro_jax.rl.losses import LossConfig
from zorro_jax.rl.optim import OptimConfig, make_optimizer
from zorro_jax.rl.steps import make_apply_fn
from zorro_jax.sampling.sampler import SamplerConfig
from zorro_jax.sampling.speculative import draft_config

GAMMA = 3


def items():
    rng = np.random.default_rng(1)
    return [PromptItem(task=int(rng.integers(3, VOCAB)), prompt_ids=list(rng.integers(3, VOCAB, n)))
            for n in (5, 9, 14, 3)]


def draft_trainer(policy_model, seed=7):
    dcfg = draft_config(policy_model.config, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)
    return DraftTrainer(init_model(dcfg, seed=seed), optax.adam(1e-2), temperature=1.0, impl="xla")


def run_iteration(greedy: bool, speculative: bool, refresh_every: int = 1):
    sampler = SamplerConfig(max_new_tokens=10, temperature=1.0, greedy=greedy, eos_token_ids=(2,),
                            attention_impl="xla")
    spec = SpeculativeRolloutConfig(enabled=speculative, gamma=GAMMA, refresh_every=refresh_every)
    cfg = GRPOConfig(steps=1, prompts_per_step=4, group_size=4, sampler=sampler,
                     packing=PackingConfig(token_budget=40),
                     optim=OptimConfig(lr=1e-3), attention_impl="xla", loss=LossConfig(), speculative=spec)
    graphdef, params = nnx.split(tiny_model(seed=3))
    policy = Policy(graphdef, params)
    draft = draft_trainer(policy.model()) if speculative else None
    opt = make_optimizer(cfg.optim)
    trainer = GRPOTrainer(policy, opt, make_apply_fn(opt), CharTokenizer(), items(), count_reward, cfg,
                          draft=draft)
    row, _, extra = trainer.iteration(0, opt.init(params))
    return policy, draft, row, extra


def initial_draft_params():
    return jax.tree.map(np.asarray, draft_trainer(tiny_model(seed=3)).params)


def test_greedy_speculative_iteration_equals_plain_iteration():
    p_spec, frozen, row_spec, e_spec = run_iteration(greedy=True, speculative=True, refresh_every=0)
    p_plain, _, row_plain, e_plain = run_iteration(greedy=True, speculative=False)
    assert e_spec["texts"] == e_plain["texts"]
    np.testing.assert_array_equal(e_spec["rewards"], e_plain["rewards"])
    assert np.asarray(e_plain["rewards"]).std() > 0  # a non-trivial update
    np.testing.assert_allclose(row_spec["loss"], row_plain["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p_spec.params), jax.tree.leaves(p_plain.params)):
        assert max_rel(a, b) <= 1e-5
    # refresh_every=0: the draft is left as it was.
    assert "distill_kl" not in row_spec
    for a, b in zip(jax.tree.leaves(frozen.params), jax.tree.leaves(initial_draft_params())):
        np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.slow  # ~20 s of compiles; the greedy test above runs the same trainer path
def test_sampled_iteration_metrics_and_online_refresh():
    _, draft, row, _ = run_iteration(greedy=False, speculative=True, refresh_every=1)
    assert 0.0 <= row["spec_acceptance_rate"] <= 1.0
    assert 1.0 <= row["spec_tokens_per_forward"] <= GAMMA + 1
    assert row["time_draft_est"] > 0 and row["time_verify_est"] > 0
    np.testing.assert_allclose(row["time_draft_est"] + row["time_verify_est"], row["time_rollout"], rtol=1e-9)
    assert row["distill_kl"] > 0 and 0 < row["distill_expected_acceptance"] <= 1
    assert row["time_distill"] > 0
    # The refresh moved the draft.
    assert max(float(np.abs(np.asarray(a) - b).max())
               for a, b in zip(jax.tree.leaves(draft.params), jax.tree.leaves(initial_draft_params()))) > 1e-4


def test_speculative_config_is_validated():
    with pytest.raises(ValueError, match="gamma"):
        SpeculativeRolloutConfig(gamma=0)
    with pytest.raises(ValueError, match="refresh_every"):
        SpeculativeRolloutConfig(refresh_every=-1)
    with pytest.raises(ValueError, match="prompt_once"):
        GRPOConfig(mode="naive", speculative=SpeculativeRolloutConfig(enabled=True))
    cfg = GRPOConfig(speculative=SpeculativeRolloutConfig(enabled=True))
    graphdef, params = nnx.split(tiny_model())
    opt = make_optimizer(OptimConfig(lr=1e-3))
    with pytest.raises(ValueError, match="needs a draft"):
        GRPOTrainer(Policy(graphdef, params), opt, make_apply_fn(opt), CharTokenizer(), items(), count_reward, cfg)

