"""Vocabulary-chunked KL and overlap of two next-token distributions equal the dense
computation, values and gradients, with a vocabulary that the chunk does not divide."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zorro_jax.model.logprobs import kl_and_overlap


def dense(hp, wp, hq, wq):
    logp = jax.nn.log_softmax(hp @ wp, axis=-1)
    logq = jax.nn.log_softmax(hq @ wq, axis=-1)
    return (jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1),
            jnp.sum(jnp.minimum(jnp.exp(logp), jnp.exp(logq)), axis=-1))


@pytest.mark.parametrize("chunk", [7, pytest.param(64, marks=pytest.mark.slow), pytest.param(1000, marks=pytest.mark.slow)])
def test_chunked_kl_and_overlap_equal_dense(chunk):
    ks = jax.random.split(jax.random.key(0), 4)
    n, e, v = 5, 8, 61
    hp, hq = (jax.random.normal(k, (n, e)) for k in ks[:2])
    wp, wq = (2.0 * jax.random.normal(k, (e, v)) for k in ks[2:])
    kl, ov = kl_and_overlap(hp, wp, hq, wq, chunk_size=chunk)
    kl_ref, ov_ref = dense(hp, wp, hq, wq)
    np.testing.assert_allclose(kl, kl_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ov, ov_ref, rtol=1e-5, atol=1e-6)
    assert float(kl_ref.min()) > 0.1  # distributions far apart: the check separates them
    loss = lambda f: lambda hq, wq: jnp.sum(f(hp, wp, hq, wq)[0] * jnp.arange(1.0, n + 1))
    got = jax.grad(loss(lambda *a: kl_and_overlap(*a, chunk_size=chunk)), argnums=(0, 1))(hq, wq)
    want = jax.grad(loss(dense), argnums=(0, 1))(hq, wq)
    for g, w in zip(got, want):  # fp32 relative error of the whole gradient (both are ~2.5e-7 from float64)
        assert np.linalg.norm(np.asarray(g) - w) / np.linalg.norm(w) < 1e-5
