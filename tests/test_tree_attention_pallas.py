"""Fused Pallas tree attention == the dense reference (forward, dq/dk/dv) on random packed trees.

Kernels run with interpret=True on CPU (tiny rows, 16-token blocks). They are also lowered for
CUDA, with every Triton module parsed back and verified (`gpu_check`), and for TPU.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import gpu_check
from pallas_kernels import tree_attention_pallas as tap
from pallas_kernels.tree_attention import tree_attention_reference
from pallas_kernels.tree_blocks import build_tree_blocks

FP32_RTOL = 1e-5
# Output rounding to bf16 (8 significant bits) plus bf16 probabilities in the PV product.
BF16_ATOL = 2e-2


# ---- Random packed trees ---------------------------------------------------------------------


def _random_tree(rng, depth, budget):
    """(segment length, children) of a random tree of the given depth, or None if over budget."""
    if depth == 1:
        length = int(rng.integers(1, 25))
        return (length, []) if length <= budget else None
    if depth == 2:
        g = int(rng.integers(1, 17))
        # Large groups get tiny completions (1–2 tokens), small ones ragged lengths up to 12.
        comp = rng.integers(1, 3 if g > 6 else 13, size=g)
        tree = (int(rng.integers(1, 25)), [(int(r), []) for r in comp])
    else:
        questions = [_random_tree(rng, 2, budget) for _ in range(int(rng.integers(1, 4)))]
        tree = (int(rng.integers(4, 33)), [q for q in questions if q is not None])
    return tree if _tree_size(tree) <= budget else None


def _tree_size(tree):
    length, children = tree
    return length + sum(_tree_size(c) for c in children)


def _emit(tree, start, end_T):
    """Write subtree_end for the tree's tokens (depth-first from start); returns its end."""
    length, children = tree
    stop = start + _tree_size(tree)
    end_T[start : start + length] = stop
    pos = start + length
    for child in children:
        pos = _emit(child, pos, end_T)
    return stop


def random_packed_rows(n, t, seed, max_depth=3):
    """subtree_end [n, t] of rows holding several random trees of depth 1..max_depth, each row
    ending in a few padding tokens (singletons)."""
    rng = np.random.default_rng(seed)
    end_NxT = np.tile(np.arange(1, t + 1, dtype=np.int32), (n, 1))
    for row in range(n):
        pos, limit = 0, t - int(rng.integers(1, 9))
        for _ in range(50):
            tree = _random_tree(rng, int(rng.integers(1, max_depth + 1)), limit - pos)
            if tree is not None:
                pos = _emit(tree, pos, end_NxT[row])
    return end_NxT


def test_generator_builds_deep_shared_trees():
    end_NxT = random_packed_rows(4, 128, seed=0)
    j = np.arange(128)
    assert (end_NxT > j).all() and (end_NxT <= 128).all()
    assert (end_NxT[:, -1] == 128).all()  # a padding token ends every row
    shared = end_NxT - j > 1
    assert shared.mean() > 0.5  # most keys are seen by later tokens (prompts, schemas)
    # Depth of a token = number of segments (distinct subtree ends) among the keys it sees.
    visible_NxTxT = (j[None, :] <= j[:, None])[None] & (j[None, :, None] < end_NxT[:, None, :])
    depth = max(len(set(end_NxT[n][visible_NxTxT[n, i]])) for n in range(4) for i in range(128))
    assert depth == 3


# ---- Inputs and results ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    N: int
    T: int
    H: int
    K: int
    D: int
    block_q: int = 16
    block_k: int = 16
    sm_scale: float | None = None
    seed: int = 0


CASES = [
    Case("mha_d16", 2, 64, 2, 2, 16),
    Case("gqa4_d24", 2, 128, 8, 2, 24, sm_scale=0.3, seed=1),
    Case("gqa1x4_qb32_d16", 1, 128, 4, 1, 16, block_q=32, seed=2),
]
SLOW_CASES = [
    Case("gqa7_d96", 2, 128, 7, 1, 96, seed=3),
    Case("gqa3_d8_kb32", 1, 256, 6, 2, 8, block_q=16, block_k=32, seed=4),
    Case("mha_d64_t256", 2, 256, 4, 4, 64, block_q=32, block_k=64, seed=5),
]


def make_inputs(case, dtype=jnp.float32):
    end_NxT = random_packed_rows(case.N, case.T, seed=case.seed)
    keys = jax.random.split(jax.random.key(case.seed), 3)
    q = jax.random.normal(keys[0], (case.N, case.T, case.H, case.D)).astype(dtype)
    k, v = (
        jax.random.normal(key, (case.N, case.T, case.K, case.D)).astype(dtype) for key in keys[1:]
    )
    return q, k, v, end_NxT


def outputs_and_grads(fn, q, k, v):
    o, vjp = jax.vjp(fn, q, k, v)
    do = jax.random.normal(jax.random.key(99), o.shape).astype(o.dtype)
    return o, vjp(do)


def assert_close_fp32(actual, expected, name):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.max(np.abs(actual - expected))
    assert err <= FP32_RTOL * max(1.0, np.max(np.abs(expected))), f"{name}: max |err| {err}"


def check_against_reference(case):
    q, k, v, end_NxT = make_inputs(case)
    blocks = build_tree_blocks(end_NxT, case.block_q, case.block_k)
    ref = outputs_and_grads(
        lambda *x: tree_attention_reference(*x, end_NxT, sm_scale=case.sm_scale), q, k, v
    )
    fused = jax.jit(
        functools.partial(
            outputs_and_grads,
            lambda *x: tap.tree_attention(
                *x, end_NxT, blocks, sm_scale=case.sm_scale, interpret=True
            ),
        )
    )
    out = fused(q, k, v)
    assert out[0].shape == q.shape and out[0].dtype == q.dtype
    for name, a, e, x in zip(
        ["o", "dq", "dk", "dv"], [out[0], *out[1]], [ref[0], *ref[1]], [q, q, k, v]
    ):
        assert a.shape == x.shape and a.dtype == x.dtype, name
        assert_close_fp32(a, e, name)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_pallas_interpret_matches_reference_fp32(case):
    check_against_reference(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=lambda c: c.name)
def test_pallas_interpret_matches_reference_fp32_slow(case):
    check_against_reference(case)


def test_bf16_forward_matches_reference_on_same_inputs():
    case = CASES[1]
    q, k, v, end_NxT = make_inputs(case, jnp.bfloat16)
    blocks = build_tree_blocks(end_NxT, case.block_q, case.block_k)
    o = tap.tree_attention(q, k, v, end_NxT, blocks, sm_scale=case.sm_scale, interpret=True)
    ref = tree_attention_reference(q, k, v, end_NxT, sm_scale=case.sm_scale)
    assert o.dtype == jnp.bfloat16
    err = np.max(np.abs(np.asarray(o, np.float32) - np.asarray(ref, np.float32)))
    assert err <= BF16_ATOL


def test_kernel_reads_only_listed_key_blocks():
    """Dropping a needed key block from one query block's list changes exactly that block."""
    case = CASES[0]
    q, k, v, end_NxT = make_inputs(case)
    blocks = build_tree_blocks(end_NxT, 16, 16)
    qb = blocks.num_blocks[0] - 1
    assert blocks.kv_count_NxQ[0, qb] >= 2
    kv_count = blocks.kv_count_NxQ.copy()
    kv_count[0, qb] -= 1  # the last listed block (the diagonal) is no longer visited
    cut = blocks._replace(kv_count_NxQ=kv_count)
    o, o_cut = (
        np.asarray(tap.tree_attention(q, k, v, end_NxT, b, interpret=True)) for b in (blocks, cut)
    )
    rows = slice(16 * qb, 16 * qb + 16)
    assert np.abs(o[0, rows] - o_cut[0, rows]).max() > 1e-3
    np.testing.assert_array_equal(
        np.delete(o[0], np.s_[rows], 0), np.delete(o_cut[0], np.s_[rows], 0)
    )
    np.testing.assert_array_equal(o[1], o_cut[1])


# ---- Validation -----------------------------------------------------------------------------


def test_block_sizes_validated():
    with pytest.raises(ValueError):
        tap.BlockSizes(num_warps=3)
    with pytest.raises(ValueError):
        tap.BlockSizes(num_stages_dkv=0)
    with pytest.raises(ValueError):
        tap.BlockSizes(num_warps_dq=64)


def test_token_blocks_come_from_metadata_and_are_checked():
    end_NxT = random_packed_rows(1, 128, seed=0)
    assert tap.token_blocks(128, build_tree_blocks(end_NxT, 32, 16)) == (32, 16)
    with pytest.raises(ValueError, match="key blocks"):
        tap.token_blocks(128, build_tree_blocks(end_NxT, 16, 8))
    with pytest.raises(ValueError, match="powers of two"):
        tap.token_blocks(96, build_tree_blocks(random_packed_rows(1, 96, seed=0), 24, 32))


def test_mismatched_metadata_rejected():
    q, k, v, end_NxT = make_inputs(CASES[0])
    other = build_tree_blocks(random_packed_rows(1, 64, seed=7), 16, 16)
    with pytest.raises(ValueError, match="kv_index"):
        tap.tree_attention(q, k, v, end_NxT, other, interpret=True)
    longer_rows = build_tree_blocks(random_packed_rows(2, 96, seed=7), 16, 16)
    with pytest.raises(ValueError, match="divide"):
        tap.tree_attention(q, k, v, end_NxT, longer_rows, interpret=True)


# ---- Lowering for CUDA (with Triton IR verification) and TPU --------------------------------


LOWER_CASE = Case("lower", 2, 256, 8, 2, 96)
LAUNCH = tap.BlockSizes(
    num_warps=2, num_stages=4, num_warps_dq=4, num_stages_dq=1, num_warps_dkv=8, num_stages_dkv=2
)


def _lowering_functions(case, dtype, block_sizes):
    end_NxT = random_packed_rows(case.N, case.T, seed=0)
    blocks = build_tree_blocks(end_NxT, case.block_q, case.block_k)

    def forward(q, k, v):
        return tap.tree_attention(q, k, v, end_NxT, blocks, block_sizes=block_sizes)

    def loss(q, k, v):
        return jnp.sum(forward(q, k, v).astype(jnp.float32))

    grad = jax.grad(loss, argnums=(0, 1, 2))
    structs = (
        jax.ShapeDtypeStruct((case.N, case.T, case.H, case.D), dtype),
        *[jax.ShapeDtypeStruct((case.N, case.T, case.K, case.D), dtype)] * 2,
    )
    return forward, grad, structs


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_lowers_for_cuda_and_triton_ir_verifies(dtype):
    forward, grad, structs = _lowering_functions(LOWER_CASE, dtype, LAUNCH)
    # Under the tests' global "highest" precision the kernels must still ask for TF32 products:
    # they state their precision, so no global setting sends them to spilling IEEE fp32 dots.
    with jax.default_matmul_precision("highest"):
        fwd, bwd = (
            gpu_check.triton_kernels(jax.jit(f).trace(*structs).lower(lowering_platforms=("cuda",)))
            for f in (forward, grad)
        )
    assert [k.name for k in fwd] == ["tree_attention_fwd"]
    launch = {
        "tree_attention_fwd": (2, 4),
        "tree_attention_dq": (4, 1),
        "tree_attention_dkv": (8, 2),
    }
    assert sorted(k.name for k in bwd) == sorted(launch)
    # Grid (N, K, blocks): 256 tokens in 16-token query and key blocks.
    for kernel in fwd + bwd:
        assert (kernel.num_warps, kernel.num_stages) == launch[kernel.name]
        assert kernel.grid == (2, 2, 16)
        ir_text = gpu_check.verify(kernel)
        dots = [line for line in ir_text.splitlines() if "tt.dot" in line]
        assert dots
        if dtype == jnp.float32:
            assert all("tf32" in line for line in dots), kernel.name
            assert all("xf32> * tensor<" in line for line in dots)
        else:
            assert all("xbf16> * tensor<" in line for line in dots)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_lowers_for_tpu_forward_and_backward(dtype):
    """Same kernel bodies through Mosaic TPU, with 128-token blocks (TPU tiling)."""
    _, grad, structs = _lowering_functions(
        dataclasses.replace(LOWER_CASE, block_q=128, block_k=128), dtype, tap.BlockSizes()
    )
    tpu = jax.sharding.AbstractDevice("TPU v5 lite", 1, "tpu")
    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=tpu)
    with jax.sharding.use_abstract_mesh(mesh):
        text = jax.jit(grad).trace(*structs).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3
    assert gpu_check.TRITON_TARGET not in text


@pytest.mark.slow
def test_sm90_compile_bf16_d128_no_spills():
    """A production-like tile (bf16, D 128, 4 heads per kv head, 16 × 64 tokens) compiles for
    Hopper at the default launch parameters without spills and within shared memory."""
    pytest.importorskip("triton")
    case = Case("sm90", 2, 512, 16, 4, 128, block_k=64)
    _, grad, structs = _lowering_functions(case, jnp.bfloat16, tap.BlockSizes())
    lowered = jax.jit(grad).trace(*structs).lower(lowering_platforms=("cuda",))
    for kernel in gpu_check.triton_kernels(lowered):
        stats = gpu_check.compile_sm90(kernel)
        assert not stats.problems, (kernel.name, stats)
