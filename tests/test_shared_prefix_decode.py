"""Shared-prefix decode attention: Pallas kernels (interpret mode) and jnp path against dense truth,
for one prefix level (a prompt per row) and for cascades of several (schema, question, ...); the
suffix kernel against the jnp suffix part, and that it never reads unwritten suffix blocks.

Shapes are tiny and chosen so that the prompt length is not a multiple of the key block, some
prompt splits lie entirely beyond a group's prompt_len, and q_start covers 0 and its maximum.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import suffix_decode
from pallas_kernels.shared_prefix_decode import (
    BlockSizes,
    shared_prefix_attention,
    shared_prefix_attention_xla,
    shared_prefix_decode_attention,
    shared_prefix_decode_reference,
)
from pallas_kernels.suffix_decode import suffix_attention, suffix_attention_pallas

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

    def fields(self):
        return (self.q, self.k_prompt, self.v_prompt, self.prompt_len, self.k_suffix,
                self.v_suffix, self.q_start)

    def args(self):
        """The decode attention's arguments: one prefix level."""
        levels = ((self.k_prompt, self.v_prompt, self.prompt_len),)
        return (self.q, levels, self.k_suffix, self.v_suffix, self.q_start)

    def astype(self, dtype):
        cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
        return Case(*(cast(x) for x in self.fields()))


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


def causal_attention_numpy(q, levels, k_suffix, v_suffix, q_start, sm_scale):
    """Plain causal attention over (each level's ancestor entry[:len]) ++ suffix[:q_start+T], last
    T queries, float64; row b hangs under entry b // (B / entries) of every level."""
    q, ks, vs, qs = (np.asarray(x, np.float64) for x in (q, k_suffix, v_suffix, q_start))
    levels = [tuple(np.asarray(x, np.float64) for x in level) for level in levels]
    b_, g_, t_, h_, _ = q.shape
    ratio = h_ // ks.shape[3]
    out = np.zeros_like(q)
    for b in range(b_):
        ancestors = [(kl[e], vl[e], int(ll[e])) for kl, vl, ll in levels
                     for e in [b // (b_ // kl.shape[0])]]
        for g in range(g_):
            n_s = int(qs[b, g]) + t_
            keys = np.concatenate([k[:n] for k, _, n in ancestors] + [ks[b, g, :n_s]])  # [N, K, D]
            vals = np.concatenate([v[:n] for _, v, n in ancestors] + [vs[b, g, :n_s]])
            n = len(keys)
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


# A cascade over B = 4 rows: one schema (level 0), two questions under it, a prompt tail per row
# (entries 1 -> 2 -> 4); then G = 2 samples per row with their suffixes. Lengths are ragged,
# from 1 to the full padded length.
CASCADE_B, CASCADE_G, CASCADE_S = 4, 2, 7
CASCADE_LEVELS = ((40, [33]), (21, [21, 1]), (9, [9, 4, 1, 7]))


def make_cascade(t, ratio, seed, num_levels=3, dtype=jnp.float32):
    """(q, levels, k_suffix, v_suffix, q_start) of the first `num_levels` cascade levels."""
    h = K * ratio
    ks = iter(jax.random.split(jax.random.key(seed), 3 + 2 * num_levels))
    normal = lambda shape: jax.random.normal(next(ks), shape, jnp.float32).astype(dtype)
    levels = tuple(
        (normal((len(lens), p, K, D)), normal((len(lens), p, K, D)), jnp.asarray(lens, jnp.int32))
        for p, lens in CASCADE_LEVELS[:num_levels]
    )
    b, g, s = CASCADE_B, CASCADE_G, CASCADE_S
    q_start = jnp.asarray([[0, s - t], [1, 0], [s - t, 2], [3, 1]], jnp.int32)
    return (normal((b, g, t, h, D)), levels, normal((b, g, s, K, D)), normal((b, g, s, K, D)),
            q_start)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("t", [1, 3])
def test_cascade_matches_reference(impl, t):
    args = make_cascade(t, ratio=2, seed=20 + t)
    assert_rel_close(run_decode(*args, impl=impl), run_reference(*args), 1e-5)


@pytest.mark.parametrize("num_levels", [2, 3])
def test_cascade_equals_causal_attention_over_ancestors(num_levels):
    """The reference and the XLA cascade == float64 attention over each row's ancestor entries
    (not its siblings') ++ its own suffix."""
    args = make_cascade(3, ratio=4, seed=30 + num_levels, num_levels=num_levels)
    sm_scale = 0.3
    expected = causal_attention_numpy(*args, sm_scale)
    assert_rel_close(jax.jit(shared_prefix_decode_reference, static_argnames="sm_scale")(
        *args, sm_scale=sm_scale), expected, 1e-5)
    assert_rel_close(run_decode(*args, impl="xla", sm_scale=sm_scale), expected, 1e-5)


def pack_level(k_NxPxKxD, v_NxPxKxD, len_N, per_row, width, fill=1e4):
    """A rectangular level with its entries packed side by side, `per_row` to a cache row of
    `width` slots (NumPy): (k [N/per_row, width, K, D], v, len [N], start [N]); the slots
    between and after the windows hold `fill` (keys) and -fill (values)."""
    k, v, lens = (np.asarray(x) for x in (k_NxPxKxD, v_NxPxKxD, len_N))
    n, _, kh, d = k.shape
    k_p = np.full((n // per_row, width, kh, d), fill, k.dtype)
    v_p = np.full((n // per_row, width, kh, d), -fill, v.dtype)
    starts = np.zeros(n, np.int32)
    for e in range(n):
        row, j = divmod(e, per_row)
        starts[e] = 0 if j == 0 else starts[e - 1] + lens[e - 1]
        k_p[row, starts[e]:starts[e] + lens[e]] = k[e, :lens[e]]
        v_p[row, starts[e]:starts[e] + lens[e]] = v[e, :lens[e]]
    assert starts[-1] + lens[-1] <= width
    return jnp.asarray(k_p), jnp.asarray(v_p), jnp.asarray(lens), jnp.asarray(starts)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_packed_level_equals_its_rectangular_cascade(impl):
    """Level 1 (two questions under the schema) and level 2 (a tail per row) packed side by side:
    each row masked to its entry's window == the rectangular cascade == float64 attention over the
    row's ancestors. The fill between windows (1e4) would dominate any row that saw it."""
    q, levels, k_s, v_s, q_start = make_cascade(3, ratio=2, seed=41)
    packed = (levels[0], pack_level(*levels[1], per_row=2, width=32),
              pack_level(*levels[2], per_row=4, width=32))
    sm_scale = 0.3
    expected = causal_attention_numpy(q, levels, k_s, v_s, q_start, sm_scale)
    args = (q, packed, k_s, v_s, q_start)
    assert_rel_close(run_decode(*args, impl=impl, sm_scale=sm_scale), expected, 1e-5)
    assert_rel_close(jax.jit(shared_prefix_decode_reference, static_argnames="sm_scale")(
        *args, sm_scale=sm_scale), expected, 1e-5)


# One cache row of 96 keys holding four entries side by side (a schema's questions), two query
# group rows under each; T = 2, H/K = 2, so 32 query rows per KV head: two row blocks of 16 whose
# windows' unions are [0, 27) and [27, 78). Keys 78.. belong to no window.
WINDOW_LENS, WINDOW_STARTS = [20, 7, 33, 18], [0, 20, 27, 60]
WINDOW_BLOCKS = BlockSizes(block_k=16, num_splits=3, block_m=16)


def windowed_case(seed):
    ks = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(ks[0], (2, 8, 2, 2 * K, D), jnp.float32)
    k_p, v_p = (jax.random.normal(x, (2, 96, K, D), jnp.float32) for x in ks[1:])
    lens = jnp.asarray(np.repeat([WINDOW_LENS, [5, 9, 1, 16]], 2, axis=1), jnp.int32)
    starts = jnp.asarray(np.repeat([WINDOW_STARTS, [0, 5, 14, 15]], 2, axis=1), jnp.int32)
    return q, k_p, v_p, lens, starts


def test_prompt_kernel_with_key_windows_matches_xla():
    q, k_p, v_p, lens, starts = windowed_case(60)
    kernel = functools.partial(shared_prefix_attention, block_sizes=WINDOW_BLOCKS, interpret=True)
    o, lse = jax.jit(kernel)(q, k_p, v_p, lens, starts)
    o_x, lse_x = jax.jit(shared_prefix_attention_xla)(q, k_p, v_p, lens, starts)
    assert_rel_close(o, o_x, 1e-5)
    assert_rel_close(lse, lse_x, 1e-5)
    # Group row g sees exactly its window: the same rows against the sliced keys.
    for b, g in [(0, 0), (0, 5), (1, 6)]:
        window = slice(int(starts[b, g]), int(starts[b, g] + lens[b, g]))
        o_w, _ = shared_prefix_attention_xla(q[b:b + 1, g:g + 1], k_p[b:b + 1, window],
                                             v_p[b:b + 1, window], lens[b:b + 1, g])
        assert_rel_close(o[b, g], o_w[0, 0], 1e-5)


def test_prompt_kernel_never_reads_key_blocks_outside_the_windows():
    """NaN in every key block that meets no window of its cache row (row 0: blocks of 16 from 80,
    row 1: from 32): a kernel that visited one would return NaN, as the XLA path over all keys
    does."""
    q, k_p, v_p, lens, starts = windowed_case(61)
    first_unread = jnp.asarray([80, 32])[:, None, None, None]
    unread = jnp.arange(96)[None, :, None, None] >= first_unread
    k_nan, v_nan = (jnp.where(unread, jnp.nan, x) for x in (k_p, v_p))
    kernel = functools.partial(shared_prefix_attention, block_sizes=WINDOW_BLOCKS, interpret=True)
    o, lse = jax.jit(kernel)(q, k_nan, v_nan, lens, starts)
    o_x, lse_x = jax.jit(shared_prefix_attention_xla)(q, k_p, v_p, lens, starts)
    assert_rel_close(o, o_x, 1e-5)
    assert_rel_close(lse, lse_x, 1e-5)
    assert not np.isfinite(np.asarray(shared_prefix_attention_xla(q, k_nan, v_nan, lens, starts)[0])).all()


def test_cascade_rejects_levels_that_do_not_nest():
    q, levels, k_s, v_s, q_start = make_cascade(1, ratio=1, seed=0)
    k3, v3, _ = levels[2]
    bad = levels[:2] + ((k3[:3], v3[:3], jnp.ones((3,), jnp.int32)),)
    with pytest.raises(ValueError, match="do not divide"):
        shared_prefix_decode_attention(q, bad, k_s, v_s, q_start)
    with pytest.raises(ValueError, match="at least one prefix level"):
        shared_prefix_decode_attention(q, (), k_s, v_s, q_start)
    k2, v2, len2 = levels[1]
    with pytest.raises(ValueError, match="need their key starts"):
        shared_prefix_decode_attention(q, (levels[0], (k2[:1], v2[:1], len2)), k_s, v_s, q_start)


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
    assert_rel_close(o, causal_attention_numpy(*case.args(), sm_scale), 1e-5)


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


SUFFIX_BLOCKS = suffix_decode.BlockSizes(block_k=16)


@pytest.mark.parametrize("s", [S, 48])  # 9 keys (padded to one block) and 3 whole blocks
@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("ratio", [1, 4])
def test_suffix_kernel_matches_jnp(s, t, ratio):
    case = make_case(t, ratio, seed=40 + t + ratio)
    rng = np.random.default_rng(s)
    k_s, v_s = (jnp.asarray(rng.standard_normal((B, G, s, K, D)), jnp.float32) for _ in "kv")
    q_start = jnp.asarray(np.minimum(np.asarray(case.q_start) * (s // S), s - t))
    kernel = functools.partial(suffix_attention_pallas, block_sizes=SUFFIX_BLOCKS, interpret=True)
    o, lse = jax.jit(kernel)(case.q, k_s, v_s, q_start)
    o_x, lse_x = jax.jit(suffix_attention)(case.q, k_s, v_s, q_start)
    assert o.dtype == case.q.dtype and lse.shape == case.q.shape[:4]
    assert_rel_close(o, o_x, 1e-5)
    assert_rel_close(lse, lse_x, 1e-5)


def test_suffix_kernel_never_reads_unwritten_blocks():
    """NaN in every key block past q_start + T: a kernel that visited them would return NaN (a
    zero softmax weight times a NaN value), the jnp path over all S keys does."""
    case = make_case(3, 2, seed=50)
    s, block = 64, SUFFIX_BLOCKS.block_k
    q_start = jnp.asarray([[0, 13, 40], [61, 2, 16], [29, 0, 45]], jnp.int32)
    rng = np.random.default_rng(0)
    k_s, v_s = (jnp.asarray(rng.standard_normal((B, G, s, K, D)), jnp.float32) for _ in "kv")
    first_unread = -(-(q_start + 3) // block) * block
    unread = jnp.arange(s)[None, None, :, None, None] >= first_unread[:, :, None, None, None]
    assert bool(jnp.any(unread))
    k_nan, v_nan = (jnp.where(unread, jnp.nan, x) for x in (k_s, v_s))
    kernel = functools.partial(suffix_attention_pallas, block_sizes=SUFFIX_BLOCKS, interpret=True)
    o, lse = jax.jit(kernel)(case.q, k_nan, v_nan, q_start)
    o_x, lse_x = jax.jit(suffix_attention)(case.q, k_s, v_s, q_start)
    assert_rel_close(o, o_x, 1e-5)
    assert_rel_close(lse, lse_x, 1e-5)
    assert not np.isfinite(np.asarray(jax.jit(suffix_attention)(case.q, k_nan, v_nan, q_start)[0])).all()


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
    return [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in case.fields()[:4]]


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


def test_suffix_kernel_lowers_to_mosaic_for_tpu():
    b, g, t, h, k, d, s = 2, 4, 5, 8, 2, 128, 256
    sds = jax.ShapeDtypeStruct
    args = (sds((b, g, t, h, d), jnp.bfloat16), sds((b, g, s, k, d), jnp.bfloat16),
            sds((b, g, s, k, d), jnp.bfloat16), sds((b, g), jnp.int32))
    fn = lambda *a: suffix_attention_pallas(*a, block_sizes=suffix_decode.BlockSizes(block_k=128))
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert "tpu_custom_call" in text and "__gpu$xla.gpu.triton" not in text


def test_block_sizes_validation():
    with pytest.raises(ValueError):
        suffix_decode.BlockSizes(block_k=8)
    with pytest.raises(ValueError):
        suffix_decode.BlockSizes(block_k=48)
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
