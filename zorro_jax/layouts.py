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
        """Boolean [N, T]: True at each row's real tokens."""
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


class PromptGroups(NamedTuple):
    """B unique prompts [B, P] with G completions each [B, G, R]; all right-padded.

    Prompt b's true length is prompt_len[b] ≥ 1; completion (b, g) has comp_len[b, g] ≤ R tokens
    (EOS included). Completion positions continue at prompt_len[b], not at the padded P.
    """

    prompt_BxP: jnp.ndarray
    prompt_len_B: jnp.ndarray
    completions_BxGxR: jnp.ndarray
    comp_len_BxG: jnp.ndarray

    @property
    def shape(self):
        """(B, P, G, R): unique prompts, padded prompt length, samples per prompt, padded completion
        length.
        """
        b, g, r = self.completions_BxGxR.shape
        return b, self.prompt_BxP.shape[1], g, r

    def completion_mask(self):
        """Boolean [B, G, R]: True at each completion's real tokens."""
        r = self.completions_BxGxR.shape[2]
        return jnp.arange(r)[None, None, :] < self.comp_len_BxG[:, :, None]

    def to_dense(self) -> Dense:
        """The replicated baseline: row b·G+g = prompt_b[:len] ++ completion_bg, padded to P+R."""
        b, p, g, r = self.shape
        t = jnp.arange(p + r)[None, None, :]
        plen = self.prompt_len_B[:, None, None]
        from_prompt = jnp.take_along_axis(
            self.prompt_BxP[:, None, :], jnp.broadcast_to(jnp.minimum(t, p - 1), (b, 1, p + r)), axis=2
        )
        comp_idx = jnp.clip(t - plen, 0, r - 1)
        from_comp = jnp.take_along_axis(
            self.completions_BxGxR, jnp.broadcast_to(comp_idx, (b, g, p + r)), axis=2
        )
        tokens = jnp.where(t < plen, jnp.broadcast_to(from_prompt, (b, g, p + r)), from_comp)
        lengths = self.prompt_len_B[:, None] + self.comp_len_BxG
        return Dense(tokens.reshape(b * g, p + r), lengths.reshape(b * g))

    def from_dense_next_token(self, values_NxT1):
        """Per-token values of the Dense batch (position t predicts token t+1, [B·G, P+R-1]) ->
        the values of each completion token [B, G, R]."""
        b, _p, g, r = self.shape
        idx = self.prompt_len_B[:, None, None] - 1 + jnp.arange(r)[None, None, :]
        vals = values_NxT1.reshape(b, g, -1)
        return jnp.take_along_axis(vals, jnp.broadcast_to(idx, (b, g, r)), axis=2)


DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def bucket(n: int, buckets=DEFAULT_BUCKETS) -> int:
    """The smallest bucket ≥ n, so jit compiles one program per bucket rather than per length."""
    for size in buckets:
        if size >= n:
            return size
    raise ValueError(f"length {n} exceeds the largest bucket {buckets[-1]}")


def pack_prompt_groups(groups, pad_id: int = 0, *, prompt_buckets=DEFAULT_BUCKETS,
                       completion_buckets=DEFAULT_BUCKETS, num_groups: int | None = None) -> PromptGroups:
    """Host-side packing of [(prompt ids, [completion ids] * G), ...] into a bucketed PromptGroups.

    num_groups pads the batch with copies of the last group (zero-length completions) so B is static.
    """
    if not groups:
        raise ValueError("pack_prompt_groups needs at least one group")
    g = len(groups[0][1])
    if g == 0 or any(len(c) != g for _, c in groups):
        raise ValueError("every prompt needs the same, non-zero number of completions")
    if any(len(p) == 0 for p, _ in groups):
        raise ValueError("every prompt needs at least one token")
    b = num_groups or len(groups)
    if b < len(groups):
        raise ValueError(f"num_groups {b} < {len(groups)} groups")
    p = bucket(max(len(pr) for pr, _ in groups), prompt_buckets)
    r = bucket(max(1, max(len(c) for _, cs in groups for c in cs)), completion_buckets)
    prompt = np.full((b, p), pad_id, np.int32)
    plen = np.ones((b,), np.int32)
    comp = np.full((b, g, r), pad_id, np.int32)
    clen = np.zeros((b, g), np.int32)
    for i in range(b):
        pr, cs = groups[min(i, len(groups) - 1)]
        prompt[i, : len(pr)] = pr
        plen[i] = len(pr)
        if i >= len(groups):
            continue
        for j, c in enumerate(cs):
            comp[i, j, : len(c)] = c
            clen[i, j] = len(c)
    return PromptGroups(jnp.asarray(prompt), jnp.asarray(plen), jnp.asarray(comp), jnp.asarray(clen))
