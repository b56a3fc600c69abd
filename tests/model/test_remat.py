"""Rematerialisation changes memory, not math: gradients of a packed-tree loss with remat "block"
and "attention" equal those without, and a bad policy name is refused.

The loss is bitwise equal; the recomputed parts land in other XLA fusions, which reassociates
a few float32 sums, so gradients agree to ~1e-6 of their scale (measured up to 9.5e-7 absolute),
where a remat that dropped or misrouted a layer would be off by O(1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model.test_packed_model import rel, tiny_model
from tests.tree_fixtures import random_packed
from zorro_jax.model.forward import packed_logprobs
from zorro_jax.model.transformer import Transformer


def _grads(remat, packed, weights):
    cfg = tiny_model().config.replace(remat=remat)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(params=0)))

    def loss(p):
        lp, _, mask = packed_logprobs(nnx.merge(graphdef, p), packed, impl="xla", with_entropy=False)
        return jnp.sum(jnp.where(mask, lp * weights, 0.0))

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("remat", ["block", pytest.param("attention", marks=pytest.mark.slow)])
def test_remat_gradients_equal_no_remat(remat):
    rng = np.random.default_rng(3)
    _, packed = random_packed(rng, n_groups=2, g=3, block=16, trees_per_row=2, depths=(2, 3))
    weights = jnp.asarray(rng.normal(size=packed.sample_mask().shape), jnp.float32)
    (v0, g0), (v1, g1) = _grads("none", packed, weights), _grads(remat, packed, weights)
    assert float(v0) == float(v1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert rel(a, b) <= 2e-6


def test_bad_remat_is_refused():
    with pytest.raises(ValueError, match="remat must be one of"):
        tiny_model().config.replace(remat="layers")
