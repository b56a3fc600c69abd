"""Attention dispatch: one entry per layout, keyed by backend ("reference" | "xla" | "pallas").

The model calls these through the layout code and never knows which kernel runs. A backend that
a layout does not support (or that cannot run on this platform) falls back to "xla" with a
warning, never a crash.

`impl` is a backend name or a `MeshKernels`: on a mesh, XLA cannot partition a Pallas call (it
would gather every operand onto each device), so the sharded steps pass the kernels wrapped to
run per device under `shard_map` (`zorro_jax.parallel.kernels.mesh_impl`: groups on (data,
fsdp), heads on tensor). The mesh reaches this layer as that argument, never as global state.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import ClassVar

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


@dataclasses.dataclass(frozen=True, eq=False)
class MeshKernels:
    """The "pallas" backend on a mesh: each kernel wrapped to run per device under `shard_map`
    (built by `zorro_jax.parallel.kernels.mesh_impl`, one object per mesh). It hashes by
    identity, so as a static argument it keys compiled programs by mesh."""

    name: ClassVar[str] = "pallas"
    mesh: object
    # Same signatures as pallas_kernels.tree_attention_pallas.tree_attention and
    # shared_prefix_decode.shared_prefix_attention / suffix_decode.suffix_attention_pallas.
    tree_attention: Callable
    prefix_attention: Callable
    suffix_attention: Callable


def impl_name(impl) -> str | None:
    """The backend name of an `impl` argument (a name, None or a `MeshKernels`)."""
    return impl.name if isinstance(impl, MeshKernels) else impl


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
    impl = impl_name(impl) or default_impl()
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
    if (impl_name(impl) or default_impl()) == "pallas":
        from pallas_kernels import tree_attention_pallas as tap

        return tap.default_token_blocks(heads_per_kv, head_dim, dtype)
    return XLA_TREE_TILES


def packed_tree_attention(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks, impl=None, **kw):
    """Attention on the `PackedTree` layout: key j visible to query i iff j ≤ i < subtree_end[j];
    `blocks` are the layout's block lists (the XLA and Pallas paths visit only listed tiles)."""
    from pallas_kernels import tree_attention as ta

    name = resolve_impl(impl, "PackedTree")
    if name == "reference":
        return ta.tree_attention_reference(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT)
    if name == "xla":
        return ta.tree_attention_xla(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks)
    from pallas_kernels import tree_attention_pallas as tap

    kw.setdefault("interpret", interpret_mode())
    fn = impl.tree_attention if isinstance(impl, MeshKernels) else tap.tree_attention
    return fn(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks, **kw)


def shared_prefix_decode_attention(
    q_BxGxTxHxD, prefix_levels, k_suffix, v_suffix, q_start_BxG, impl=None, **kw
):
    """Decode/verify attention on the `SharedPrefixDecode` layout: a cascade of prefix levels
    ((k [B_l, P_l, K, D], v, len [B_l]) each, every level's KV read once per step for all rows
    under each entry) ⊕ each sample's own suffix ("pallas": only its written keys)."""
    from pallas_kernels import shared_prefix_decode as spd

    name = resolve_impl(impl, "SharedPrefixDecode")
    if name == "reference":
        return spd.shared_prefix_decode_reference(
            q_BxGxTxHxD, prefix_levels, k_suffix, v_suffix, q_start_BxG
        )
    if name == "pallas":
        kw.setdefault("interpret", interpret_mode())
    if name == "pallas" and isinstance(impl, MeshKernels):
        kw["prompt_fn"] = impl.prefix_attention
        kw["suffix_fn"] = impl.suffix_attention
    return spd.shared_prefix_decode_attention(
        q_BxGxTxHxD, prefix_levels, k_suffix, v_suffix, q_start_BxG, impl=name, **kw
    )
