"""Device meshes with axes ("data", "fsdp", "tensor") and the checks a sharded run needs up front.

`MeshConfig` names the three axis sizes (one may be -1: inferred from the device count) and
builds the mesh with `jax.make_mesh`. The checks turn the errors XLA would raise deep inside
compilation (a head axis or batch that does not divide) into messages that say what to change.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from jax.sharding import AxisType, Mesh

from zorro_jax.model.config import ModelConfig

AXES = ("data", "fsdp", "tensor")
# Batches shard their leading (unique-prompt) axis over both of these; a group never spans devices.
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the (data, fsdp, tensor) mesh axes; at most one may be -1 (the rest of the devices)."""

    # Pure data parallelism: replicas of the (fsdp × tensor)-sharded model.
    data: int = 1
    # Fully sharded data parallelism: batch and (in the training preset) weights split here.
    fsdp: int = -1
    # Tensor parallelism: heads, kv heads, MLP width and vocabulary split here.
    tensor: int = 1

    def __post_init__(self):
        sizes = self.sizes
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh axis sizes must be positive or -1 (inferred), got {self._show(sizes)}")
        if sizes.count(-1) > 1:
            raise ValueError(f"at most one mesh axis may be -1 (inferred), got {self._show(sizes)}")

    @property
    def single_device(self) -> bool:
        """1 × 1 × 1: no mesh (a run's default: one device, the unsharded steps)."""
        return self.sizes == (1, 1, 1)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(data, fsdp, tensor) as configured (-1 not yet resolved)."""
        return (self.data, self.fsdp, self.tensor)

    @staticmethod
    def _show(sizes) -> str:
        return ", ".join(f"{a}={s}" for a, s in zip(AXES, sizes))

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete axis sizes for `num_devices` devices (the -1 axis takes what is left)."""
        sizes = list(self.sizes)
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(
                    f"cannot infer a mesh axis: {num_devices} devices are not divisible by the "
                    f"product {known} of the given axes ({self._show(sizes)})")
            sizes[sizes.index(-1)] = num_devices // known
        elif known != num_devices:
            raise ValueError(
                f"mesh {self._show(sizes)} has {known} devices but {num_devices} are available; "
                "make data × fsdp × tensor equal the device count (or set one axis to -1)")
        return tuple(sizes)

    def make(self, devices=None) -> Mesh:
        """The mesh over `devices` (default: all devices of every process)."""
        devices = list(jax.devices() if devices is None else devices)
        sizes = self.resolve(len(devices))
        # Auto axes: shardings of intermediates are left to XLA's propagation (GSPMD); only the
        # step inputs and outputs are pinned by the jitted steps.
        return jax.make_mesh(sizes, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def axis_size(mesh: Mesh, *axes: str) -> int:
    """Product of the sizes of the named mesh axes."""
    return math.prod(mesh.shape[a] for a in axes)


def batch_shards(mesh: Mesh) -> int:
    """How many devices the unique-prompt axis B is split over (data × fsdp)."""
    return axis_size(mesh, *BATCH_AXES)


def check_model(mesh: Mesh, cfg: ModelConfig) -> None:
    """Heads and kv heads must split evenly over "tensor" (a kv head and its query heads stay on
    one device, which GQA and the shard_mapped kernels rely on)."""
    t = mesh.shape["tensor"]
    problems = []
    if cfg.num_attention_heads % t:
        problems.append(f"num_attention_heads={cfg.num_attention_heads}")
    if cfg.num_key_value_heads % t:
        problems.append(f"num_key_value_heads={cfg.num_key_value_heads}")
    if problems:
        raise ValueError(
            f"{' and '.join(problems)} not divisible by the tensor axis size {t}; choose a tensor "
            f"size that divides both (e.g. one dividing {math.gcd(cfg.num_attention_heads, cfg.num_key_value_heads)})")


def check_batch(mesh: Mesh, batch_size: int) -> None:
    """The batch axis (packed rows, or prompt groups when decoding) must split evenly over
    data × fsdp."""
    n = batch_shards(mesh)
    if batch_size % n:
        raise ValueError(
            f"batch of {batch_size} rows / groups is not divisible by data × fsdp = "
            f"{mesh.shape['data']} × {mesh.shape['fsdp']} = {n}; use a multiple of {n} "
            "(PackingConfig.rows_per_micro_batch for packed rows)")
