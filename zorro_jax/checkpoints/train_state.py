"""Train-state save/restore with Orbax: params, optimiser state, step and a JSON of host state
(RNG seed, data position, anything the loop needs to resume exactly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class TrainCheckpointer:
    """Saves every `every` steps, keeps the newest `keep`; `restore_latest` resumes a run."""

    def __init__(self, folder: str | Path, every: int, keep: int = 2):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every/keep must be >= 1, got {every}/{keep}")
        self.every = every
        self.folder = Path(folder).resolve()
        self.manager = ocp.CheckpointManager(
            self.folder,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def maybe_save(self, step: int, state: Any, host: dict, force: bool = False) -> bool:
        """Save (state, host metadata) at `step` when it is a multiple of `every` or `force`; blocks
        until written. Returns whether it saved.
        """
        if not force and step % self.every:
            return False
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)))
        self.manager.wait_until_finished()
        return True

    def latest_step(self) -> int | None:
        """The newest saved step, or None when the folder holds no checkpoint."""
        return self.manager.latest_step()

    def restore_latest(self, like_state: Any):
        """(step, state, host) from the newest checkpoint, or None when there is none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()))
        return step, out["state"], out["host"]

    def close(self):
        """Release the checkpoint manager (waits for pending writes)."""
        self.manager.close()
