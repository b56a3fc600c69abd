"""Host-side block-sparsity metadata for attention on packed prefix trees (NumPy, backend-neutral).

A packed row holds whole trees of segments in depth-first order, so the subtree of a segment is a
contiguous token range. Each key token j carries `subtree_end[j]`: one past the last token of the
subtree of j's segment. The tree attention rule — a token sees every token of its ancestor
segments and the earlier tokens of its own segment — is then two comparisons per pair:

    key j is visible to query i  ⇔  j ≤ i < subtree_end[j]

Every token sees itself (subtree_end[j] > j), so no query row is empty. Padding tokens at a row's
end are singletons (subtree_end[j] = j + 1): they see only themselves and nobody sees them.

For tiles of `block_q` queries and `block_k` keys, `build_tree_blocks` lists, for each query block,
the key blocks holding at least one visible pair (ascending); the transposed lists (for each key
block, the query blocks that see it) for a dK/dV pass; and the same pairs as one flat list per
row, for a path that batches over pairs.
The visible queries of a key block form one contiguous range [first key, max subtree_end), because
each key's range starts at the key itself, so both lists follow from per-block minima and maxima.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class TreeBlocks(NamedTuple):
    """Block lists of a batch of packed rows (all int32 / bool NumPy or jnp arrays).

    M is the longest list (static; entries at or past a list's count repeat its last valid index,
    so a kernel may prefetch them).
    """

    kv_index_NxQxM: np.ndarray  # key blocks visited by query block q, ascending
    kv_count_NxQ: np.ndarray
    q_index_NxKxM: np.ndarray  # query blocks that see key block k, ascending
    q_count_NxK: np.ndarray
    # The same visible block pairs as one flat list per row (ordered by query block, then key
    # block), P = the longest row's count rounded up; entries past a row's count are dead
    # (pair_live False, indices 0). The XLA path computes exactly these pairs.
    pair_q_NxP: np.ndarray
    pair_k_NxP: np.ndarray
    pair_live_NxP: np.ndarray

    @property
    def num_blocks(self) -> tuple[int, int]:
        """(query blocks, key blocks) per row."""
        return self.kv_count_NxQ.shape[1], self.q_count_NxK.shape[1]


def check_subtree_end(subtree_end_NxT: np.ndarray) -> np.ndarray:
    """Validate and return `subtree_end` as int32 [N, T]: j < end[j] ≤ T for every token."""
    end = np.asarray(subtree_end_NxT)
    if end.ndim != 2:
        raise ValueError(f"subtree_end must be [N, T], got shape {end.shape}")
    t = end.shape[1]
    j = np.arange(t)[None, :]
    if np.any(end <= j) or np.any(end > t):
        bad = np.argwhere((end <= j) | (end > t))[0]
        raise ValueError(
            f"subtree_end[{bad[0]}, {bad[1]}] = {end[tuple(bad)]} is not in ({bad[1]}, {t}]"
        )
    return end.astype(np.int32)


def _lists(needed_NxAxB: np.ndarray, width_multiple: int):
    """Ascending index lists of the True entries of needed along the last axis."""
    count_NxA = needed_NxAxB.sum(-1).astype(np.int32)
    m = list_bucket(max(1, int(count_NxA.max())))
    m = -(-m // width_multiple) * width_multiple
    order = np.argsort(~needed_NxAxB, axis=-1, kind="stable")
    if order.shape[-1] < m:
        order = np.concatenate(
            [order, np.repeat(order[..., -1:], m - order.shape[-1], axis=-1)], axis=-1
        )
    order = order[..., :m]
    last = np.take_along_axis(order, np.maximum(count_NxA - 1, 0)[..., None], axis=-1)
    live = np.arange(m)[None, None, :] < count_NxA[..., None]
    return np.where(live, order, last).astype(np.int32), count_NxA


def build_tree_blocks(
    subtree_end_NxT, block_q: int, block_k: int, *, width_multiple: int = 1
) -> TreeBlocks:
    """Block lists for tiles of block_q queries × block_k keys (T must divide into both).

    The list width M is rounded up by `list_bucket` and the flat pair count P, which the XLA path
    computes dead or alive, by the finer `coarse_bucket` (fewer distinct shapes, so fewer
    compilations); width_multiple rounds M further.
    """
    end = check_subtree_end(subtree_end_NxT)
    n, t = end.shape
    if block_q < 1 or block_k < 1 or t % block_q or t % block_k:
        raise ValueError(f"row length {t} must be a multiple of block_q {block_q} and block_k {block_k}")
    if width_multiple < 1:
        raise ValueError(f"width_multiple must be >= 1, got {width_multiple}")
    end_NxKxb = end.reshape(n, t // block_k, block_k)
    k_first_K = np.arange(t // block_k) * block_k
    end_max_NxK = end_NxKxb.max(-1)
    q_first_Q = np.arange(t // block_q) * block_q
    q_last_Q = q_first_Q + block_q - 1
    # [N, Q, K]: the key block's visible query range [k_first, end_max) meets the query block.
    needed = (q_last_Q[None, :, None] >= k_first_K[None, None, :]) & (
        q_first_Q[None, :, None] < end_max_NxK[:, None, :]
    )
    return TreeBlocks(*_lists(needed, width_multiple),
                      *_lists(needed.transpose(0, 2, 1), width_multiple), *_pairs(needed))


def coarse_bucket(n: int) -> int:
    """n rounded up to a multiple of 2^(bits(n) - 3): few distinct sizes, at most 25% above n."""
    step = 1 << max(0, n.bit_length() - 3)
    return -(-n // step) * step


def list_bucket(n: int) -> int:
    """Sizes of lists whose dead entries cost nothing (block lists, the loss-view width): n
    rounded up to a multiple of 2^(bits(n) - 2) (at most 50% above n, two sizes an octave), so a
    batch's shape is decided by few free sizes and jit compiles few programs per row length."""
    step = 1 << max(0, n.bit_length() - 2)
    return -(-n // step) * step


def _pairs(needed_NxQxK: np.ndarray):
    """Flat per-row lists of the needed (query block, key block) pairs, padded to a common P."""
    n, nq, nk = needed_NxQxK.shape
    count_N = needed_NxQxK.reshape(n, -1).sum(-1)
    p = coarse_bucket(max(1, int(count_N.max())))
    flat_NxQK = needed_NxQxK.reshape(n, nq * nk)
    order = np.argsort(~flat_NxQK, axis=-1, kind="stable")
    if order.shape[1] < p:
        order = np.concatenate([order, np.zeros((n, p - order.shape[1]), order.dtype)], axis=1)
    live = np.arange(p)[None, :] < count_N[:, None]
    order = np.where(live, order[:, :p], 0)
    return (order // nk).astype(np.int32), (order % nk).astype(np.int32), live


def visible_mask(subtree_end_NxT):
    """Dense [N, T, T] boolean mask (query i, key j) of the tree rule; works on NumPy and jnp."""
    t = subtree_end_NxT.shape[1]
    i = np.arange(t)[:, None]
    j = np.arange(t)[None, :]
    return (j <= i)[None] & (i[None] < subtree_end_NxT[:, None, :])
