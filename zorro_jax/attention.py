"""Attention dispatch: one entry per layout, keyed by backend ("reference" | "xla" | "pallas").

The model calls these through the layout code and never knows which kernel runs. A backend that
a layout does not support (or that cannot run on this platform) falls back to "xla" with a
warning, never a crash.

On a mesh, XLA cannot partition a Pallas call (it would gather every operand onto each device).
The sharded steps of `zorro_jax.parallel.steps` therefore trace the model inside
`kernel_mesh(mesh)`, and "pallas" attention then runs the kernels per device under `shard_map`
(`zorro_jax.parallel.kernels`): groups on (data, fsdp), heads on tensor.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings

import jax
import jax.numpy as jnp

# layout -> check(interpret) running the layout's Pallas kernels and its XLA path on one small
# bf16 input; returns the largest difference relative to max(1, max |xla|).
from pallas_kernels.catalog import SELF_CHECKS

IMPLS = ("reference", "xla", "pallas")
NEG_INF = -1e30


def default_impl() -> str:
    """'pallas' on GPU, 'xla' elsewhere (Pallas runs only in slow interpret mode on CPU)."""
    return "pallas" if jax.default_backend() == "gpu" else "xla"


_MESH = threading.local()


@contextlib.contextmanager
def kernel_mesh(mesh):
    """While tracing inside this context, "pallas" attention runs its kernels under `shard_map`
    over `mesh` (a mesh of one device, or None, changes nothing). Set at trace time, so use it
    inside the function being jitted.
    """
    previous = getattr(_MESH, "mesh", None)
    _MESH.mesh = mesh if mesh is not None and mesh.size > 1 else None
    try:
        yield
    finally:
        _MESH.mesh = previous


def current_kernel_mesh():
    """The mesh set by the innermost `kernel_mesh`, or None."""
    return getattr(_MESH, "mesh", None)


@functools.cache
def _warn_once(msg: str):
    warnings.warn(msg, stacklevel=3)


def interpret_mode() -> bool:
    """Pallas kernels run in the (slow) interpreter on CPU only; GPU and TPU compile them."""
    return jax.default_backend() == "cpu"


SELF_CHECK_TOLERANCE = 2e-2  # bf16 rounding differences only


@functools.cache
def pallas_self_check(layout: str) -> bool:
    """First use of a layout's Pallas kernels in a process on an accelerator: do they compile and
    agree with the XLA path on a small input? False (with a warning) sends that layout to 'xla'.

    On CPU the kernels run in interpret mode, whose numerics the test suite checks: True.
    """
    if interpret_mode() or layout not in SELF_CHECKS:
        return True
    try:
        err = SELF_CHECKS[layout]()
    except Exception as e:  # noqa: BLE001 - failing to lower, compile or run: no kernel
        _warn_once(f"Pallas kernels for {layout} failed their self-check ({type(e).__name__}: "
                   f"{str(e)[:200]}); using 'xla' attention")
        return False
    if not err <= SELF_CHECK_TOLERANCE:
        _warn_once(f"Pallas kernels for {layout} disagree with the XLA path (rel. error {err:.3g} "
                   f"> {SELF_CHECK_TOLERANCE}); using 'xla' attention")
        return False
    return True


def resolve_impl(impl: str | None, layout: str, supported=IMPLS) -> str:
    """The attention backend to use for `layout`: `impl` or the default, falling back to 'xla' (with
    a warning) where `impl` is not in `supported` or its Pallas kernels fail `pallas_self_check`.
    """
    impl = impl or default_impl()
    if impl not in IMPLS:
        raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
    if impl not in supported:
        _warn_once(f"attention impl {impl!r} is not available for layout {layout}; using 'xla'")
        return "xla"
    if impl == "pallas" and not pallas_self_check(layout):
        return "xla"
    return impl


def _gqa_scores(q_NxTxHxD, k_NxSxKxD, scale):
    """Scores [N, K, H/K, T, S] without repeating K per query head."""
    n, t, h, d = q_NxTxHxD.shape
    kh = k_NxSxKxD.shape[2]
    q = q_NxTxHxD.reshape(n, t, kh, h // kh, d)
    s = jnp.einsum("ntkgd,nskd->nkgts", q, k_NxSxKxD, preferred_element_type=jnp.float32)
    return s * scale


def causal_attention_xla(q_NxTxHxD, k_NxSxKxD, v_NxSxKxD, q_offset_N, *, sm_scale=None):
    """Query t of row n attends keys s <= q_offset[n] + t (right-padded rows, cache decode)."""
    n, t, h, d = q_NxTxHxD.shape
    s_len = k_NxSxKxD.shape[1]
    scale = sm_scale if sm_scale is not None else d**-0.5
    s = _gqa_scores(q_NxTxHxD, k_NxSxKxD, scale)
    q_pos = q_offset_N[:, None] + jnp.arange(t)[None, :]  # [N, T]
    mask = jnp.arange(s_len)[None, None, :] <= q_pos[:, :, None]  # [N, T, S]
    s = jnp.where(mask[:, None, None], s, NEG_INF)
    p = jax.nn.softmax(s, axis=-1)
    # Probabilities stay fp32 for the PV product: bf16 rounding here would dominate log-prob error.
    o = jnp.einsum("nkgts,nskd->ntkgd", p, v_NxSxKxD.astype(jnp.float32)).astype(q_NxTxHxD.dtype)
    return o.reshape(n, t, h, d)


def causal_attention_reference(q_NxTxHxD, k_NxSxKxD, v_NxSxKxD, q_offset_N, *, sm_scale=None):
    """Plain repeated-KV dense attention: the ground truth for the dense layout."""
    _n, t, h, d = q_NxTxHxD.shape
    rep = h // k_NxSxKxD.shape[2]
    k = jnp.repeat(k_NxSxKxD, rep, axis=2).astype(jnp.float32)
    v = jnp.repeat(v_NxSxKxD, rep, axis=2).astype(jnp.float32)
    scale = sm_scale if sm_scale is not None else d**-0.5
    s = jnp.einsum("nthd,nshd->nhts", q_NxTxHxD.astype(jnp.float32), k) * scale
    q_pos = q_offset_N[:, None] + jnp.arange(t)[None, :]
    mask = jnp.arange(k.shape[1])[None, None, :] <= q_pos[:, :, None]
    s = jnp.where(mask[:, None], s, -jnp.inf)
    o = jnp.einsum("nhts,nshd->nthd", jax.nn.softmax(s, axis=-1), v)
    return o.astype(q_NxTxHxD.dtype)


def dense_attention(q, k, v, q_offset_N, impl: str | None = None):
    """Causal attention on the `Dense` layout (training rows or a per-row KV cache)."""
    impl = resolve_impl(impl, "Dense", supported=("reference", "xla"))
    fn = causal_attention_reference if impl == "reference" else causal_attention_xla
    return fn(q, k, v, q_offset_N)


# Tiles of the XLA tree path (query tokens, key tokens): on CPU a pair's small products run far
# below matmul peak, and 128-token query tiles halve the pair count for ~1.35x faster fwd+bwd
# than 64 x 64 on ragged text-to-SQL rows.
XLA_TREE_TILES = (128, 64)


def tree_tiles(impl: str | None, heads_per_kv: int, head_dim: int, dtype) -> tuple[int, int]:
    """The (query tokens, key tokens) tiles a `PackedTree` batch is packed with for `impl`: the
    Pallas kernel's defaults (sized for sm_90) or the XLA path's."""
    if (impl or default_impl()) == "pallas":
        from pallas_kernels import tree_attention_pallas as tap

        return tap.default_token_blocks(heads_per_kv, head_dim, dtype)
    return XLA_TREE_TILES


def packed_tree_attention(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks, impl=None, **kw):
    """Attention on the `PackedTree` layout: key j visible to query i iff j ≤ i < subtree_end[j];
    `blocks` are the layout's block lists (the XLA and Pallas paths visit only listed tiles)."""
    from pallas_kernels import tree_attention as ta

    impl = resolve_impl(impl, "PackedTree")
    if impl == "reference":
        return ta.tree_attention_reference(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT)
    if impl == "xla":
        return ta.tree_attention_xla(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks)
    from pallas_kernels import tree_attention_pallas as tap

    kw.setdefault("interpret", interpret_mode())
    mesh = current_kernel_mesh()
    if mesh is not None:
        from zorro_jax.parallel.kernels import tree_attention_sharded

        return tree_attention_sharded(mesh, q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT,
                                      blocks, **kw)
    return tap.tree_attention(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks, **kw)


def shared_prefix_decode_attention(
    q_BxGxTxHxD, prefix_levels, k_suffix, v_suffix, q_start_BxG, impl=None, **kw
):
    """Decode/verify attention on the `SharedPrefixDecode` layout: a cascade of prefix levels
    ((k [B_l, P_l, K, D], v, len [B_l]) each, every level's KV read once per step for all rows
    under each entry) ⊕ each sample's own suffix ("pallas": only its written keys)."""
    from pallas_kernels import shared_prefix_decode as spd

    impl = resolve_impl(impl, "SharedPrefixDecode")
    if impl == "reference":
        return spd.shared_prefix_decode_reference(
            q_BxGxTxHxD, prefix_levels, k_suffix, v_suffix, q_start_BxG
        )
    if impl == "pallas":
        kw.setdefault("interpret", interpret_mode())
    mesh = current_kernel_mesh()
    if impl == "pallas" and mesh is not None:
        from zorro_jax.parallel import kernels

        kw["prompt_fn"] = functools.partial(kernels.shared_prefix_attention_sharded, mesh)
        kw["suffix_fn"] = functools.partial(kernels.suffix_attention_sharded, mesh)
    return spd.shared_prefix_decode_attention(
        q_BxGxTxHxD, prefix_levels, k_suffix, v_suffix, q_start_BxG, impl=impl, **kw
    )
