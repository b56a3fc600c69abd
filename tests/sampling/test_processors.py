"""Logits processors with hand values that separate the right convention from plausible wrong ones,
plus sampler config validation and length buckets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zorro_jax.layouts import bucket
from zorro_jax.sampling.processors import (
    policy_logprob,
    process_logits,
    sample_tokens,
    top_k_filter,
    top_p_filter,
)
from zorro_jax.sampling.sampler import SamplerConfig

# Probabilities deliberately not sorted, so a filter that forgets to map back from sorted order
# keeps the wrong ids. Descending: id1 0.5, id3 0.25, id2 0.15, id0 0.1.
PROBS = np.array([0.1, 0.5, 0.15, 0.25])
LOGITS = jnp.asarray(np.log(PROBS), jnp.float32)


def kept(x):
    return set(np.flatnonzero(np.isfinite(np.asarray(x))).tolist())


@pytest.mark.parametrize(
    "p, expected",
    [
        # Mass before id3 is 0.5 < 0.7, so id3 (the token that crosses 0.7) is kept. An inclusive
        # cumsum (keep while cumsum < p) would keep {1} only.
        (0.7, {1, 3}),
        # Mass before id2 is 0.75 < 0.76; "keep while inclusive cumsum <= p" would give {1, 3}.
        (0.76, {1, 3, 2}),
        # The top token alone already reaches 0.3: exactly one token.
        (0.3, {1}),
        (0.95, {0, 1, 2, 3}),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(p, expected):
    out = top_p_filter(LOGITS, p)
    assert kept(out) == expected
    # Kept logits are unchanged (renormalisation is the categorical draw's job).
    idx = sorted(expected)
    np.testing.assert_array_equal(np.asarray(out)[idx], np.asarray(LOGITS)[idx])


def test_top_p_batched_rows_are_independent():
    rows = jnp.stack([LOGITS, LOGITS[::-1]])
    out = top_p_filter(rows, 0.7)
    assert kept(out[0]) == {1, 3}
    assert kept(out[1]) == {0, 2}


def test_top_k_hand_values_and_ties():
    x = jnp.asarray([1.0, 3.0, 2.0, 3.0, 0.0])
    assert kept(top_k_filter(x, 3)) == {1, 2, 3}
    # Ties with the k-th largest are kept: the cut is a value threshold.
    assert kept(top_k_filter(x, 1)) == {1, 3}
    assert kept(top_k_filter(x, 0)) == {0, 1, 2, 3, 4}
    assert kept(top_k_filter(x, 5)) == {0, 1, 2, 3, 4}


def test_temperature_is_applied_before_top_p():
    # At temperature 4 the distribution flattens: descending probs become ~0.31, 0.26, 0.23, 0.21
    # (ids 1, 3, 2, 0), so reaching 0.7 needs three tokens instead of two.
    out = process_logits(LOGITS, temperature=4.0, top_p=0.7)
    assert kept(out) == {1, 3, 2}
    np.testing.assert_allclose(np.asarray(out)[1], np.log(0.5) / 4.0, rtol=1e-6)


def test_top_k_then_top_p():
    # top_k=3 drops id0; renormalised over {1, 3, 2} the mass before id2 is 0.75/0.9 = 0.83 >= 0.8,
    # so id2 goes. Applying top-p first (mass before id2 is 0.75 < 0.8) would keep it.
    assert kept(process_logits(LOGITS, top_k=3, top_p=0.8)) == {1, 3}


def test_draws_stay_in_nucleus_with_renormalised_frequencies():
    keys = jax.random.split(jax.random.key(0), 4000)
    draw = jax.vmap(lambda k: sample_tokens(k, LOGITS, greedy=False, top_p=0.7))
    toks = np.asarray(draw(keys))
    assert set(np.unique(toks).tolist()) == {1, 3}
    # Expected 0.5 / 0.75 = 2/3 for id1; the binomial std at n = 4000 is 0.0075.
    assert abs(np.mean(toks == 1) - 2 / 3) < 0.03


def test_greedy_and_top_k_one_are_argmax():
    key = jax.random.key(1)
    assert int(sample_tokens(key, LOGITS, greedy=True)) == 1
    assert int(sample_tokens(key, LOGITS, greedy=False, top_k=1)) == 1


def test_policy_logprob_ignores_truncation():
    tok = jnp.asarray([3, 0], jnp.int32)
    rows = jnp.stack([LOGITS, LOGITS])
    lp = policy_logprob(rows, tok, temperature=1.0)
    np.testing.assert_allclose(np.asarray(lp), np.log(PROBS[[3, 0]]), rtol=1e-6)
    lp2 = policy_logprob(rows, tok, temperature=2.0)
    z = np.log(PROBS) / 2.0
    expected = z - np.log(np.sum(np.exp(z)))
    np.testing.assert_allclose(np.asarray(lp2), expected[[3, 0]], rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"max_new_tokens": 0},
        {"temperature": 0.0},
        {"top_k": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"eos_token_ids": [2]},
        {"eos_token_ids": (-1,)},
        {"attention_impl": "cuda"},
        {"prompt_buckets": (64, 32)},
        {"response_buckets": (16, 32), "max_new_tokens": 40},
    ],
)
def test_sampler_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        SamplerConfig(**kw)


def test_buckets():
    assert [bucket(n, ()) for n in (1, 16, 17, 100, 1024, 1025)] == [16, 16, 32, 128, 1024, 2048]
    assert bucket(65, (64, 128, 192)) == 128
    with pytest.raises(ValueError):
        bucket(200, (64, 128, 192))
