"""Shared-prefix cache: prefill + multi-token steps (T > 1, ragged n_new) == the full Dense forward,
with one prefix level (a prompt per row) and with two (roots, and questions on top of them)."""

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
from zorro_jax.sampling.sampler import PromptTree, SamplerConfig, pack_levels

G, S = 3, 8
# Step 1 appends 3 tokens per sample but keeps only n_new of them (as speculative verification
# keeps the accepted prefix); step 2 appends 2 more after the kept ones.
N_NEW_1 = np.array([[3, 1, 2], [2, 3, 0]], np.int32)
# Two roots (5 and 13 tokens) with two questions each (3, 1 | 6, 2): four rows, root-major.
TREE = PromptTree(ragged_prompts((5, 13), seed=1),
                  [ragged_prompts((3, 1), seed=2), ragged_prompts((6, 2), seed=3)])
N_NEW_TREE_1 = np.array([[3, 1, 2], [2, 3, 0], [0, 1, 3], [1, 1, 1]], np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _dense_hidden(graphdef, state, tokens_NxT):
    return dense_hidden(nnx.merge(graphdef, state), tokens_NxT, impl="xla")


def dense_rows_hidden(model, rows):
    """Dense forward of ragged rows; returns a list of [len, E] arrays."""
    h = _dense_hidden(*nnx.split(model), pack_dense(rows, length=32).tokens_NxT)
    return [np.asarray(h[i, : len(r)]) for i, r in enumerate(rows)]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _prefill_and_two_steps(graphdef, impl, state, levels, n_new_1, x1_BxGx3, x2_BxGx2):
    model = nnx.merge(graphdef, state)
    b = x1_BxGx3.shape[0]
    h_last_BxE, cache = shared_prefix_prefill(model, levels, G, S, impl)
    h1, cache = shared_prefix_step(model, cache, x1_BxGx3, n_new_1, impl)
    h2, cache = shared_prefix_step(model, cache, x2_BxGx2, jnp.full((b, G), 2, jnp.int32), impl)
    return h_last_BxE, h1, h2, cache


def run_two_steps(model, impl, prompts=None, n_new_1=N_NEW_1, levels=None):
    """Prefill (a list of prompts, or a PromptTree; `levels` overrides their packing) and two
    steps; returns the rows' whole prompts, the step tokens, the hidden states and the cache."""
    prompts = ragged_prompts((5, 11)) if prompts is None else prompts
    rows = prompts.prompts() if isinstance(prompts, PromptTree) else prompts
    rng = np.random.default_rng(1)
    x1_BxGx3 = rng.integers(0, VOCAB, (len(rows), G, 3)).astype(np.int32)
    x2_BxGx2 = rng.integers(0, VOCAB, (len(rows), G, 2)).astype(np.int32)
    graphdef, state = nnx.split(model)
    levels = pack_levels(prompts, SamplerConfig()) if levels is None else levels
    out = _prefill_and_two_steps(graphdef, impl, state, levels,
                                 jnp.asarray(n_new_1), x1_BxGx3, x2_BxGx2)
    return (rows, x1_BxGx3, x2_BxGx2, *out)


def check_against_dense(model, run, n_new_1):
    """The prefill's last hidden state and both steps' == the Dense forward of the whole rows."""
    prompts, x1, x2, h_last, h1, h2, cache = run
    np.testing.assert_array_equal(np.asarray(cache.suffix_len_BxG), n_new_1 + 2)
    np.testing.assert_array_equal(np.asarray(cache.prefix_len_B()), [len(p) for p in prompts])
    full1 = [p + x1[b, g].tolist() for b, p in enumerate(prompts) for g in range(G)]
    full2 = [p + x1[b, g, : n_new_1[b, g]].tolist() + x2[b, g].tolist()
             for b, p in enumerate(prompts) for g in range(G)]
    want1 = np.stack([h[-3:] for h in dense_rows_hidden(model, full1)]).reshape(h1.shape)
    want2 = np.stack([h[-2:] for h in dense_rows_hidden(model, full2)]).reshape(h2.shape)
    want_last = np.stack([h[-1] for h in dense_rows_hidden(model, prompts)])
    assert rel_err(h_last, want_last) <= 1e-5
    assert rel_err(h1, want1) <= 1e-5
    assert rel_err(h2, want2) <= 1e-5


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_multi_token_steps_equal_dense_forward(model):
    run = run_two_steps(model, "xla")
    assert len(run[-1].levels) == 1
    check_against_dense(model, run, N_NEW_1)


def test_three_level_prefill_and_steps_equal_dense_forward(model):
    """Each question prefilled on top of its root and packed beside its siblings, then steps over
    root ⊕ own question's window ⊕ suffix."""
    run = run_two_steps(model, "xla", TREE, N_NEW_TREE_1)
    cache = run[-1]
    # One cache row per root holding its questions side by side: 3 ++ 1 and 6 ++ 2 tokens.
    assert [lv.k_LxRxCxKxD.shape[1] for lv in cache.levels] == [2, 2]
    np.testing.assert_array_equal(np.asarray(cache.levels[1].len_N), [3, 1, 6, 2])
    np.testing.assert_array_equal(np.asarray(cache.levels[1].start_N), [0, 3, 0, 6])
    check_against_dense(model, run, N_NEW_TREE_1)


def test_packed_question_level_holds_the_rectangular_kv(model):
    """The packed level's window of each question == that question's K/V prefilled as a row of
    its own (the same prefill, written into its slots), and both cascades step alike."""
    packed = pack_levels(TREE, SamplerConfig())
    rectangular = (packed[0], packed[1]._replace(pack_RxC=None, start_N=None))
    *_, h1, h2, cache = run_two_steps(model, "xla", TREE, N_NEW_TREE_1)
    *_, r1, r2, rect = run_two_steps(model, "xla", TREE, N_NEW_TREE_1, levels=rectangular)
    assert rect.levels[1].k_LxRxCxKxD.shape[1] == 4
    for n, (start, length) in enumerate(zip([0, 3, 0, 6], [3, 1, 6, 2])):
        for name in ("k_LxRxCxKxD", "v_LxRxCxKxD"):
            window = getattr(cache.levels[1], name)[:, n // 2, start:start + length]
            np.testing.assert_array_equal(window, getattr(rect.levels[1], name)[:, n, :length])
    assert rel_err(h1, r1) <= 1e-5
    assert rel_err(h2, r2) <= 1e-5


def test_cache_bytes_are_each_prefix_once_plus_suffixes(model):
    c = model.config
    per_token = c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * 4
    *_, two_level = run_two_steps(model, "xla")
    assert two_level.nbytes() == per_token * 2 * (16 + G * S)
    *_, three_level = run_two_steps(model, "xla", TREE, N_NEW_TREE_1)
    # Two roots, each once in its 16-token bucket, their questions side by side in one 16-token
    # row per root (4 and 8 tokens), and 4·G suffixes.
    assert three_level.nbytes() == per_token * (2 * 16 + 2 * 16 + 4 * G * S)
    *_, concatenated = run_two_steps(model, "xla", TREE.prompts(), N_NEW_TREE_1)
    # The same rows as one level of concatenated prompts (32-token bucket) hold more.
    assert concatenated.nbytes() == per_token * 4 * (32 + G * S) > three_level.nbytes()


@pytest.mark.parametrize("impl", ["reference", "pallas"])
@pytest.mark.parametrize("tree", [False, True], ids=["two_level", "three_level"])
def test_other_impls_match_xla(model, impl, tree):
    prompts, n_new_1 = (TREE, N_NEW_TREE_1) if tree else (None, N_NEW_1)
    *_, h1, h2, _ = run_two_steps(model, "xla", prompts, n_new_1)
    *_, o1, o2, _ = run_two_steps(model, impl, prompts, n_new_1)
    assert rel_err(o1, h1) <= 1e-5
    assert rel_err(o2, h2) <= 1e-5
