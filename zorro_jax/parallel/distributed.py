"""Multi-host runs: one process per host, wired from environment variables.

Every host runs the same program. `maybe_initialize_distributed()` calls
`jax.distributed.initialize` when ZORRO_COORDINATOR, ZORRO_NUM_PROCESSES and ZORRO_PROCESS_ID are
set (and does nothing when none is, so single-host runs need no configuration). After it,
`jax.devices()` lists the devices of every host and one mesh spans them all.

Data: each host loads and scores only its own slice of the prompts (`host_shard`), packs it into
a local batch, and `global_batch` stitches the local batches into arrays sharded over the
mesh's batch axes, with no host ever holding the global batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from zorro_jax.parallel.rules import batch_sharding, expand_shardings

ENV_COORDINATOR = "ZORRO_COORDINATOR"
ENV_NUM_PROCESSES = "ZORRO_NUM_PROCESSES"
ENV_PROCESS_ID = "ZORRO_PROCESS_ID"
# Optional: comma-separated local device ids this process owns (e.g. one process per GPU).
ENV_LOCAL_DEVICE_IDS = "ZORRO_LOCAL_DEVICE_IDS"
_REQUIRED = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-host JAX job (coordinator host:port, process count and id,
    local devices).
    """

    # host:port of process 0's coordination service, reachable from every host.
    coordinator_address: str
    num_processes: int
    process_id: int
    local_device_ids: tuple[int, ...] | None = None

    def __post_init__(self):
        if not self.coordinator_address or ":" not in self.coordinator_address:
            raise ValueError(f"{ENV_COORDINATOR} must be host:port, got {self.coordinator_address!r}")
        if self.num_processes < 1:
            raise ValueError(f"{ENV_NUM_PROCESSES} must be >= 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise ValueError(f"{ENV_PROCESS_ID} must be in [0, {self.num_processes}), got {self.process_id}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistributedConfig | None:
        """The config from ZORRO_* variables; None when none is set; an error when only some are."""
        env = os.environ if env is None else env
        present = [k for k in _REQUIRED if env.get(k)]
        if not present:
            return None
        missing = [k for k in _REQUIRED if not env.get(k)]
        if missing:
            raise ValueError(f"multi-host run needs {', '.join(_REQUIRED)}; missing {', '.join(missing)}")

        def as_int(key):
            try:
                return int(env[key])
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {env[key]!r}") from None

        ids = env.get(ENV_LOCAL_DEVICE_IDS)
        local = tuple(int(i) for i in ids.split(",")) if ids else None
        return cls(env[ENV_COORDINATOR], as_int(ENV_NUM_PROCESSES), as_int(ENV_PROCESS_ID), local)


def maybe_initialize_distributed(env: Mapping[str, str] | None = None, *, initialize=None) -> bool:
    """Join the multi-host run described by the ZORRO_* variables; returns whether it did.

    Call it first thing, before any jax computation. `initialize` replaces
    `jax.distributed.initialize` (tests).
    """
    cfg = DistributedConfig.from_env(env)
    if cfg is None:
        return False
    # CPU collectives across processes need gloo (the default has none); accelerators ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    init = jax.distributed.initialize if initialize is None else initialize
    init(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
         process_id=cfg.process_id, local_device_ids=cfg.local_device_ids)
    return True


def host_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of host `process_index`'s contiguous slice of n items (sizes differ by ≤ 1)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def host_shard(items: Sequence, process_index: int | None = None,
               process_count: int | None = None) -> list:
    """This host's contiguous slice of `items` (default: the running process's).

    Contiguous, in process order, so host i's rows are rows [start_i, stop_i) of the global
    batch: the order in which `global_batch` lays the local batches along B. For a batch that
    shards evenly, make len(items) a multiple of the number of batch shards.
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    start, stop = host_bounds(len(items), pi, pc)
    return list(items[start:stop])


def global_batch(local_tree, mesh: Mesh):
    """Global arrays, leading axis B over ("data", "fsdp"), from each host's local batch.

    Every host passes its own rows (same trailing shapes, same row count); the global B is the
    sum over hosts. On one host this is a plain device_put.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                        local_tree)


def is_leader() -> bool:
    """Whether this is process 0: the one that writes metrics, plots and exported models."""
    return jax.process_index() == 0


def place(tree, shardings):
    """Host arrays (the same values on every process) -> global arrays with `shardings` (a tree
    or a pytree prefix of it). Each process builds only its addressable shards, so this also
    works when the mesh spans processes, where `jax.device_put` of host data is not defined."""

    def put(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, expand_shardings(shardings, tree))


def to_host(tree):
    """NumPy copies of (possibly cross-process sharded) arrays, gathered onto every process."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


def allgather_host(values_Bx: np.ndarray, n: int) -> np.ndarray:
    """Every process's `host_bounds` slice of an n-row host array -> the whole array on every
    process (e.g. the rewards each host scored for its own prompts). On one process: the input."""
    pc = jax.process_count()
    if pc == 1:
        return np.asarray(values_Bx)
    from jax.experimental import multihost_utils

    longest = -(-n // pc)
    local = np.asarray(values_Bx)
    padded = np.zeros((longest, *local.shape[1:]), local.dtype)
    padded[: len(local)] = local
    every = np.asarray(multihost_utils.process_allgather(padded))  # [processes, longest, ...]
    return np.concatenate([every[p, : np.subtract(*host_bounds(n, p, pc)[::-1])] for p in range(pc)])
