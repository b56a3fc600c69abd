"""Logical axis rules (one table per preset) and the shardings derived from them.

Model weights carry logical axis names in their `out_sharding` metadata ("vocab", "embed",
"heads", "kv_heads", "mlp", None). A preset maps each name to a mesh axis (or None: replicated):

- "training": FSDP × tensor parallelism. "embed" splits over "fsdp", the head / MLP / vocabulary
  axes over "tensor", so a device holds 1 / (fsdp · tensor) of every matrix and of the AdamW
  moments that mirror them.
- "sampling": tensor-parallel weights, data-parallel batch. "embed" is replicated, so a decode
  step never all-gathers weights over the batch axes; only "tensor" splits them.

Batches shard their leading unique-prompt axis B over ("data", "fsdp") in both presets, so a
group (a prompt and its G completions) never spans devices. A training `PackedTree` shards its
packed rows N there (a tree lives in one row); its loss view replicates (`packed_shardings`).
Inside the training forward the activations follow the rows too (`row_constraint`).
"""

from __future__ import annotations

import functools
import warnings

import jax
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from zorro_jax.layouts import PackedTree
from zorro_jax.parallel.mesh import BATCH_AXES

LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "mlp")

RULES: dict[str, dict[str, str | None]] = {
    "training": {"vocab": "tensor", "embed": "fsdp", "heads": "tensor", "kv_heads": "tensor",
                 "mlp": "tensor"},
    "sampling": {"vocab": "tensor", "embed": None, "heads": "tensor", "kv_heads": "tensor",
                 "mlp": "tensor"},
}
PRESETS = tuple(RULES)


def _rules(preset: str) -> dict[str, str | None]:
    if preset not in RULES:
        raise ValueError(f"unknown sharding preset {preset!r}; choose from {PRESETS}")
    return RULES[preset]


@functools.cache
def _warn_once(msg: str):
    warnings.warn(msg, stacklevel=3)


def logical_to_spec(names, shape, mesh: Mesh, preset: str) -> P:
    """PartitionSpec of one array from its logical axis names under a preset.

    A dimension that its mesh axis does not divide is replicated instead (with a warning): jit
    cannot shard it, and replicating one weight is better than refusing to run.
    """
    rules = _rules(preset)
    if names is None:
        return P()
    if len(names) != len(shape):
        raise ValueError(f"logical axes {names} do not match an array of shape {shape}")
    spec = []
    for name, dim in zip(names, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis {name!r} has no rule; known: {LOGICAL_AXES}")
        axis = rules[name]
        if axis is not None and dim % mesh.shape[axis]:
            _warn_once(f"dimension {dim} ({name!r}) is not divisible by mesh axis {axis!r} of size "
                       f"{mesh.shape[axis]}; replicating it")
            axis = None
        spec.append(axis)
    return P(*spec)


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def param_specs(state, mesh: Mesh, preset: str):
    """A tree like `state` (an nnx.State of Variables) holding each Variable's PartitionSpec."""

    def spec(v):
        if not _is_var(v):
            return P()
        return v.replace(logical_to_spec(v.get_metadata().get("out_sharding"), v.shape, mesh, preset))

    return jax.tree.map(spec, state, is_leaf=_is_var)


def param_shardings(state, mesh: Mesh, preset: str):
    """NamedSharding for every array of the model state (concrete or abstract) under a preset."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(state, mesh, preset),
                        is_leaf=lambda x: isinstance(x, P))


def abstract_params(state, shardings):
    """ShapeDtypeStructs carrying the shardings: for `.lower()` without allocating weights."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def shard_params(state, mesh: Mesh, preset: str):
    """Place the model state on the mesh under a preset (also reshards a sharded state)."""
    return jax.device_put(state, param_shardings(state, mesh, preset))


def reshard(state, mesh: Mesh, preset: str):
    """Move a state between presets, e.g. training (fsdp × tensor) -> sampling (tensor only)
    before generation. XLA moves only the slices each device lacks."""
    return shard_params(state, mesh, preset)


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that places a full copy on every device of `mesh`."""
    return NamedSharding(mesh, P())


def opt_state_shardings(optimizer: optax.GradientTransformation, params, params_shardings, mesh: Mesh):
    """Shardings of `optimizer.init(params)`: leaves that mirror a parameter (AdamW's mu, nu)
    take that parameter's sharding; everything else (step counts, scalars) is replicated."""
    abstract_state = jax.eval_shape(optimizer.init, params)
    return optax.tree_map_params(
        optimizer, lambda _, s: s, abstract_state, params_shardings,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (unique-prompt) axis over ("data", "fsdp"); the remaining axes replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_shardings(tree, mesh: Mesh):
    """Per-array shardings of a batch pytree (PackedTree, Dense, per-token arrays [B, ...]):
    every array of rank ≥ 1 splits its leading axis over data × fsdp, scalars are replicated."""
    return jax.tree.map(lambda x: batch_sharding(mesh) if x.ndim else replicated(mesh), tree)


def packed_shardings(mesh: Mesh):
    """Shardings of a training `PackedTree` (a pytree prefix of it): the per-row arrays (tokens,
    positions, subtree ends, predictors, block lists, per-row loss-token lists: leading axis N)
    split over data × fsdp, so a tree never spans devices; the loss view ([B, G, R] and flat [L]
    indices into the rows) replicates, because a micro-batch's group count and loss-token count
    need not divide the mesh and the view is a few integers per loss token."""
    rows, r = batch_sharding(mesh), replicated(mesh)
    return PackedTree(tokens_NxT=rows, positions_NxT=rows, subtree_end_NxT=rows, prev_NxT=rows,
                      blocks=rows, sample_row_BxG=r, sample_cols_BxGxR=r, sample_len_BxG=r,
                      loss_row_L=r, loss_col_L=r, loss_live_L=r, loss_index_BxGxR=r,
                      row_loss_col_NxM=rows, row_loss_live_NxM=rows, loss_slot_BxGxR=r)


def row_constraint(mesh: Mesh):
    """The activation constraint a training forward takes as `rows` (`model.forward.packed_hidden`):
    an array's leading packed-row axis over data × fsdp, its other axes left to XLA (so a head or
    MLP axis may still split over "tensor"). The model gets it as a callable and never sees an
    axis name."""

    def rows(x):
        spec = P(BATCH_AXES, *([P.UNCONSTRAINED] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return rows


def expand_shardings(shardings, tree):
    """A sharding per array of `tree` from `shardings`, a pytree prefix of it (e.g.
    `packed_shardings`, whose block lists are one sharding)."""
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), shardings, tree,
                        is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


def shard_batch(tree, mesh: Mesh):
    """Place a batch pytree on `mesh` with its leading (unique-prompt) axis split over data and
    fsdp.
    """
    return jax.device_put(tree, batch_shardings(tree, mesh))


def per_device_bytes(tree) -> dict:
    """{device: bytes of the tree's shards held there}, from the arrays' addressable shards."""
    out: dict = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def total_bytes(tree) -> int:
    """Bytes of all arrays in a pytree."""
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))
