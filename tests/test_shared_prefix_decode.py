"""Shared-prefix decode attention: Pallas kernel (interpret mode) and jnp path against dense truth.

Shapes are tiny and chosen so that the prompt length is not a multiple of the key block, some
prompt splits lie entirely beyond a group's prompt_len, and q_start covers 0 and its maximum.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.shared_prefix_decode import (
    BlockSizes,
    shared_prefix_attention,
    shared_prefix_attention_xla,
    shared_prefix_decode_attention,
    shared_prefix_decode_reference,
    suffix_attention,
)

B, G, K, D, P, S = 3, 3, 2, 16, 37, 9
# block_k 16 and 3 splits: P is padded 37 -> 48, a group with prompt_len 1 leaves two splits empty.
SMALL_BLOCKS = BlockSizes(block_k=16, num_splits=3)
PROMPT_LEN = np.array([37, 1, 20], np.int32)


@functools.partial(jax.jit, static_argnames=("impl", "block_sizes", "sm_scale"))
def run_decode(*args, impl, block_sizes=SMALL_BLOCKS, sm_scale=None):
    return shared_prefix_decode_attention(
        *args, impl=impl, sm_scale=sm_scale, block_sizes=block_sizes, interpret=True
    )


run_reference = jax.jit(shared_prefix_decode_reference)


@dataclasses.dataclass
class Case:
    q: jax.Array
    k_prompt: jax.Array
    v_prompt: jax.Array
    prompt_len: jax.Array
    k_suffix: jax.Array
    v_suffix: jax.Array
    q_start: jax.Array

    def args(self):
        return (
            self.q,
            self.k_prompt,
            self.v_prompt,
            self.prompt_len,
            self.k_suffix,
            self.v_suffix,
            self.q_start,
        )

    def astype(self, dtype):
        cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        return Case(*(cast(x) for x in self.args()))


def make_case(t, ratio, seed=0, d=D, p=P, dtype=jnp.float32):
    h = K * ratio
    ks = jax.random.split(jax.random.key(seed), 5)
    normal = lambda key, shape: jax.random.normal(key, shape, jnp.float32).astype(dtype)
    max_start = S - t
    q_start = np.array([[0, max_start, 1], [2, 0, max_start], [max_start, 1, 0]], np.int32)
    return Case(
        q=normal(ks[0], (B, G, t, h, d)),
        k_prompt=normal(ks[1], (B, p, K, d)),
        v_prompt=normal(ks[2], (B, p, K, d)),
        prompt_len=jnp.asarray(np.minimum(PROMPT_LEN, p)),
        k_suffix=normal(ks[3], (B, G, S, K, d)),
        v_suffix=normal(ks[4], (B, G, S, K, d)),
        q_start=jnp.asarray(q_start),
    )


def assert_rel_close(actual, expected, rel):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    err = np.max(np.abs(actual - expected))
    assert err <= rel * np.max(np.abs(expected)), (
        f"max abs err {err:.3g}, scale {np.max(np.abs(expected)):.3g}"
    )


def causal_attention_numpy(case, sm_scale):
    """Plain causal attention over prompt[:plen] ++ suffix[:q_start+T], last T queries, float64."""
    q, kp, vp, plen, ks, vs, qs = (np.asarray(x, np.float64) for x in case.args())
    b_, g_, t_, h_, _ = q.shape
    ratio = h_ // kp.shape[2]
    out = np.zeros_like(q)
    for b in range(b_):
        for g in range(g_):
            n_p, n_s = int(plen[b]), int(qs[b, g]) + t_
            keys = np.concatenate([kp[b, :n_p], ks[b, g, :n_s]])  # [N, K, D]
            vals = np.concatenate([vp[b, :n_p], vs[b, g, :n_s]])
            n = n_p + n_s
            for t in range(t_):
                pos = n - t_ + t  # absolute position of query t in the concatenated sequence
                for hh in range(h_):
                    kh = hh // ratio
                    scores = keys[: pos + 1, kh] @ q[b, g, t, hh] * sm_scale
                    w = np.exp(scores - scores.max())
                    out[b, g, t, hh] = (w / w.sum()) @ vals[: pos + 1, kh]
    return out


@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("ratio", [1, 4])
def test_prompt_kernel_matches_xla(t, ratio):
    case = make_case(t, ratio)
    prompt_args = (case.q, case.k_prompt, case.v_prompt, case.prompt_len)
    kernel = functools.partial(shared_prefix_attention, block_sizes=SMALL_BLOCKS, interpret=True)
    o_pl, lse_pl = jax.jit(kernel)(*prompt_args)
    o_x, lse_x = jax.jit(shared_prefix_attention_xla)(*prompt_args)
    assert o_pl.shape == case.q.shape and o_pl.dtype == case.q.dtype
    assert lse_pl.shape == case.q.shape[:4] and lse_pl.dtype == jnp.float32
    assert_rel_close(o_pl, o_x, 1e-5)
    assert_rel_close(lse_pl, lse_x, 1e-5)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("ratio", [1, 4])
def test_decode_matches_reference(impl, t, ratio):
    case = make_case(t, ratio, seed=t + ratio)
    assert_rel_close(run_decode(*case.args(), impl=impl), run_reference(*case.args()), 1e-5)


@pytest.mark.parametrize(
    "block_sizes",
    [
        BlockSizes(block_k=16, num_splits=1),
        BlockSizes(block_k=32, num_splits=2, block_m=16),
        BlockSizes(),
    ],
)
def test_block_sizes_do_not_change_result(block_sizes):
    case = make_case(5, 4, seed=3)  # 3·5·4 = 60 query rows per KV head: 4 row blocks of 16
    o = run_decode(*case.args(), impl="pallas", block_sizes=block_sizes)
    assert_rel_close(o, run_reference(*case.args()), 1e-5)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_decode_equals_causal_attention_over_concatenation(impl):
    case = make_case(5, 2, seed=7)
    sm_scale = 0.3
    o = run_decode(*case.args(), impl=impl, sm_scale=sm_scale)
    assert_rel_close(o, causal_attention_numpy(case, sm_scale), 1e-5)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_invisible_cache_entries_are_ignored(impl):
    """Prompt entries at >= prompt_len and suffix entries after the new tokens must not matter."""
    case = make_case(5, 1, seed=11)
    pos_p = jnp.arange(P)[None, :, None, None]
    hidden_p = pos_p >= case.prompt_len[:, None, None, None]
    pos_s = jnp.arange(S)[None, None, :, None, None]
    hidden_s = pos_s >= (case.q_start + case.q.shape[2])[:, :, None, None, None]
    poisoned = dataclasses.replace(
        case,
        k_prompt=jnp.where(hidden_p, 1e4, case.k_prompt),
        v_prompt=jnp.where(hidden_p, -1e4, case.v_prompt),
        k_suffix=jnp.where(hidden_s, 1e4, case.k_suffix),
        v_suffix=jnp.where(hidden_s, -1e4, case.v_suffix),
    )
    o_poisoned = run_decode(*poisoned.args(), impl=impl)
    assert_rel_close(o_poisoned, run_decode(*case.args(), impl=impl), 1e-6)


def test_suffix_attention_sees_only_own_causal_keys():
    case = make_case(5, 2, seed=5)
    o, lse = jax.jit(suffix_attention)(case.q, case.k_suffix, case.v_suffix, case.q_start)
    # Sample (0, 0) has q_start 0: its query t sees exactly keys 0..t of its own suffix.
    q0, k0, v0 = (np.asarray(x[0, 0], np.float64) for x in (case.q, case.k_suffix, case.v_suffix))
    ratio = q0.shape[1] // K
    for t in range(q0.shape[0]):
        k_NxHxD = np.repeat(k0[: t + 1], ratio, axis=1)
        v_NxHxD = np.repeat(v0[: t + 1], ratio, axis=1)
        s_HxN = np.einsum("hd,nhd->hn", q0[t], k_NxHxD) / np.sqrt(D)
        m_H = s_HxN.max(axis=-1)
        w_HxN = np.exp(s_HxN - m_H[:, None])
        assert_rel_close(lse[0, 0, t], m_H + np.log(w_HxN.sum(axis=-1)), 1e-5)
        expected_HxD = np.einsum("hn,nhd->hd", w_HxN / w_HxN.sum(-1, keepdims=True), v_NxHxD)
        assert_rel_close(o[0, 0, t], expected_HxD, 1e-5)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_bf16_inputs_close_to_fp32_reference(impl):
    case = make_case(5, 4, seed=13).astype(jnp.bfloat16)
    o = run_decode(*case.args(), impl=impl)
    assert o.dtype == jnp.bfloat16
    expected = run_reference(*case.astype(jnp.float32).args())
    # Rounding the output to bf16 alone costs up to 2^-8 ≈ 3.9e-3 of the output scale; the
    # bf16 probabilities of the P·V product add a small fraction of that.
    assert_rel_close(o, expected, 5e-3)


def _abstract(case):
    return [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in case.args()[:4]]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_lowers_to_triton_for_cuda(dtype):
    case = make_case(5, 4, dtype=dtype)
    fn = lambda *a: shared_prefix_attention(*a, block_sizes=SMALL_BLOCKS)
    text = jax.jit(fn).trace(*_abstract(case)).lower(lowering_platforms=("cuda",)).as_text()
    assert "__gpu$xla.gpu.triton" in text
    assert "tpu_custom_call" not in text


def test_lowers_to_mosaic_for_tpu():
    # Mosaic tiling: the per-head K/V block is [split_len, D] with D a multiple of 128.
    case = make_case(5, 4, d=128, p=300, dtype=jnp.bfloat16)
    fn = lambda *a: shared_prefix_attention(*a, block_sizes=BlockSizes(block_k=128, num_splits=2))
    text = jax.jit(fn).trace(*_abstract(case)).lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text
    assert "__gpu$xla.gpu.triton" not in text


def test_block_sizes_validation():
    with pytest.raises(ValueError):
        BlockSizes(block_k=24)
    with pytest.raises(ValueError):
        BlockSizes(block_k=8)
    with pytest.raises(ValueError):
        BlockSizes(num_splits=0)
    with pytest.raises(ValueError):
        BlockSizes(block_m=48)


def test_unknown_impl_raises():
    case = make_case(1, 1)
    with pytest.raises(ValueError):
        shared_prefix_decode_attention(*case.args(), impl="cuda")
