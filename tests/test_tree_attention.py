"""tree_attention_xla == the dense reference on random packed trees (forward, dq/dk/dv, bf16), its
causality through gradients, and no [N, H, T, T] intermediate."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.tree_attention import tree_attention_reference, tree_attention_xla
from pallas_kernels.tree_blocks import TreeBlocks, build_tree_blocks
from tests.tree_fixtures import random_packed
from zorro_jax.layouts import group_tree, pack_trees, shared_root_tree

D = 16


def max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)


def qkv(seed, packed, heads, kv_heads, dtype=jnp.float32):
    n, t = packed.tokens_NxT.shape
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(n, t, h, D)), dtype)
               for h in (heads, kv_heads, kv_heads))
    return q, k, v


def case(seed, depths, g, heads, kv_heads, block, n_groups=4, trees_per_row=2, **kw):
    rng = np.random.default_rng(seed)
    _, packed = random_packed(rng, n_groups=n_groups, g=g, block=block, depths=depths,
                              trees_per_row=trees_per_row, **kw)
    return packed, qkv(seed, packed, heads, kv_heads)


def check_forward_and_grads(packed, q, k, v, sm_scale=None):
    end, blocks = packed.subtree_end_NxT, packed.blocks
    xla = lambda q, k, v: tree_attention_xla(q, k, v, end, blocks, sm_scale=sm_scale)
    ref = lambda q, k, v: tree_attention_reference(q, k, v, end, sm_scale=sm_scale)
    o_x, vjp_x = jax.vjp(xla, q, k, v)
    o_r, vjp_r = jax.vjp(ref, q, k, v)
    assert max_rel(o_x, o_r) <= 1e-5
    cot = jnp.asarray(np.random.default_rng(99).normal(size=o_r.shape), jnp.float32)
    for name, gx, gr in zip("qkv", vjp_x(cot), vjp_r(cot), strict=True):
        assert max_rel(gx, gr) <= 1e-5, f"d{name}"


CASES = [
    # seed, depths, G, H, K, block
    (0, (2,), 4, 4, 4, 8),
    (1, (1,), 3, 4, 2, 16),
    (2, (3,), 2, 4, 1, 8),
    (3, (1, 2, 3), 16, 4, 2, 16),
    (4, (1, 2, 3), 1, 2, 1, 8),
]


@pytest.mark.parametrize("seed, depths, g, heads, kv_heads, block", CASES)
def test_xla_equals_reference(seed, depths, g, heads, kv_heads, block):
    packed, (q, k, v) = case(seed, depths, g, heads, kv_heads, block)
    nq, _ = packed.blocks.num_blocks
    counts = np.asarray(packed.blocks.kv_count_NxQ)
    # The lists are ragged: some entries past a block's count are padding the kernel must mask.
    assert counts.min() < packed.blocks.kv_index_NxQxM.shape[2] and nq > 2
    check_forward_and_grads(packed, q, k, v)


def test_xla_sm_scale_and_unequal_block_sizes():
    packed, (q, k, v) = case(5, (2, 3), 5, 4, 2, 16)
    check_forward_and_grads(packed, q, k, v, sm_scale=0.37)
    # Query blocks of 16, key blocks of 8: both sizes come from the list shapes.
    blocks = TreeBlocks(*map(jnp.asarray, build_tree_blocks(packed.subtree_end_NxT, 16, 8)))
    check_forward_and_grads(packed._replace(blocks=blocks), q, k, v)


def test_xla_bf16_inputs():
    packed, _ = case(6, (1, 2, 3), 8, 4, 2, 16)
    q, k, v = qkv(6, packed, 4, 2, jnp.bfloat16)
    out = tree_attention_xla(q, k, v, packed.subtree_end_NxT, packed.blocks)
    assert out.dtype == jnp.bfloat16
    ref = tree_attention_reference(*(x.astype(jnp.float32) for x in (q, k, v)),
                                   packed.subtree_end_NxT)
    # fp32 scores and probabilities: the only error is rounding the output to bf16 (half an ulp,
    # 2^-9 relative); rounding p to bf16 before PV would exceed it.
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert (np.abs(out - ref) <= 2.0**-8 * np.abs(ref) + 1e-6).all()


def test_causality_through_gradients():
    trees = [group_tree([1] * 5, [[2, 3, 4], [5, 6]], 0),
             group_tree([7] * 4, [[8, 9, 10], [11]], 1)]
    packed = pack_trees(trees, row_tokens=20, tiles=(4, 4))
    q, k, v = qkv(7, packed, 4, 2)
    query = 6  # second token of sample (0, 0): sees the prompt (0-4) and column 5
    cot = jnp.asarray(np.random.default_rng(0).normal(size=(4, D)), jnp.float32)

    def out(q, k, v):
        o = tree_attention_xla(q, k, v, packed.subtree_end_NxT, packed.blocks)
        return jnp.sum(o[0, query] * cot)

    dq, dk, dv = (np.abs(np.asarray(x[0])).sum((1, 2)) for x in jax.grad(out, (0, 1, 2))(q, k, v))
    later, sibling, other_tree = [7], [8, 9], list(range(10, 20))
    for col in later + sibling + other_tree:
        assert dk[col] == 0.0 and dv[col] == 0.0, col
    assert (dk[: query + 1] > 0).all() and (dv[: query + 1] > 0).all()
    assert dq[query] > 0 and (np.delete(dq, query) == 0.0).all()


def test_depth3_sibling_question_is_invisible():
    tree = shared_root_tree([1, 2, 3], [([4, 5], [[6, 7], [8]]), ([9], [[10, 11], [12]])], 0)
    packed = pack_trees([tree], row_tokens=16, tiles=(4, 4))
    q, k, v = qkv(8, packed, 2, 2)
    query = 10  # token 11: the second question's (column 8) first completion (columns 9, 10)

    def out(k):
        return jnp.sum(tree_attention_xla(q, k, v, packed.subtree_end_NxT, packed.blocks)[0, query])

    dk = np.abs(np.asarray(jax.grad(out)(k)[0])).sum((1, 2))
    visible = [0, 1, 2, 8, 9, 10]  # root, its question, own completion so far
    assert (dk[visible] > 0).all()
    assert (np.delete(dk, visible) == 0.0).all()


def _largest_intermediate(jaxpr) -> int:
    size = 0
    for eqn in jaxpr.eqns:
        size = max([size, *(int(np.prod(x.aval.shape)) for x in eqn.outvars)])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            size = max(size, _largest_intermediate(sub))
    return size


def test_xla_never_builds_dense_scores():
    # Four trees a row: each query block lists about a quarter of the key blocks.
    packed, (q, k, v) = case(9, (2,), 4, 4, 2, 8, n_groups=8, trees_per_row=4)
    n, t, h, _ = q.shape

    def loss(q, k, v):
        return jnp.sum(tree_attention_xla(q, k, v, packed.subtree_end_NxT, packed.blocks) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1, 2)))(q, k, v).jaxpr
    assert _largest_intermediate(jaxpr) < n * h * t * t // 2


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 16))
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_xla_equals_reference_many_trees(seed, kv_heads):
    rng = np.random.default_rng(seed)
    g = int(rng.choice([1, 2, 3, 8, 16]))
    block = int(rng.choice([8, 16, 64]))
    packed, (q, k, v) = case(seed, (1, 2, 3), g, 4, kv_heads, block, n_groups=6,
                             trees_per_row=3, prompt_len=(1, 90), completion_len=(0, 30))
    check_forward_and_grads(packed, q, k, v)
