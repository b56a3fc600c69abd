"""Token layouts the model understands (see DESIGN.md, "Layouts").

`Dense` is the replicated baseline every other layout must equal. Layouts are pytrees of arrays
(jit-friendly); host-side packing lives beside them in plain NumPy.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Dense(NamedTuple):
    """Right-padded rows: tokens [N, T], true lengths [N]."""

    tokens_NxT: jnp.ndarray
    lengths_N: jnp.ndarray

    def mask(self):
        return jnp.arange(self.tokens_NxT.shape[1])[None, :] < self.lengths_N[:, None]


def pack_dense(rows: list[list[int]], pad_id: int = 0, length: int | None = None) -> Dense:
    """Host-side: right-pad a list of token lists to [N, length or max len]."""
    if not rows:
        raise ValueError("pack_dense needs at least one row")
    t = max(len(r) for r in rows) if length is None else length
    if any(len(r) > t for r in rows):
        raise ValueError(f"a row is longer than the requested length {t}")
    toks = np.full((len(rows), t), pad_id, np.int32)
    for i, r in enumerate(rows):
        toks[i, : len(r)] = r
    return Dense(jnp.asarray(toks), jnp.asarray([len(r) for r in rows], jnp.int32))
