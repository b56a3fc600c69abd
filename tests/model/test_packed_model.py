"""The model on `PackedTree` == the model on the replicated `Dense` batch, for every attention
backend: log-probs of every loss token and all parameter gradients of a loss over them, on random
trees (ragged prompts and completions, empty and one-token completions, depths 1–3, several trees
a row, G from 1 to 16)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.tree_fixtures import VOCAB, random_packed, random_trees
from zorro_jax.layouts import pack_groups_balanced
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.forward import dense_logprobs, packed_logprobs
from zorro_jax.model.transformer import init_model


def tiny_model(dtype="float32", seed=0):
    cfg = ModelConfig(model_type="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, qk_norm=True, compute_dtype=dtype)
    return init_model(cfg, seed=seed)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def _logps(graphdef, params, packed, impl):
    """(packed log-probs, Dense oracle log-probs) on the loss view, and the loss mask."""
    model = nnx.merge(graphdef, params)
    lp, _, mask = packed_logprobs(model, packed, impl=impl, with_entropy=False)
    dense = packed.to_dense()
    lp_dense, _, _ = dense_logprobs(model, dense, impl="reference", with_entropy=False)
    return lp, packed.from_dense_next_token(lp_dense), mask


def _loss(graphdef, packed, impl, weights):
    """A loss weighting every loss token differently, on the packed or the Dense batch."""

    def packed_loss(params):
        lp, _, mask = packed_logprobs(nnx.merge(graphdef, params), packed, impl=impl,
                                      with_entropy=False)
        return jnp.sum(jnp.where(mask, lp * weights, 0.0))

    def dense_loss(params):
        lp, _, _ = dense_logprobs(nnx.merge(graphdef, params), packed.to_dense(), impl="reference",
                                  with_entropy=False)
        lp = packed.from_dense_next_token(lp)
        return jnp.sum(jnp.where(packed.sample_mask(), lp * weights, 0.0))

    return packed_loss, dense_loss


CASES = [  # seed, depths, G, groups, trees a row
    (0, (2,), 4, 3, 2),
    (1, (1, 2, 3), 3, 3, 2),
    (2, (3,), 2, 2, 1),
    (3, (2, 1), 16, 2, 2),
    (4, (1,), 1, 4, 3),
]


# The "reference" backend (the dense oracle applied per row) in the slow tier: the optimised
# backends check the same invariant in the default one.
@pytest.mark.parametrize("impl", [pytest.param("reference", marks=pytest.mark.slow), "xla", "pallas"])
@pytest.mark.parametrize("seed, depths, g, groups, per_row", CASES[:3])
def test_logprobs_and_gradients_equal_dense(impl, seed, depths, g, groups, per_row):
    rng = np.random.default_rng(seed)
    _, packed = random_packed(rng, n_groups=groups, g=g, block=16, trees_per_row=per_row,
                              depths=depths)
    graphdef, params = nnx.split(tiny_model())
    # Jitted as in training (and ~3x faster on CPU than op-by-op dispatch).
    lp, want, mask = jax.jit(lambda p: _logps(graphdef, p, packed, impl))(params)
    m = np.asarray(mask)
    assert m.sum() > 0
    assert rel(np.where(m, lp, 0), np.where(m, want, 0)) <= 1e-5
    weights = jnp.asarray(rng.normal(size=mask.shape), jnp.float32)
    packed_loss, dense_loss = _loss(graphdef, packed, impl, weights)
    got, want_g = jax.jit(jax.grad(packed_loss))(params), jax.jit(jax.grad(dense_loss))(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want_g)):
        assert rel(a, b) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("seed, depths, g, groups, per_row", CASES[3:])
def test_logprobs_and_gradients_equal_dense_more_trees(impl, seed, depths, g, groups, per_row):
    test_logprobs_and_gradients_equal_dense(impl, seed, depths, g, groups, per_row)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_bf16_logprobs_within_1e3_of_dense(impl):
    rng = np.random.default_rng(7)
    _, packed = random_packed(rng, n_groups=3, g=4, block=16, trees_per_row=2, depths=(1, 2, 3))
    graphdef, params = nnx.split(tiny_model("bfloat16"))
    lp, want, mask = jax.jit(lambda p: _logps(graphdef, p, packed, impl))(params)
    m = np.asarray(mask)
    assert np.abs(np.where(m, np.asarray(lp) - np.asarray(want), 0)).max() <= 1e-3


def test_per_row_lm_head_equals_the_flat_list():
    """`packed_logprobs` with a row constraint (here the identity: one device) runs the LM head on
    the per-row loss lists; log-probs, entropies and gradients equal the flat list's, on balanced
    rows where a row's loss tokens are not a run of the flat list."""
    rng = np.random.default_rng(5)
    trees = random_trees(rng, n_groups=6, g=3, depths=(1, 2, 3))
    packed = pack_groups_balanced(trees, token_budget=64, tiles=(16, 16), rows_per_batch=4)[0].packed
    graphdef, params = nnx.split(tiny_model())
    ident = lambda x: x

    def run(rows):
        def loss(p):
            lp, ent, mask = packed_logprobs(nnx.merge(graphdef, p), packed, impl="xla", rows=rows)
            w = jnp.asarray(np.random.default_rng(1).normal(size=mask.shape), jnp.float32)
            return jnp.sum(jnp.where(mask, lp * w + ent, 0.0)), (lp, ent, mask)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (_, (lp, ent, mask)), grads = run(None)
    (_, (lp_r, ent_r, mask_r)), grads_r = run(ident)
    m = np.asarray(mask)
    assert m.sum() > 0 and (np.asarray(mask_r) == m).all()
    assert packed.row_loss_col_NxM.shape[0] == 4 and packed.row_loss_live_NxM.sum() == m.sum()
    # The whole view, slots past a sample's length (0 on both paths) included.
    assert rel(lp_r, lp) <= 1e-5 and rel(ent_r, ent) <= 1e-5
    assert not np.asarray(lp)[~m].any() and not np.asarray(ent_r)[~m].any()
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
        assert rel(a, b) <= 1e-5
