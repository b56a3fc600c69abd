"""The Pallas attention kernels under `jax.shard_map`: packed rows / groups on ("data", "fsdp"),
heads on "tensor".

XLA cannot partition a Pallas call by itself (it would gather every operand onto each device), so
on a mesh the kernels run per device on their local block: the packed rows (training) or groups
(decoding) of that device's batch shard and its slice of the heads. Attention never mixes rows,
groups or heads (a tree lives in one row), so no communication is needed. With GQA the kv heads are split on "tensor" too: a contiguous slice of H/t query heads
uses exactly the matching slice of K/t kv heads when K % t == 0, which is therefore required.
Interpret mode (`interpret=True`) runs the same wrappers on CPU.

`check_vma=False`: the kernels declare their outputs with plain ShapeDtypeStructs (no
varying-mesh-axes annotation), which shard_map's type check rejects; every output here is
per-device data, exactly what the out_specs state.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from pallas_kernels import prefix_decode as pd
from pallas_kernels import shared_prefix_decode as spd
from pallas_kernels import suffix_decode as sd
from pallas_kernels import tree_attention_pallas as tap
from zorro_jax.attention import MeshKernels, default_impl, impl_name
from zorro_jax.parallel.mesh import BATCH_AXES, batch_shards

_DECODE_BLOCKS = spd.BlockSizes()
_SUFFIX_BLOCKS = sd.BlockSizes()


def prompt_spec() -> P:
    """[B or N, tokens, heads, D] blocks (packed rows' q / k / v, a decode prompt's K / V)."""
    return P(BATCH_AXES, None, "tensor", None)


def completion_spec() -> P:
    """[B, G, R, heads, D] blocks (completion queries / keys / values, decode queries, a decode
    suffix's K / V)."""
    return P(BATCH_AXES, None, None, "tensor", None)


def _check(mesh: Mesh, batch: int, heads: int, kv_heads: int):
    t = mesh.shape["tensor"]
    if heads % t or kv_heads % t:
        raise ValueError(
            f"query heads ({heads}) and kv heads ({kv_heads}) must both be divisible by the tensor "
            f"axis ({t}) to shard the attention kernels")
    n = batch_shards(mesh)
    if batch % n:
        raise ValueError(f"batch of {batch} rows / groups is not divisible by data × fsdp = {n}")


def shared_prefix_attention_sharded(mesh: Mesh, q_BxGxTxHxD, k_prompt_BxPxKxD, v_prompt_BxPxKxD,
                                    prompt_len, key_start=None, *, sm_scale=None,
                                    block_sizes: spd.BlockSizes = _DECODE_BLOCKS,
                                    interpret: bool = False, out_dtype=None):
    """`pallas_kernels.shared_prefix_attention` (one prefix level's part of decode attention) per
    device: B is that level's cache rows, each with the stacked queries of the rows under it and
    their key windows (`prefix_decode.key_windows`: prompt_len [B] or [B, G], key_start None or [B, G]).

    Returns (o [B, G, T, H, D], lse [B, G, T, H]), sharded on B and H like the queries; merge
    with the other parts (`lse_merge.merge_attention`) is elementwise and needs no collective.
    """
    b, g = q_BxGxTxHxD.shape[:2]
    _check(mesh, b, q_BxGxTxHxD.shape[3], k_prompt_BxPxKxD.shape[2])
    start_BxG, len_BxG = pd.key_windows(prompt_len, key_start, b, g)
    kernel = functools.partial(spd.shared_prefix_attention, sm_scale=sm_scale,
                               block_sizes=block_sizes, interpret=interpret, out_dtype=out_dtype)
    pp, cp, rows = prompt_spec(), completion_spec(), P(BATCH_AXES, None)
    fn = jax.shard_map(kernel, mesh=mesh, in_specs=(cp, pp, pp, rows, rows),
                       out_specs=(cp, P(BATCH_AXES, None, None, "tensor")), check_vma=False)
    return fn(q_BxGxTxHxD, k_prompt_BxPxKxD, v_prompt_BxPxKxD, len_BxG, start_BxG)


def suffix_attention_sharded(mesh: Mesh, q_BxGxTxHxD, k_suffix_BxGxSxKxD, v_suffix_BxGxSxKxD,
                             q_start_BxG, *, sm_scale=None, block_sizes: sd.BlockSizes = _SUFFIX_BLOCKS,
                             interpret: bool = False, out_dtype=None):
    """`pallas_kernels.suffix_decode.suffix_attention_pallas` (decode attention's suffix part)
    per device: rows on ("data", "fsdp"), heads on "tensor". Returns (o, lse) sharded like q."""
    _check(mesh, q_BxGxTxHxD.shape[0], q_BxGxTxHxD.shape[3], k_suffix_BxGxSxKxD.shape[3])
    kernel = functools.partial(sd.suffix_attention_pallas, sm_scale=sm_scale,
                               block_sizes=block_sizes, interpret=interpret, out_dtype=out_dtype)
    cp = completion_spec()
    fn = jax.shard_map(kernel, mesh=mesh, in_specs=(cp, cp, cp, P(BATCH_AXES, None)),
                       out_specs=(cp, P(BATCH_AXES, None, None, "tensor")), check_vma=False)
    return fn(q_BxGxTxHxD, k_suffix_BxGxSxKxD, v_suffix_BxGxSxKxD, q_start_BxG)


def tree_attention_sharded(mesh: Mesh, q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks,
                           *, sm_scale=None, block_sizes: tap.BlockSizes | None = None,
                           interpret: bool = False):
    """`pallas_kernels.tree_attention_pallas.tree_attention` (forward and custom-vjp backward)
    per device: packed rows on ("data", "fsdp"), heads on "tensor". A tree lives in one row, so
    a shared prompt's dK/dV sum over its descendants stays local.
    """
    _check(mesh, q_NxTxHxD.shape[0], q_NxTxHxD.shape[2], k_NxTxKxD.shape[2])
    if sm_scale is None:
        sm_scale = q_NxTxHxD.shape[-1] ** -0.5
    kernel = functools.partial(tap.tree_attention, sm_scale=sm_scale,
                               block_sizes=block_sizes or tap.BlockSizes(), interpret=interpret)
    heads = prompt_spec()  # [N, T, heads, D]
    rows = jax.tree.map(lambda x: P(BATCH_AXES, *(None,) * (x.ndim - 1)), blocks)
    fn = jax.shard_map(kernel, mesh=mesh,
                       in_specs=(heads, heads, heads, P(BATCH_AXES, None), rows),
                       out_specs=heads, check_vma=False)
    return fn(q_NxTxHxD, k_NxTxKxD, v_NxTxKxD, subtree_end_NxT, blocks)


@functools.cache
def _mesh_kernels(mesh: Mesh) -> MeshKernels:
    return MeshKernels(mesh, functools.partial(tree_attention_sharded, mesh),
                       functools.partial(shared_prefix_attention_sharded, mesh),
                       functools.partial(suffix_attention_sharded, mesh))


def mesh_impl(impl, mesh: Mesh | None):
    """The `impl` argument for attention traced for `mesh`: "pallas" (asked for, or the platform
    default) becomes the per-device kernels of this module, one `MeshKernels` per mesh so that
    compiled programs are keyed by it; any other backend, or no mesh / one device, is unchanged.
    """
    if mesh is None or mesh.size == 1 or (impl_name(impl) or default_impl()) != "pallas":
        return impl
    return _mesh_kernels(mesh)
