"""A resumable training phase: step function + Orbax checkpoints + metrics.jsonl + tqdm.

A phase (SFT, GRPO) is a sequence of steps `state, row = step_fn(step, state)` where state is a
pytree (params, optimiser state) and everything random derives from the step number. The phase
saves every N steps and at its end; re-running the same command restores the newest checkpoint,
drops metric rows logged after it, and continues — ending with the same metrics as an
uninterrupted run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zorro_jax.checkpoints.train_state import TrainCheckpointer
from zorro_jax.rl.report import MetricsLog


def drop_rows(log: MetricsLog, phases: set[str], after_step: int):
    """Remove rows of `phases` logged after `after_step` (they came from steps a resume will redo)."""
    rows = [r for r in log.rows() if not (r.get("phase") in phases and r.get("step", 0) > after_step)]
    log.path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def drop_phases(log: MetricsLog, phases: set[str]):
    """Remove every row of `phases` from the log."""
    rows = [r for r in log.rows() if r.get("phase") not in phases]
    log.path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_phase(name: str, steps: int, step_fn: Callable[[int, Any], tuple[Any, dict]], state: Any,
              run_dir: str | Path, log: MetricsLog, *, checkpoint_every: int, keep: int = 2,
              after_restore: Callable[[Any], None] | None = None, later_phases: tuple[str, ...] = (),
              show: Callable[[dict], dict] | None = None, quiet: bool = False) -> Any:
    """Run steps 1..steps of a phase, resuming from its newest checkpoint. Returns the final state."""
    ckpt = TrainCheckpointer(Path(run_dir) / f"ckpt_{name}", every=checkpoint_every, keep=keep)
    start = 0
    restored = ckpt.restore_latest(state)
    if restored is not None:
        start, state, host = restored
        if host.get("phase") != name:
            raise RuntimeError(f"checkpoint in {ckpt.folder} belongs to phase {host.get('phase')!r}")
        if after_restore:
            after_restore(state)
        print(f"[{name}] resumed from step {start} ({ckpt.folder})", flush=True)
    drop_rows(log, {name}, start)
    if start >= steps:
        ckpt.close()
        return state
    # This phase has work left, so whatever later phases logged came from stale weights.
    drop_phases(log, set(later_phases))
    bar = tqdm(range(start + 1, steps + 1), desc=name, initial=start, total=steps, disable=quiet,
               dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        t0 = time.perf_counter()
        state, row = step_fn(step, state)
        row = {"phase": name, "step": step, **row, "seconds": time.perf_counter() - t0}
        log.append(row)
        if show:
            bar.set_postfix(show(row), refresh=False)
        ckpt.maybe_save(step, state, {"phase": name, "step": step}, force=step == steps)
    bar.close()
    ckpt.close()
    return state
