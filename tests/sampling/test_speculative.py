"""Speculative sampling: exact policy distribution (statistically), greedy == plain greedy, and the
recorded log-probs == the policy's Dense log-probs.

The statistical test enumerates every completion of a 6-token vocabulary up to 3 tokens, computes
its exact probability under the processed policy distribution with the Dense forward, and runs a
chi-square goodness-of-fit test on thousands of speculative samples. The same test must reject a
deliberately wrong acceptance rule, which shows it has the power to catch a real bug.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from sampling_fixtures import VOCAB, ragged_prompts, rel_err
from scipy import stats as sps

from zorro_jax.model.config import ModelConfig
from zorro_jax.model.forward import dense_logits, dense_logprobs
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.batches import PackingConfig, pack_groups
from zorro_jax.rl.distill import DraftTrainer, distill_loss
from zorro_jax.sampling.processors import process_logits
from zorro_jax.sampling.sampler import PromptTree, SamplerConfig, generate
from zorro_jax.sampling.speculative import draft_config, generate_speculative

V, R, EOS, N_SAMPLES = 6, 3, 5, 4096
PROMPT = [1, 3, 2]


def _sharp_model(seed, scale):
    """A 1-layer model over V tokens whose output projection is scaled so its next-token
    distributions are far from uniform (random init alone gives nearly flat logits)."""
    cfg = ModelConfig(model_type="qwen3", vocab_size=V, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                      qk_norm=True)
    model = init_model(cfg, seed)
    model.lm_head.value = model.lm_head.value * scale
    return model


@pytest.fixture(scope="module")
def policy_and_draft():
    # The draft has the policy's weights but a third of its logit scale: it accepts some drafts
    # and rejects others, so both branches of the rule shape the samples.
    return _sharp_model(0, 60.0), _sharp_model(0, 20.0)


def _jit_model_fn(model, fn):
    """fn(model, x) as a jitted function of x (one compile instead of op-by-op dispatch)."""
    graphdef, state = nnx.split(model)
    jitted = jax.jit(lambda st, x: fn(nnx.merge(graphdef, st), x))
    return lambda x: jitted(state, x)


_EXACT = {}


def _exact_distribution(model, cfg: SamplerConfig):
    """{completion tuple: probability} of the EOS-stopped sampler, from all V^R full sequences."""
    if (id(model), cfg) in _EXACT:
        return _EXACT[id(model), cfg]
    seqs = np.asarray(list(itertools.product(range(V), repeat=R)), np.int32)
    rows = np.concatenate([np.broadcast_to(np.asarray(PROMPT, np.int32), (len(seqs), len(PROMPT))), seqs], 1)
    logits = _jit_model_fn(model, dense_logits)(jnp.asarray(rows))[:, len(PROMPT) - 1:-1]
    logp = jax.nn.log_softmax(process_logits(logits, temperature=cfg.temperature, top_k=cfg.top_k,
                                             top_p=cfg.top_p), axis=-1)
    seq_logp = np.asarray(jnp.take_along_axis(logp, jnp.asarray(seqs)[:, :, None], axis=2)[:, :, 0].sum(1))
    dist = {}
    for s, lp in zip(seqs.tolist(), seq_logp):
        # Summing a prefix over its continuations after EOS gives the stopped sequence's mass.
        cut = s[: s.index(EOS) + 1] if EOS in s else s
        dist[tuple(cut)] = dist.get(tuple(cut), 0.0) + float(np.exp(lp))
    _EXACT[id(model), cfg] = dist
    return dist


def _chi2_pvalue(samples, dist):
    """Chi-square goodness of fit; cells expecting < 5 samples are pooled into one."""
    n = len(samples)
    counts = {}
    for s in samples:
        counts[tuple(s)] = counts.get(tuple(s), 0) + 1
    assert set(counts) <= set(dist), "sampled a completion the policy gives zero mass"
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for seq, prob in dist.items():
        if prob * n >= 5:
            obs.append(counts.get(seq, 0))
            exp.append(prob * n)
        else:
            pool_o += counts.get(seq, 0)
            pool_e += prob * n
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    assert len(obs) >= 3, "too few cells for a meaningful test"
    exp = np.asarray(exp) * (n / np.sum(exp))
    return sps.chisquare(obs, exp).pvalue


def _packed(groups, width):
    """All groups as one PackedTree (one tree a row), loss view [B, G, width]."""
    [mb] = pack_groups(groups, mode="prompt_once", tiles=(16, 16), loss_width=width,
                       cfg=PackingConfig(token_budget=16, rows_per_micro_batch=len(groups)))
    return mb.packed


def _spec_samples(policy, draft, cfg, gamma, seed=0, wrong_rule=None):
    out, st = generate_speculative(policy, draft, [PROMPT], N_SAMPLES, cfg, jax.random.key(seed),
                                   gamma, _wrong_rule=wrong_rule)
    return out, st


def _check_logprobs(policy, out, n=256):
    """Recorded log-probs of the first n samples == the policy's Dense log-probs (temperature 1)."""
    comps = out.completions[0][:n]
    batch = _packed([(PROMPT, comps)], R)
    logp_fn = functools.partial(dense_logprobs, with_entropy=False)
    logp_dense, _, _ = _jit_model_fn(policy, logp_fn)(batch.to_dense())
    expected = np.asarray(batch.from_dense_next_token(logp_dense))[0]
    mask = out.mask_BxGxR()[0, :n]
    assert rel_err(np.where(mask, out.logp_BxGxR[0, :n], 0.0), np.where(mask, expected, 0.0)) < 1e-5


CASES = [
    (1, SamplerConfig(max_new_tokens=R, temperature=1.0, eos_token_ids=(EOS,))),
    (3, SamplerConfig(max_new_tokens=R, temperature=0.7, top_k=4, eos_token_ids=(EOS,))),
    pytest.param(3, SamplerConfig(max_new_tokens=R, temperature=1.0, eos_token_ids=(EOS,)),
                 marks=pytest.mark.slow),
    pytest.param(1, SamplerConfig(max_new_tokens=R, temperature=0.7, eos_token_ids=(EOS,)),
                 marks=pytest.mark.slow),
    pytest.param(2, SamplerConfig(max_new_tokens=R, temperature=1.0, top_p=0.9, eos_token_ids=(EOS,)),
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("gamma,cfg", CASES)
def test_speculative_matches_policy_distribution(policy_and_draft, gamma, cfg):
    policy, draft = policy_and_draft
    dist = _exact_distribution(policy, cfg)
    out, st = _spec_samples(policy, draft, cfg, gamma)
    samples = out.completions[0]
    if cfg.temperature == 1.0:
        _check_logprobs(policy, out)
    # The draft really disagrees (else the rules could not be told apart) but is not useless.
    assert 0.1 < st["acceptance_rate"] < 0.8, st
    assert _chi2_pvalue(samples, dist) > 1e-3


@pytest.mark.parametrize("wrong_rule", ["always_accept", "resample_p"])
def test_wrong_acceptance_rule_is_rejected(policy_and_draft, wrong_rule):
    policy, draft = policy_and_draft
    cfg = CASES[0][1]
    dist = _exact_distribution(policy, cfg)
    samples = _spec_samples(policy, draft, cfg, CASES[0][0], wrong_rule=wrong_rule)[0].completions[0]
    assert _chi2_pvalue(samples, dist) < 1e-6


def _perturbed(model, seed, noise):
    """The same architecture with noisy weights: a draft that agrees often but not always."""
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    rng = np.random.default_rng(seed)
    noisy = [jnp.asarray(x + noise * x.std() * rng.standard_normal(x.shape).astype(x.dtype))
             for x in map(np.asarray, leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, noisy))


def _small_model(seed):
    cfg = ModelConfig(model_type="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      qk_norm=True)
    return init_model(cfg, seed)


def _greedy_token(model, prompt, step, width=32):
    """The policy's greedy token at `step` after `prompt`, by Dense forwards over one row
    right-padded to `width` (causal, so the padding does not change earlier positions)."""
    graphdef, state = nnx.split(model)
    logits = jax.jit(lambda s, t: dense_logits(nnx.merge(graphdef, s), t))
    row = list(prompt)
    for _ in range(step + 1):
        padded = jnp.asarray([row + [0] * (width - len(row))], jnp.int32)
        row.append(int(jnp.argmax(logits(state, padded)[0, len(row) - 1])))
    return row[-1]


@pytest.mark.parametrize("draft_kind", ["perturbed", "self", pytest.param("small", marks=pytest.mark.slow)])
def test_greedy_equals_plain_greedy(draft_kind):
    policy = _small_model(0)
    if draft_kind == "perturbed":
        draft = _perturbed(policy, 1, 0.3)
    elif draft_kind == "self":
        draft = policy
    else:
        draft = init_model(draft_config(policy.config, hidden_size=16, num_layers=1), 3)
    prompts = ragged_prompts()
    # A token of prompt 1's greedy output is a stop token, so samples stop at different lengths.
    eos = _greedy_token(policy, prompts[1], 4)
    cfg = SamplerConfig(max_new_tokens=14, greedy=True, eos_token_ids=(eos,))
    plain = generate(policy, prompts, 2, cfg, jax.random.key(0))
    assert plain.lengths_BxG.min() < 14
    spec, st = generate_speculative(policy, draft, prompts, 2, cfg, jax.random.key(0), gamma=3)
    np.testing.assert_array_equal(spec.tokens_BxGxR, plain.tokens_BxGxR)
    np.testing.assert_array_equal(spec.lengths_BxG, plain.lengths_BxG)
    assert rel_err(spec.logp_BxGxR, plain.logp_BxGxR) < 1e-5
    if draft_kind == "perturbed":
        assert 0.0 < st["acceptance_rate"] < 1.0, st
    if draft_kind == "self":
        # Every draft is accepted only if the draft cache's rewind and catch-up are right.
        assert st["acceptance_rate"] == 1.0, st


def test_prompt_tree_greedy_equals_plain_greedy_on_concatenated_prompts():
    """Both caches as three-level cascades (root, question, suffix): the verify step over γ+1
    tokens reads root and question once per step, and greedy output is the policy's."""
    policy = _small_model(0)
    draft = _perturbed(policy, 1, 0.3)
    tree = PromptTree(ragged_prompts((9, 4), seed=3),
                      [ragged_prompts((2, 5), seed=4), ragged_prompts((1, 3), seed=5)])
    eos = _greedy_token(policy, tree.prompts()[1], 4)
    cfg = SamplerConfig(max_new_tokens=14, greedy=True, eos_token_ids=(eos,))
    plain = generate(policy, tree.prompts(), 2, cfg, jax.random.key(0))
    assert plain.lengths_BxG.min() < 14
    spec, st = generate_speculative(policy, draft, tree, 2, cfg, jax.random.key(0), gamma=3)
    np.testing.assert_array_equal(spec.tokens_BxGxR, plain.tokens_BxGxR)
    np.testing.assert_array_equal(spec.lengths_BxG, plain.lengths_BxG)
    np.testing.assert_array_equal(spec.prompt_lengths_B, plain.prompt_lengths_B)
    assert rel_err(spec.logp_BxGxR, plain.logp_BxGxR) < 1e-5
    assert 0.0 < st["acceptance_rate"] < 1.0, st


@pytest.mark.slow
def test_logprobs_equal_dense_logprobs_ragged():
    policy = _small_model(0)
    draft = _perturbed(policy, 2, 0.3)
    prompts = ragged_prompts()
    cfg = SamplerConfig(max_new_tokens=10, temperature=1.0, top_k=20, eos_token_ids=(7, 11))
    out, st = generate_speculative(policy, draft, prompts, 3, cfg, jax.random.key(4), gamma=3)
    assert st["tokens_per_policy_forward"] > 1.0, st
    batch = _packed(list(zip(prompts, out.completions)), cfg.max_new_tokens)
    logp_dense, _, _ = dense_logprobs(policy, batch.to_dense(), with_entropy=False)
    expected = np.asarray(batch.from_dense_next_token(logp_dense))
    mask = out.mask_BxGxR()
    assert rel_err(np.where(mask, out.logp_BxGxR, 0.0), np.where(mask, expected, 0.0)) < 1e-5


def test_distill_kl_is_zero_for_the_policy_and_drops_with_training():
    policy = _small_model(0)
    prompts = ragged_prompts()
    rng = np.random.default_rng(0)
    # Distillation takes any completions; random ones keep the test free of a sampler compile.
    groups = [(p, [rng.integers(1, VOCAB, n).tolist() for n in (6, 3)]) for p in prompts]
    batch = _packed(groups, 6)
    graphdef, state = nnx.split(policy)
    loss = jax.jit(lambda s1, s2, bt: distill_loss(nnx.merge(graphdef, s1), nnx.merge(graphdef, s2), bt))
    self_kl, metrics = loss(state, state, batch)
    assert abs(float(self_kl)) < 1e-5 and abs(float(metrics["expected_acceptance"]) - 1) < 1e-5
    draft = init_model(draft_config(policy.config, hidden_size=16, num_layers=1), 1)
    assert draft.config.vocab_size == VOCAB and draft.config.num_hidden_layers == 1
    trainer = DraftTrainer(draft, optax.adam(3e-2))
    kls = [trainer.step(policy, batch)["kl"] for _ in range(8)]
    assert kls[-1] < 0.5 * kls[0], kls
