"""Shared-prefix cache: prefill + multi-token steps (T > 1, ragged n_new) == the full Dense forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sampling_fixtures import VOCAB, ragged_prompts, rel_err, tiny_model

from zorro_jax.layouts import pack_dense
from zorro_jax.model.forward import dense_hidden
from zorro_jax.sampling.cache import shared_prefix_prefill, shared_prefix_step
from zorro_jax.sampling.sampler import SamplerConfig, pack_prompts

G, S = 3, 8
# Step 1 appends 3 tokens per sample but keeps only n_new of them (as speculative verification
# keeps the accepted prefix); step 2 appends 2 more after the kept ones.
N_NEW_1 = np.array([[3, 1, 2], [2, 3, 0]], np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _dense_hidden(graphdef, state, tokens_NxT):
    return dense_hidden(nnx.merge(graphdef, state), tokens_NxT, impl="xla")


def dense_rows_hidden(model, rows):
    """Dense forward of ragged rows; returns a list of [len, E] arrays."""
    h = _dense_hidden(*nnx.split(model), pack_dense(rows, length=32).tokens_NxT)
    return [np.asarray(h[i, : len(r)]) for i, r in enumerate(rows)]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prefill_and_two_steps(graphdef, impl, state, tokens_BxP, plen_B, x1_BxGx3, x2_BxGx2):
    model = nnx.merge(graphdef, state)
    h_last_BxE, cache = shared_prefix_prefill(model, tokens_BxP, plen_B, G, S, impl)
    h1, cache = shared_prefix_step(model, cache, x1_BxGx3, jnp.asarray(N_NEW_1), impl)
    h2, cache = shared_prefix_step(model, cache, x2_BxGx2, jnp.full((2, G), 2, jnp.int32), impl)
    return h_last_BxE, h1, h2, cache


def run_two_steps(model, impl):
    prompts = ragged_prompts((5, 11))
    tokens_BxP, plen_B = pack_prompts(prompts, SamplerConfig())
    rng = np.random.default_rng(1)
    x1_BxGx3 = rng.integers(0, VOCAB, (2, G, 3)).astype(np.int32)
    x2_BxGx2 = rng.integers(0, VOCAB, (2, G, 2)).astype(np.int32)
    graphdef, state = nnx.split(model)
    out = _prefill_and_two_steps(graphdef, impl, state, tokens_BxP, plen_B, x1_BxGx3, x2_BxGx2)
    return (prompts, x1_BxGx3, x2_BxGx2, *out)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_multi_token_steps_equal_dense_forward(model):
    prompts, x1, x2, h_last, h1, h2, cache = run_two_steps(model, "xla")
    np.testing.assert_array_equal(np.asarray(cache.suffix_len_BxG), N_NEW_1 + 2)
    np.testing.assert_array_equal(np.asarray(cache.prompt_len_B), [5, 11])

    full1 = [p + x1[b, g].tolist() for b, p in enumerate(prompts) for g in range(G)]
    full2 = [p + x1[b, g, : N_NEW_1[b, g]].tolist() + x2[b, g].tolist()
             for b, p in enumerate(prompts) for g in range(G)]
    want1 = np.stack([h[-3:] for h in dense_rows_hidden(model, full1)]).reshape(h1.shape)
    want2 = np.stack([h[-2:] for h in dense_rows_hidden(model, full2)]).reshape(h2.shape)
    want_last = np.stack([h[-1] for h in dense_rows_hidden(model, prompts)])
    assert rel_err(h_last, want_last) <= 1e-5
    assert rel_err(h1, want1) <= 1e-5
    assert rel_err(h2, want2) <= 1e-5


def test_cache_bytes_are_prompt_once_plus_suffixes(model):
    *_, cache = run_two_steps(model, "xla")
    c = model.config
    per_token = c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * 4
    assert cache.nbytes() == per_token * 2 * (16 + G * S)


@pytest.mark.parametrize("impl", ["reference", "pallas"])
def test_other_impls_match_xla(model, impl):
    *_, h1, h2, _ = run_two_steps(model, "xla")
    *_, o1, o2, _ = run_two_steps(model, impl)
    assert rel_err(o1, h1) <= 1e-5
    assert rel_err(o2, h2) <= 1e-5
