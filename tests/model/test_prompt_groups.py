"""Prompt-once forward == replicated Dense forward: log-probs, entropy and all-parameter gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zorro_jax.layouts import bucket, pack_prompt_groups
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.forward import dense_logprobs, prompt_groups_logprobs
from zorro_jax.model.transformer import init_model


def make_model(kv_heads, dtype="float32", seed=0):
    cfg = ModelConfig(model_type="qwen3", vocab_size=89, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=kv_heads,
                      head_dim=16, qk_norm=True, compute_dtype=dtype)
    return init_model(cfg, seed=seed)


def make_groups(g, seed=0, plens=(13, 1, 20), clens=None, r_max=11):
    rng = np.random.default_rng(seed)
    groups = []
    for i, pl in enumerate(plens):
        lens = clens[i] if clens else rng.integers(0, r_max + 1, g)
        groups.append((list(rng.integers(3, 89, pl)), [list(rng.integers(3, 89, n)) for n in lens]))
    # Buckets that are not multiples of the kernels' blocks.
    return pack_prompt_groups(groups, prompt_buckets=(21,), completion_buckets=(r_max,))


def max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def _both(model, batch, impl, weights):
    def loss_groups(m):
        lp, ent, mask = prompt_groups_logprobs(m, batch, impl=impl)
        return jnp.sum(jnp.where(mask, lp * weights, 0.0)), (lp, ent, mask)

    def loss_dense(m):
        dense = batch.to_dense()
        lp, ent, _ = dense_logprobs(m, dense, impl="reference")
        lp = batch.from_dense_next_token(lp)
        ent = batch.from_dense_next_token(ent)
        mask = batch.completion_mask()
        return jnp.sum(jnp.where(mask, lp * weights, 0.0)), (lp, ent, mask)

    graphdef, params = nnx.split(model)
    run = lambda f: jax.jit(jax.value_and_grad(lambda p: f(nnx.merge(graphdef, p)), has_aux=True))(params)
    (_, out_g), grad_g = run(loss_groups)
    (_, out_d), grad_d = run(loss_dense)
    return out_g, out_d, grad_g, grad_d


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("kv_heads,g", [(4, 3), (2, 1), (1, 4)])
def test_groups_equal_replicated_fp32(impl, kv_heads, g):
    model = make_model(kv_heads)
    clens = [[11] + [0] * (g - 1), list(range(1, g + 1)), [5] * g]
    batch = make_groups(g, seed=kv_heads, clens=clens)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=batch.completions_BxGxR.shape), jnp.float32)
    (lp_g, ent_g, mask), (lp_d, ent_d, _), grad_g, grad_d = _both(model, batch, impl, weights)
    m = np.asarray(mask)
    assert m.sum() > 0
    assert max_rel(np.asarray(lp_g)[m], np.asarray(lp_d)[m]) <= 1e-5
    assert max_rel(np.asarray(ent_g)[m], np.asarray(ent_d)[m]) <= 1e-5
    leaves_g = jax.tree.leaves_with_path(grad_g)
    leaves_d = dict(jax.tree.leaves_with_path(grad_d))
    for path, a in leaves_g:
        assert max_rel(a, leaves_d[path]) <= 1e-5, jax.tree_util.keystr(path)


def test_groups_equal_replicated_bf16():
    model = make_model(2, dtype="bfloat16", seed=3)
    batch = make_groups(3, seed=5)
    lp_g, _, mask = prompt_groups_logprobs(model, batch, impl="xla")
    dense = batch.to_dense()
    lp_d = batch.from_dense_next_token(dense_logprobs(model, dense, impl="reference")[0])
    m = np.asarray(mask)
    assert np.abs(np.asarray(lp_g)[m] - np.asarray(lp_d)[m]).max() <= 1e-3


@pytest.mark.slow
def test_pallas_kernel_through_the_model():
    model = make_model(2, seed=4)
    batch = make_groups(2, seed=6, plens=(9, 21))
    weights = jnp.ones(batch.completions_BxGxR.shape, jnp.float32)
    (lp_g, _, mask), (lp_d, _, _), grad_g, grad_d = _both(model, batch, "pallas", weights)
    m = np.asarray(mask)
    assert max_rel(np.asarray(lp_g)[m], np.asarray(lp_d)[m]) <= 1e-5
    for a, b in zip(jax.tree.leaves(grad_g), jax.tree.leaves(grad_d)):
        assert max_rel(a, b) <= 1e-5


def test_to_dense_roundtrip_and_packing():
    batch = pack_prompt_groups([([5, 6, 7], [[8], [9, 10]]), ([11], [[], [12, 13, 14]])])
    dense = batch.to_dense()
    assert dense.tokens_NxT.shape == (4, 16 + 16)
    assert np.asarray(dense.tokens_NxT)[1, :5].tolist() == [5, 6, 7, 9, 10]
    assert np.asarray(dense.tokens_NxT)[3, :4].tolist() == [11, 12, 13, 14]
    assert np.asarray(dense.lengths_N).tolist() == [4, 5, 1, 4]
    assert bucket(17) == 32
    with pytest.raises(ValueError, match="largest bucket"):
        bucket(10**6)
    with pytest.raises(ValueError, match="same, non-zero number"):
        pack_prompt_groups([([1], [[2]]), ([1], [[2], [3]])])
