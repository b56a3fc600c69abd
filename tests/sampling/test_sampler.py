"""Sampler end to end: shared-prefix == naive == the Dense forward, token for token; a PromptTree
(roots with questions, three-level cascade) == its concatenated prompts.

Ragged prompts (5, 2, 13 tokens), G = 3. The Dense forward is run on prompt ++ completion and
must reproduce greedy tokens (argmax) and the recorded policy log-probs.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from flax import nnx
from sampling_fixtures import VOCAB, ragged_prompts, tiny_model

from zorro_jax.layouts import pack_dense
from zorro_jax.model.forward import dense_logits, dense_logprobs
from zorro_jax.sampling.processors import top_p_filter
from zorro_jax.sampling.sampler import PromptTree, SamplerConfig, generate, pack_levels

G = 3
MAX_NEW = 10
PROMPTS = ragged_prompts((5, 2, 13))
ROW_LEN = 32  # every prompt ++ completion fits; one compiled Dense program
# Two roots (20, 13 tokens: a 32-token bucket) with three questions each (9 tokens side by side:
# a 16-token bucket); the concatenated prompts (up to 26 tokens) fall in the 32 bucket as well.
TREE = PromptTree(ragged_prompts((20, 13), seed=5),
                  [ragged_prompts((3, 1, 5), seed=6), ragged_prompts((2, 6, 1), seed=7)])


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@functools.partial(jax.jit, static_argnums=0)
def _dense_logits_logp(graphdef, state, batch):
    model = nnx.merge(graphdef, state)
    logp, _, _ = dense_logprobs(model, batch, impl="xla", with_entropy=False)
    return dense_logits(model, batch.tokens_NxT, impl="xla"), logp


def dense_view(model, rollouts):
    """Per sample (b, g): Dense logits [L, V] predicting its completion and log-probs [L] of it."""
    rows = [p + c for b, p in enumerate(PROMPTS) for c in rollouts.completions[b]]
    logits, logp = _dense_logits_logp(*nnx.split(model), pack_dense(rows, length=ROW_LEN))
    logits, logp = np.asarray(logits), np.asarray(logp)
    out = {}
    for i, (b, g) in enumerate(np.ndindex(len(PROMPTS), G)):
        start, n = len(PROMPTS[b]) - 1, int(rollouts.lengths_BxG[b, g])
        out[b, g] = logits[i, start:start + n], logp[i, start:start + n]
    return out


def check_padding_and_stops(r, eos_ids, pad=0):
    for b, g in np.ndindex(len(PROMPTS), G):
        n = int(r.lengths_BxG[b, g])
        comp = r.completions[b][g]
        assert len(comp) == n and 1 <= n <= MAX_NEW
        assert not set(comp[:-1]) & set(eos_ids)
        if n < MAX_NEW:
            assert comp[-1] in eos_ids  # the stop token is part of the completion
        assert (r.tokens_BxGxR[b, g, n:] == pad).all()
        assert (r.logp_BxGxR[b, g, n:] == 0).all()
    np.testing.assert_array_equal(r.mask_BxGxR(), r.logp_BxGxR != 0)


@pytest.fixture(scope="module")
def greedy(model):
    base = SamplerConfig(max_new_tokens=MAX_NEW, greedy=True, attention_impl="xla")
    probe = generate(model, PROMPTS, G, base, jax.random.key(0), mode="naive")
    # A token the random model actually emits greedily (4th token of prompt 0), so that at
    # least that sample stops early.
    eos = int(probe.tokens_BxGxR[0, 0, 3])
    cfg = dataclasses.replace(base, eos_token_ids=(eos,))
    runs = {m: generate(model, PROMPTS, G, cfg, jax.random.key(0), mode=m) for m in ("shared", "naive")}
    return cfg, runs


def test_greedy_shared_equals_naive_equals_dense_argmax(model, greedy):
    cfg, runs = greedy
    shared, naive = runs["shared"], runs["naive"]
    np.testing.assert_array_equal(shared.tokens_BxGxR, naive.tokens_BxGxR)
    np.testing.assert_array_equal(shared.lengths_BxG, naive.lengths_BxG)
    np.testing.assert_allclose(shared.logp_BxGxR, naive.logp_BxGxR, rtol=1e-5)
    check_padding_and_stops(shared, cfg.eos_token_ids)
    assert shared.lengths_BxG[0, 0] <= 4
    assert len(set(shared.lengths_BxG.ravel().tolist())) > 1, "want ragged completion lengths"
    # Greedy: all samples of a group agree.
    assert (shared.tokens_BxGxR == shared.tokens_BxGxR[:, :1]).all()

    for (b, g), (logits, logp) in dense_view(model, shared).items():
        comp = shared.completions[b][g]
        np.testing.assert_array_equal(logits.argmax(-1), comp)
        # Greedy log-probs are those of the temperature-1 policy.
        np.testing.assert_allclose(shared.logp_BxGxR[b, g, : len(comp)], logp, rtol=1e-5)


def test_max_new_tokens_one_reuses_program(model, greedy):
    cfg, runs = greedy
    one = generate(model, PROMPTS, G, dataclasses.replace(cfg, max_new_tokens=1), jax.random.key(0))
    assert one.tokens_BxGxR.shape == (len(PROMPTS), G, 1)
    assert (one.lengths_BxG == 1).all()
    np.testing.assert_array_equal(one.tokens_BxGxR[..., 0], runs["shared"].tokens_BxGxR[..., 0])


@pytest.fixture(scope="module")
def nucleus(model):
    # A stop set of 8 ids: with this near-uniform random policy about half the samples stop early.
    cfg = SamplerConfig(max_new_tokens=MAX_NEW, temperature=1.0, top_p=0.9,
                        eos_token_ids=tuple(range(1, 9)), attention_impl="xla")
    runs = {m: generate(model, PROMPTS, G, cfg, jax.random.key(7), mode=m) for m in ("shared", "naive")}
    return cfg, runs


def test_top_p_sampling_logprobs_equal_training_forward(model, nucleus):
    cfg, runs = nucleus
    shared, naive = runs["shared"], runs["naive"]
    # Same key, same draws: the two cache layouts sample identical tokens.
    np.testing.assert_array_equal(shared.tokens_BxGxR, naive.tokens_BxGxR)
    np.testing.assert_array_equal(shared.lengths_BxG, naive.lengths_BxG)
    check_padding_and_stops(shared, cfg.eos_token_ids)
    assert len(set(shared.lengths_BxG.ravel().tolist())) > 1, "want ragged completion lengths"

    for (b, g), (logits, logp) in dense_view(model, shared).items():
        n = int(shared.lengths_BxG[b, g])
        np.testing.assert_allclose(shared.logp_BxGxR[b, g, :n], logp, rtol=1e-5)
        np.testing.assert_allclose(naive.logp_BxGxR[b, g, :n], logp, rtol=1e-5)
        # Every drawn token lies inside the nucleus of the policy at its position.
        nucleus_logits = np.asarray(top_p_filter(logits, cfg.top_p))
        assert np.isfinite(nucleus_logits[np.arange(n), shared.completions[b][g]]).all()
    # Samples of a group are independent draws.
    assert all(len({tuple(c) for c in group}) == G for group in shared.completions)


def test_different_keys_draw_different_samples(model, nucleus):
    cfg, runs = nucleus
    other = generate(model, PROMPTS, G, cfg, jax.random.key(8))
    assert not np.array_equal(other.tokens_BxGxR, runs["shared"].tokens_BxGxR)


def test_temperature_top_k_and_ignore_eos(model):
    # Every id is an EOS, but ignore_eos forces the full length.
    cfg = SamplerConfig(max_new_tokens=MAX_NEW, temperature=0.7, top_k=5, ignore_eos=True,
                        eos_token_ids=tuple(range(VOCAB)), attention_impl="xla")
    r = generate(model, PROMPTS, G, cfg, jax.random.key(3))
    assert (r.lengths_BxG == MAX_NEW).all()
    for (b, g), (logits, _) in dense_view(model, r).items():
        comp = np.asarray(r.completions[b][g])
        z = logits / 0.7
        want = z[np.arange(MAX_NEW), comp] - jax.nn.logsumexp(z, axis=-1)
        np.testing.assert_allclose(r.logp_BxGxR[b, g], want, rtol=1e-5)
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        assert (top5 == comp[:, None]).any(-1).all()


def test_shared_cache_holds_prompt_once(model, greedy):
    _, runs = greedy
    c = model.config
    per_token = c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * 4
    b, p, r = len(PROMPTS), 16, 16  # both padded to their 16-token buckets
    assert runs["shared"].kv_cache_bytes == per_token * b * (p + G * r)
    assert runs["naive"].kv_cache_bytes == per_token * b * G * (p + r)


def test_pallas_impl_matches_xla(model, greedy):
    cfg, runs = greedy
    r = generate(model, PROMPTS[:1], G, dataclasses.replace(cfg, attention_impl="pallas", max_new_tokens=4),
                 jax.random.key(0))
    np.testing.assert_array_equal(r.tokens_BxGxR, runs["shared"].tokens_BxGxR[:1, :, :4])
    np.testing.assert_allclose(r.logp_BxGxR, runs["shared"].logp_BxGxR[:1, :, :4], rtol=1e-5)


def assert_same_rollouts(a, b):
    np.testing.assert_array_equal(a.tokens_BxGxR, b.tokens_BxGxR)
    np.testing.assert_array_equal(a.lengths_BxG, b.lengths_BxG)
    np.testing.assert_allclose(a.logp_BxGxR, b.logp_BxGxR, rtol=1e-5)
    np.testing.assert_array_equal(a.prompt_lengths_B, b.prompt_lengths_B)
    assert a.completions == b.completions


def test_prompt_tree_greedy_equals_concatenated_prompts(model, greedy):
    cfg, _ = greedy
    key = jax.random.key(0)
    tree = generate(model, TREE, G, cfg, key)
    flat = generate(model, TREE.prompts(), G, cfg, key)
    assert_same_rollouts(tree, flat)
    assert_same_rollouts(generate(model, TREE, G, cfg, key, mode="naive"), flat)
    assert tree.tokens_BxGxR.shape[0] == 6
    np.testing.assert_array_equal(tree.prompt_lengths_B, [23, 21, 25, 15, 19, 14])
    # KV held: each root once (32-token bucket), each root's questions side by side once (9
    # tokens: one 16-token row), 6·G suffixes (16).
    c = model.config
    per_token = c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * 4
    assert tree.kv_cache_bytes == per_token * (2 * 32 + 2 * 16 + 6 * G * 16)
    assert flat.kv_cache_bytes == per_token * 6 * (32 + G * 16) > tree.kv_cache_bytes


def test_prompt_tree_samples_equal_concatenated_prompts(model, nucleus):
    cfg, _ = nucleus
    tree = generate(model, TREE, G, cfg, jax.random.key(7))
    flat = generate(model, TREE.prompts(), G, cfg, jax.random.key(7))
    assert_same_rollouts(tree, flat)
    assert len(set(tree.lengths_BxG.ravel().tolist())) > 1, "want ragged completion lengths"
    assert all(len({tuple(c) for c in group}) == G for group in tree.completions)


def test_questions_are_packed_side_by_side_under_their_root():
    """Host-side packing: slot c of root d's row holds the c-th token of its questions
    concatenated; each question's window is its run of slots; the padding slots lie after them."""
    questions = [[[5, 6, 7], [8], [9, 10]], [[11] * 12, [12, 13], [14]]]
    roots, level = pack_levels(PromptTree([[1], [2, 3]], questions), SamplerConfig())
    assert roots.pack_RxC is None and level.stored_shape() == (6, 2, 16)
    np.testing.assert_array_equal(level.start_N, [0, 3, 4, 0, 12, 14])
    np.testing.assert_array_equal(level.len_N, [3, 1, 2, 12, 2, 1])
    slots = np.take_along_axis(level.tokens_NxP.reshape(2, -1), level.pack_RxC, axis=1)
    for d, qs in enumerate(questions):
        row = [t for q in qs for t in q]
        np.testing.assert_array_equal(slots[d, : len(row)], row)
    assert (level.pack_RxC[0, 6:] == 0).all() and (level.pack_RxC[1, 15:] == 0).all()


@pytest.mark.parametrize(
    "roots, questions, match",
    [
        ([], [], "at least one root"),
        ([[1]], [], "questions for 0"),
        ([[1], [2]], [[[3]], [[3], [4]]], "same number"),
        ([[1]], [[]], "same number"),
        ([[]], [[[3]]], "at least one token"),
        ([[1]], [[[3], []]], "at least one token"),
    ],
)
def test_prompt_tree_rejects_bad_shapes(roots, questions, match):
    with pytest.raises(ValueError, match=match):
        PromptTree(roots, questions)


def test_generate_rejects_prompt_tree_ids_out_of_range(model):
    with pytest.raises(ValueError, match="out of range"):
        generate(model, PromptTree([[1, 2]], [[[3], [VOCAB]]]), G, SamplerConfig(), jax.random.key(0))


@pytest.mark.parametrize(
    "prompts, group_size, cfg, mode",
    [
        ([], G, SamplerConfig(), "shared"),
        ([[1, 2], []], G, SamplerConfig(), "shared"),
        ([[1, VOCAB]], G, SamplerConfig(), "shared"),
        ([[1, 2]], 0, SamplerConfig(), "shared"),
        ([[1, 2]], G, SamplerConfig(), "beam"),
        ([[1, 2]], G, SamplerConfig(eos_token_ids=(VOCAB,)), "naive"),
        ([[1] * 20], G, SamplerConfig(prompt_buckets=(8, 16)), "shared"),
    ],
)
def test_generate_rejects_bad_inputs(model, prompts, group_size, cfg, mode):
    with pytest.raises(ValueError):
        generate(model, prompts, group_size, cfg, jax.random.key(0), mode=mode)
