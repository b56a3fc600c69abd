"""Split attention: reference == replicated dense causal attention; XLA and Pallas == reference.

Pallas kernels run with interpret=True on CPU (tiny shapes) and are checked to lower for CUDA,
where each pallas_call becomes a Triton custom call.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import split_attention as sa

TRITON_TARGET = "__gpu$xla.gpu.triton"
SMALL_BLOCKS = sa.BlockSizes(16, 16, 16, 16, 16, 16)
# fp32: same math, different summation order.
FP32_RTOL = 1e-5
# bf16 outputs are rounded to 8 significant bits: allow one bf16 ulp at the output scale (2^-7
# relative to the largest output); rounding alone accounts for up to half of that.
BF16_RTOL = 2.0**-7


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    B: int
    G: int
    P: int
    R: int
    H: int
    K: int
    D: int
    prompt_len: tuple
    comp_len: tuple
    sm_scale: float | None = None


# P=40 and R=24 are not multiples of the 16-wide test blocks; lengths cover plen = 1 and P,
# clen = 0 and R.
CASES = [
    Case("mha", 2, 3, 40, 24, 2, 2, 16, (40, 1), ((0, 24, 5), (13, 1, 24))),
    Case("gqa2", 2, 3, 40, 24, 4, 2, 16, (17, 40), ((24, 0, 9), (3, 24, 0)), sm_scale=0.3),
    Case("gqa4_g1", 2, 1, 40, 24, 4, 1, 32, (1, 33), ((24,), (0,))),
]


def make_inputs(case, dtype=jnp.float32, seed=0):
    B, G, P, R, H, K, D = case.B, case.G, case.P, case.R, case.H, case.K, case.D
    keys = jax.random.split(jax.random.key(seed), 6)
    shapes = [
        (B, P, H, D),
        (B, P, K, D),
        (B, P, K, D),
        (B, G, R, H, D),
        (B, G, R, K, D),
        (B, G, R, K, D),
    ]
    arrays = [jax.random.normal(k, s, jnp.float32).astype(dtype) for k, s in zip(keys, shapes)]
    return (*arrays, jnp.array(case.prompt_len, jnp.int32), jnp.array(case.comp_len, jnp.int32))


def rel_err(actual, expected):
    expected = np.asarray(expected, np.float64)
    return np.max(np.abs(np.asarray(actual, np.float64) - expected)) / np.max(np.abs(expected))


def outputs_and_grads(fn, inputs, **kwargs):
    """Outputs and the VJP of all six float inputs under fixed random cotangents."""

    @jax.jit
    def run(inputs):
        lengths = inputs[6:]
        outs, vjp = jax.vjp(lambda *x: fn(*x, *lengths, **kwargs), *inputs[:6])
        cotangents = tuple(
            jax.random.normal(jax.random.key(100 + i), o.shape, jnp.float32).astype(o.dtype)
            for i, o in enumerate(outs)
        )
        return outs, vjp(cotangents)

    return run(inputs)


def dense_causal_attention(q_TxHxD, k_TxKxD, v_TxKxD, scale):
    """Plain causal softmax attention of one sequence (numpy, fp64)."""
    T, H, _ = q_TxHxD.shape
    rep = H // k_TxKxD.shape[1]
    k = np.repeat(k_TxKxD, rep, axis=1)
    v = np.repeat(v_TxKxD, rep, axis=1)
    s = np.einsum("qhd,khd->hqk", q_TxHxD, k) * scale
    s = np.where(np.tril(np.ones((T, T), bool))[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hqk,khd->qhd", p, v)


@functools.cache
def reference_results(case):
    return outputs_and_grads(
        sa.split_attention_reference, make_inputs(case), sm_scale=case.sm_scale
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reference_equals_replicated_dense_causal(case):
    q_p, k_p, v_p, q_c, k_c, v_c, plen_B, clen_BxG = (
        np.asarray(x, np.float64) for x in make_inputs(case)
    )
    o_p, o_c = reference_results(case)[0]
    scale = case.sm_scale or 1 / np.sqrt(case.D)
    for b in range(case.B):
        n_p = int(plen_B[b])
        for g in range(case.G):
            n_c = int(clen_BxG[b, g])
            q, k, v = (
                np.concatenate([prompt[b, :n_p], comp[b, g, :n_c]])
                for prompt, comp in [(q_p, q_c), (k_p, k_c), (v_p, v_c)]
            )
            o = dense_causal_attention(q, k, v, scale)
            # Every replica reproduces the prompt rows; the completion rows are sample g's.
            np.testing.assert_allclose(np.asarray(o_p)[b, :n_p], o[:n_p], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.asarray(o_c)[b, g, :n_c], o[n_p:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_xla_matches_reference_fp32(case):
    inputs = make_inputs(case)
    ref_out, ref_grads = reference_results(case)
    out, grads = outputs_and_grads(sa.split_attention_xla, inputs, sm_scale=case.sm_scale)
    for name, a, e in zip(["o_p", "o_c"], out, ref_out):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert rel_err(a, e) <= FP32_RTOL, name
    for name, a, e in zip(["dq_p", "dk_p", "dv_p", "dq_c", "dk_c", "dv_c"], grads, ref_grads):
        assert rel_err(a, e) <= FP32_RTOL, name


def assert_invisible_keys_get_zero_grads(inputs, grads):
    """Keys past a prompt's or a completion's true length feed no query: exactly zero dK, dV."""
    _, dk_p, dv_p, _, dk_c, dv_c = (np.asarray(g) for g in grads)
    plen_B, clen_BxG = (np.asarray(x) for x in inputs[6:])
    for b in range(plen_B.shape[0]):
        assert not dk_p[b, plen_B[b] :].any() and not dv_p[b, plen_B[b] :].any()
        for g in range(clen_BxG.shape[1]):
            assert not dk_c[b, g, clen_BxG[b, g] :].any() and not dv_c[b, g, clen_BxG[b, g] :].any()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_pallas_interpret_matches_reference_fp32(case):
    inputs = make_inputs(case)
    ref_out, ref_grads = reference_results(case)
    out, grads = outputs_and_grads(
        sa.split_attention, inputs, sm_scale=case.sm_scale, block_sizes=SMALL_BLOCKS, interpret=True
    )
    for name, a, e in zip(["o_p", "o_c"], out, ref_out):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert rel_err(a, e) <= FP32_RTOL, name
    for name, a, e, x in zip(
        ["dq_p", "dk_p", "dv_p", "dq_c", "dk_c", "dv_c"], grads, ref_grads, inputs
    ):
        assert a.shape == x.shape and a.dtype == x.dtype
        assert rel_err(a, e) <= FP32_RTOL, name
    assert_invisible_keys_get_zero_grads(inputs, grads)


@pytest.mark.slow
def test_pallas_interpret_default_blocks_head_dim_64():
    case = Case("d64", 1, 2, 70, 33, 4, 2, 64, (70,), ((33, 20),))
    inputs = make_inputs(case, seed=3)
    ref_out, ref_grads = outputs_and_grads(sa.split_attention_reference, inputs)
    out, grads = outputs_and_grads(sa.split_attention, inputs, interpret=True)
    for a, e in zip([*out, *grads], [*ref_out, *ref_grads]):
        assert rel_err(a, e) <= FP32_RTOL


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_bf16_outputs_match_fp32_reference(impl):
    case = CASES[1]
    inputs = make_inputs(case, jnp.bfloat16, seed=1)
    ref = sa.split_attention_reference(
        *(x.astype(jnp.float32) for x in inputs[:6]), *inputs[6:], sm_scale=case.sm_scale
    )
    if impl == "xla":
        out = sa.split_attention_xla(*inputs, sm_scale=case.sm_scale)
    else:
        out = sa.split_attention(
            *inputs, sm_scale=case.sm_scale, block_sizes=SMALL_BLOCKS, interpret=True
        )
    for a, e in zip(out, ref):
        assert a.dtype == jnp.bfloat16
        assert rel_err(a.astype(jnp.float32), e) <= BF16_RTOL


def _abstract_inputs(case, dtype):
    return tuple(
        jax.ShapeDtypeStruct(x.shape, x.dtype if x.dtype == jnp.int32 else dtype)
        for x in make_inputs(case)
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_pallas_lowers_for_cuda_forward_and_backward(dtype):
    case = CASES[1]

    def forward(*args):
        return sa.split_attention(*args, block_sizes=SMALL_BLOCKS)

    def loss(*args):
        o_p, o_c = forward(*args)
        return jnp.sum(o_p.astype(jnp.float32)) + jnp.sum(o_c.astype(jnp.float32))

    grad = jax.grad(loss, argnums=tuple(range(6)))
    args = _abstract_inputs(case, dtype)
    fwd_text = jax.jit(forward).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    bwd_text = jax.jit(grad).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    # Forward: prompt + completion kernels; backward adds two dQ and two dK/dV kernels.
    assert fwd_text.count(TRITON_TARGET) == 2
    assert bwd_text.count(TRITON_TARGET) == 6
    for name in [
        "fwd_prompt",
        "fwd_completion",
        "dq_prompt",
        "dq_completion",
        "dkv_prompt",
        "dkv_completion",
    ]:
        assert f"split_attention_{name}" in bwd_text


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_pallas_lowers_for_tpu_forward_and_backward(dtype):
    """Same kernels through Mosaic TPU; TPU tiling wants 128-row query blocks."""
    case = CASES[1]
    blocks = sa.BlockSizes(128, 128, 128, 128, 128, 128)

    def loss(*args):
        o_p, o_c = sa.split_attention(*args, block_sizes=blocks)
        return jnp.sum(o_p.astype(jnp.float32)) + jnp.sum(o_c.astype(jnp.float32))

    grad = jax.grad(loss, argnums=tuple(range(6)))
    # The Mosaic lowering queries the chip generation; name one through an abstract mesh.
    tpu = jax.sharding.AbstractDevice("TPU v5 lite", 1, "tpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=tpu)
    with jax.sharding.use_abstract_mesh(mesh):
        text = (
            jax.jit(grad)
            .trace(*_abstract_inputs(case, dtype))
            .lower(lowering_platforms=("tpu",))
            .as_text()
        )
    assert text.count("tpu_custom_call") == 6
    assert TRITON_TARGET not in text


def test_block_sizes_validated():
    with pytest.raises(ValueError):
        sa.BlockSizes(block_q=24)
    with pytest.raises(ValueError):
        sa.BlockSizes(block_k=8)


def test_padding_rule_covers_every_block():
    blocks = sa.BlockSizes(64, 32, 16, 64, 32, 16)
    for n in [1, 17, 40, 64, 65]:
        for heads_per_kv in [1, 2, 3, 4, 8]:
            padded = sa._padded_tokens(n, blocks, heads_per_kv)
            assert padded >= n
            assert all(padded % bk == 0 for bk in blocks.key_blocks)
            assert all(padded * heads_per_kv % bq == 0 for bq in blocks.query_blocks)
