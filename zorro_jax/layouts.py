"""Token layouts the model understands (see DESIGN.md, "Layouts").

`Dense` is the replicated baseline every other layout must equal. `PackedTree` packs whole prefix
trees (a prompt once, then its G completions; deeper trees share more) into rows of T tokens with
no padding but at a row's end, plus a [B, G, R] view of the loss samples; `pack_trees` and
`pack_groups_balanced` build it from `Tree`s (`group_tree`, `replicated_trees`,
`shared_root_tree` for depths 2, 1 and 3). Layouts are pytrees of arrays (jit-friendly);
host-side packing lives beside them in plain NumPy, vectorised over tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from pallas_kernels.tree_blocks import TreeBlocks, build_tree_blocks, coarse_bucket, list_bucket


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


def bucket(n: int, buckets: Sequence[int] = ()) -> int:
    """The length a batch of longest length n is padded to, so jit compiles one program per
    bucket rather than per length: the smallest of `buckets` ≥ n, or without buckets the next
    power of two ≥ max(n, 16) (a multiple of the decode kernel's key block from 64 on, so a
    prompt cache allocated at this length is never re-padded). Packed training rows use
    `coarse_bucket` instead (finer steps: row padding is computed work)."""
    if buckets:
        for size in buckets:
            if size >= n:
                return size
        raise ValueError(f"length {n} exceeds the largest bucket {buckets[-1]}")
    return max(16, 1 << max(0, n - 1).bit_length())


class PackedTree(NamedTuple):
    """N rows of T packed tokens holding whole prefix trees, and the loss view of their samples.

    Per token: `positions` (RoPE: total length of the ancestor segments + index in the segment),
    `subtree_end` (key j is visible to query i iff j ≤ i < subtree_end[j]) and `prev`, the column
    of the token whose output predicts it (t-1 inside a segment, the last token of the parent
    segment for a segment's first token, -1 for a root's first token and for padding). Padding
    at a row's end: `pad_id`, position 0, singleton subtree. `blocks` are the attention block
    lists (`build_tree_blocks` with the packing's tiles (query tokens, key tokens)).

    Loss view: sample (b, g) lives in row sample_row[b, g]; its r-th loss token is at column
    sample_cols[b, g, r] for r < sample_len[b, g]. Columns past the length repeat the sample's
    last column — its last loss token, or for an empty sample the token that would predict its
    first one — so sample_cols[..., -1] always ends the sample's root path.
    """

    tokens_NxT: jnp.ndarray
    positions_NxT: jnp.ndarray
    subtree_end_NxT: jnp.ndarray
    prev_NxT: jnp.ndarray
    blocks: TreeBlocks
    sample_row_BxG: jnp.ndarray
    sample_cols_BxGxR: jnp.ndarray
    sample_len_BxG: jnp.ndarray
    # Every loss token once, flat (L = Σ sample lengths rounded up to a coarse bucket; dead
    # entries point at (0, 0)): what the LM head computes, instead of the padded [B, G, R] view.
    loss_row_L: jnp.ndarray
    loss_col_L: jnp.ndarray
    loss_live_L: jnp.ndarray
    # For each loss-view slot (b, g, r < sample_len) its entry in the flat list (0 past a length).
    loss_index_BxGxR: jnp.ndarray
    # The same loss tokens listed per row: row n's m-th loss token is at column row_loss_col[n, m]
    # for live entries (M = the fullest row's count, coarse-bucketed; dead entries point at column
    # 0). Sharded with the rows, it lets each device gather its own rows' predictors and run the
    # LM head on its own loss tokens only (`forward.packed_logprobs` with a row constraint).
    row_loss_col_NxM: jnp.ndarray
    row_loss_live_NxM: jnp.ndarray
    # For each loss-view slot its entry m in its row's list, row_loss_col[sample_row[b, g], m]
    # (0 past a length).
    loss_slot_BxGxR: jnp.ndarray

    @property
    def shape(self):
        """(N, T, B, G, R): rows, row length, groups, samples per group, loss-view width."""
        return (*self.tokens_NxT.shape, *self.sample_cols_BxGxR.shape)

    def sample_mask(self):
        """Boolean [B, G, R]: True at each sample's real loss tokens."""
        r = self.sample_cols_BxGxR.shape[2]
        return jnp.arange(r)[None, None, :] < self.sample_len_BxG[:, :, None]

    def gather_samples(self, values_NxT):
        """Per-token values of the packed batch [N, T, ...] -> the loss view [B, G, R, ...]."""
        return values_NxT[self.sample_row_BxG[:, :, None], self.sample_cols_BxGxR]

    def loss_predictors(self):
        """(rows [L], columns [L]) of the hidden states that predict the flat loss tokens."""
        pred_L = self.prev_NxT[self.loss_row_L, self.loss_col_L]
        return self.loss_row_L, jnp.maximum(pred_L, 0)

    def loss_targets(self):
        """Token ids [L] of the flat loss tokens."""
        return self.tokens_NxT[self.loss_row_L, self.loss_col_L]

    def row_loss_predictors(self):
        """Columns [N, M] of the hidden states that predict each row's listed loss tokens."""
        return jnp.maximum(jnp.take_along_axis(self.prev_NxT, self.row_loss_col_NxM, axis=1), 0)

    def row_loss_targets(self):
        """Token ids [N, M] of each row's listed loss tokens."""
        return jnp.take_along_axis(self.tokens_NxT, self.row_loss_col_NxM, axis=1)

    def to_dense(self, pad_id: int = 0) -> Dense:
        """Host-side test oracle: row b·G+g is sample (b, g)'s root path (its ancestors' tokens
        ++ its segment up to its last loss token), right-padded to the longest path."""
        row_BxG = np.asarray(self.sample_row_BxG)
        end_BxG = np.asarray(self.sample_cols_BxGxR)[:, :, -1]
        toks_BxGxT = np.asarray(self.tokens_NxT)[row_BxG]
        pos_BxGxT = np.asarray(self.positions_NxT)[row_BxG]
        j_T = np.arange(toks_BxGxT.shape[2])
        on_path = (j_T <= end_BxG[..., None]) & (
            end_BxG[..., None] < np.asarray(self.subtree_end_NxT)[row_BxG]
        )
        len_BxG = np.take_along_axis(pos_BxGxT, end_BxG[..., None], axis=2)[..., 0] + 1
        b, g = end_BxG.shape
        dense = np.full((b * g, int(len_BxG.max())), pad_id, np.int32)
        ib, ig, ij = np.nonzero(on_path)
        dense[ib * g + ig, pos_BxGxT[ib, ig, ij]] = toks_BxGxT[ib, ig, ij]
        return Dense(jnp.asarray(dense), jnp.asarray(len_BxG.reshape(-1), jnp.int32))

    def from_dense_next_token(self, values_NxT1):
        """Next-token values of `to_dense()`'s batch (position t predicts t+1, [B·G, W-1]) -> the
        loss view [B, G, R]."""
        b, g, _ = self.sample_cols_BxGxR.shape
        pos_BxGxR = self.positions_NxT[self.sample_row_BxG[:, :, None], self.sample_cols_BxGxR]
        vals = values_NxT1.reshape(b, g, -1)
        return jnp.take_along_axis(vals, jnp.clip(pos_BxGxR - 1, 0, vals.shape[2] - 1), axis=2)


class Leaf(NamedTuple):
    """A loss sample of a `Tree`: tokens segments[segment][start:] are sample g of group b.

    start > 0 puts the loss on a segment's tail (the depth-1 baseline: prompt ++ completion as
    one segment). A leaf with no tokens (an empty completion) is allowed and occupies nothing.
    """

    segment: int
    b: int
    g: int
    start: int = 0


class Tree(NamedTuple):
    """A unit of packing, never split across rows: token segments in depth-first order.

    parents[s] is the index (in this tree) of segment s's parent — an earlier segment on the
    current depth-first path — or -1 for a root. Several roots make a forest that still packs as
    one unit. leaves name the loss samples.
    """

    segments: Sequence[Sequence[int]]
    parents: Sequence[int]
    leaves: Sequence[Leaf]


def group_tree(prompt, completions, b: int) -> Tree:
    """Depth 2: the prompt as root and completion g as leaf (b, g) under it."""
    return Tree([prompt, *completions], [-1] + [0] * len(completions),
                [Leaf(1 + g, b, g) for g in range(len(completions))])


def replicated_trees(prompt, completions, b: int) -> list[Tree]:
    """Depth 1 (the packed naive baseline): one tree per sample, the root prompt ++ completion_g
    with the loss on the completion part; the G trees pack independently."""
    return [Tree([np.concatenate([np.asarray(prompt, np.int32), np.asarray(c, np.int32)])], [-1],
                 [Leaf(0, b, g, len(prompt))]) for g, c in enumerate(completions)]


def shared_root_tree(root, groups, first_b: int) -> Tree:
    """Depth 3: a shared root (a database schema), then for each (question, completions) of
    groups a question segment with its G completion leaves; group i is b = first_b + i."""
    segs, parents, leaves = [root], [-1], []
    for i, (question, completions) in enumerate(groups):
        q = len(segs)
        segs += [question, *completions]
        parents += [0] + [q] * len(completions)
        leaves += [Leaf(q + 1 + g, first_b + i, g) for g in range(len(completions))]
    return Tree(segs, parents, leaves)


class _Segments(NamedTuple):
    """All segments of a list of trees, concatenated, with their tree structure (host NumPy)."""

    tokens: np.ndarray  # every segment's tokens, in order
    length_S: np.ndarray
    parent_S: np.ndarray  # global segment index, -1 for a root
    tree_S: np.ndarray
    ancestors_len_S: np.ndarray  # total tokens of the segment's ancestors
    last_S: np.ndarray  # last segment of its subtree (depth-first, so the subtree is contiguous)
    tree_tokens: np.ndarray
    tree_cost: np.ndarray  # tokens + visible (query, key) pairs / key tile: the balancing cost
    leaf_seg_L: np.ndarray
    leaf_b_L: np.ndarray
    leaf_g_L: np.ndarray
    leaf_start_L: np.ndarray


def _where(seg: np.ndarray, tree_S, first_S) -> str:
    s = int(seg)
    return f"tree {tree_S[s]} segment {s - first_S[s]}"


def _segments(trees, block: int) -> _Segments:
    """Flatten trees (one pass per tree and segment for the ids) and check their structure with
    vectorised passes, one per tree level."""
    if not trees:
        raise ValueError("need at least one tree")
    seg_tokens, parents, tree_ids, leaves = [], [], [], []
    for i, tree in enumerate(trees):
        n_seg = len(tree.segments)
        if n_seg == 0 or len(tree.parents) != n_seg:
            raise ValueError(f"tree {i}: {n_seg} segments and {len(tree.parents)} parents (need "
                             "one parent per segment, at least one segment)")
        par = np.asarray(tree.parents, np.int64).reshape(n_seg)
        bad = np.flatnonzero((par < -1) | (par >= np.arange(n_seg)))
        if bad.size:
            raise ValueError(f"tree {i} segment {bad[0]}: parent {par[bad[0]]} is not an earlier "
                             "segment of the tree (nor -1 for a root)")
        for leaf in tree.leaves:
            if not 0 <= leaf.segment < n_seg:
                raise ValueError(f"tree {i}: leaf {leaf} names no segment of the tree")
            leaves.append((leaf.segment + len(parents), leaf.b, leaf.g, leaf.start))
        parents.extend(np.where(par < 0, -1, par + len(parents)))
        tree_ids.append(np.full(n_seg, i))
        seg_tokens.extend(np.asarray(s, np.int32).reshape(-1) for s in tree.segments)
    length_S = np.array([len(s) for s in seg_tokens], np.int64)
    parent_S = np.array(parents, np.int64)
    tree_S = np.concatenate(tree_ids)
    first_S = np.searchsorted(tree_S, tree_S)  # every tree's segments are contiguous
    n = len(parent_S)
    idx_S = np.arange(n)
    # Walk up one level per pass: x = the l-th ancestor of every segment.
    depth_first_S = parent_S < 0
    ancestors_len_S = np.zeros(n, np.int64)
    last_S = idx_S.copy()
    x_S = idx_S.copy()
    while True:
        # Depth-first order: the parent of s is s-1 or one of its ancestors.
        depth_first_S[1:] |= (x_S[:-1] == parent_S[1:]) & (parent_S[1:] >= 0)
        x_S = np.where(x_S >= 0, parent_S[np.maximum(x_S, 0)], -1)
        up = x_S >= 0
        if not up.any():
            break
        ancestors_len_S[up] += length_S[x_S[up]]
        np.maximum.at(last_S, x_S[up], idx_S[up])
    if not depth_first_S.all():
        s = np.flatnonzero(~depth_first_S)[0]
        raise ValueError(f"{_where(s, tree_S, first_S)}: parent {parent_S[s] - first_S[s]} is "
                         "not on the current depth-first path (children must follow their parent"
                         " and its earlier subtrees)")
    leafless = np.setdiff1d(np.arange(len(trees)), tree_S[[seg for seg, *_ in leaves]])
    if leafless.size:
        raise ValueError(f"tree {leafless[0]} has no loss leaves")
    leaf_seg_L, leaf_b_L, leaf_g_L, leaf_start_L = (np.array(c, np.int64) for c in zip(*leaves))
    is_leaf_S = np.zeros(n, bool)
    is_leaf_S[leaf_seg_L] = True
    has_child_S = np.zeros(n, bool)
    has_child_S[parent_S[parent_S >= 0]] = True
    for bad, what in (((length_S == 0) & ~is_leaf_S, "is empty (only a loss leaf may be)"),
                      ((length_S == 0) & has_child_S, "is empty but has children")):
        if bad.any():
            raise ValueError(f"{_where(np.flatnonzero(bad)[0], tree_S, first_S)} {what}")
    if len(np.unique(leaf_seg_L)) != len(leaf_seg_L):
        raise ValueError("a segment is named by two leaves")
    seg_len_L = length_S[leaf_seg_L]
    for bad, what in (
        ((leaf_start_L < 0) | (leaf_start_L > seg_len_L), "starts outside its segment"),
        ((leaf_start_L == 0) & (parent_S[leaf_seg_L] < 0),
         "starts at a root's first token, which no token predicts"),
    ):
        if bad.any():
            i = np.flatnonzero(bad)[0]
            raise ValueError(f"leaf (b={leaf_b_L[i]}, g={leaf_g_L[i]}) at "
                             f"{_where(leaf_seg_L[i], tree_S, first_S)} {what}")
    pairs_S = length_S * (ancestors_len_S + (length_S + 1) / 2)
    return _Segments(
        np.concatenate(seg_tokens), length_S, parent_S, tree_S, ancestors_len_S, last_S,
        np.bincount(tree_S, length_S, len(trees)).astype(np.int64),
        np.bincount(tree_S, length_S + pairs_S / block, len(trees)),
        leaf_seg_L, leaf_b_L, leaf_g_L, leaf_start_L,
    )


def _group_shape(segs: _Segments) -> tuple[int, int]:
    """(B, G), checking that the leaves name every (b, g) of [0, B) × [0, G) exactly once."""
    b_L, g_L = segs.leaf_b_L, segs.leaf_g_L
    if b_L.min() < 0 or g_L.min() < 0:
        raise ValueError("leaf indices b and g must be >= 0")
    b, g = int(b_L.max()) + 1, int(g_L.max()) + 1
    count_BxG = np.zeros((b, g), np.int64)
    np.add.at(count_BxG, (b_L, g_L), 1)
    if (count_BxG != 1).any():
        bi, gi = np.argwhere(count_BxG != 1)[0]
        raise ValueError(f"every group needs exactly G={g} samples: sample (b={bi}, g={gi}) "
                         f"appears {count_BxG[bi, gi]} times")
    return b, g


def _layout(segs: _Segments, tree_row, n_rows: int, row_len: int, leaf_b_L, shape_BxGxR,
            pad_id: int, tiles: tuple[int, int]) -> PackedTree:
    """Place the trees' segments in rows (trees in order within a row) and build every array."""
    t = row_len
    seg_row_S = np.asarray(tree_row, np.int64)[segs.tree_S]
    length_S = segs.length_S
    order = np.argsort(seg_row_S, kind="stable")
    start_sorted = np.cumsum(length_S[order]) - length_S[order]
    row_total = np.bincount(seg_row_S, length_S, n_rows).astype(np.int64)
    if row_total.max() > t:
        raise ValueError(f"a row holds {row_total.max()} tokens, more than its length {t}")
    col_S = np.empty_like(length_S)
    col_S[order] = start_sorted - (np.cumsum(row_total) - row_total)[seg_row_S[order]]
    parent_S = segs.parent_S
    parent_last_S = np.where(parent_S >= 0, (col_S + length_S - 1)[np.maximum(parent_S, 0)], -1)

    tok_seg = np.repeat(np.arange(len(length_S)), length_S)
    idx = np.arange(len(tok_seg)) - (np.cumsum(length_S) - length_S)[tok_seg]
    col = col_S[tok_seg] + idx
    flat = seg_row_S[tok_seg] * t + col
    tokens = np.full(n_rows * t, pad_id, np.int32)
    positions = np.zeros(n_rows * t, np.int32)
    subtree_end = np.tile(np.arange(1, t + 1, dtype=np.int32), n_rows)
    prev = np.full(n_rows * t, -1, np.int32)
    tokens[flat] = segs.tokens
    positions[flat] = segs.ancestors_len_S[tok_seg] + idx
    subtree_end[flat] = (col_S + length_S)[segs.last_S][tok_seg]
    prev[flat] = np.where(idx > 0, col - 1, parent_last_S[tok_seg])

    b, g, r = shape_BxGxR
    seg_L, start_L = segs.leaf_seg_L, segs.leaf_start_L
    len_L = length_S[seg_L] - start_L
    first_L = col_S[seg_L] + start_L
    tail_L = np.where((len_L == 0) & (start_L == 0), parent_last_S[seg_L], first_L + len_L - 1)
    r_R = np.arange(r)
    row_BxG = np.zeros((b, g), np.int32)
    cols_BxGxR = np.zeros((b, g, r), np.int32)
    len_BxG = np.zeros((b, g), np.int32)
    row_BxG[leaf_b_L, segs.leaf_g_L] = seg_row_S[seg_L]
    cols_BxGxR[leaf_b_L, segs.leaf_g_L] = np.where(
        r_R[None, :] < len_L[:, None], first_L[:, None] + r_R[None, :], tail_L[:, None]
    )
    len_BxG[leaf_b_L, segs.leaf_g_L] = len_L
    # The flat loss-token list (leaf by leaf), padded to a coarse bucket; the loss view indexes it.
    total = int(len_L.sum())
    offset_L = np.cumsum(len_L) - len_L
    leaf_of = np.repeat(np.arange(len(len_L)), len_L)
    within = np.arange(total) - offset_L[leaf_of]
    # At least 64, so the list (a coarse bucket: a multiple of 8 from 64 on) splits over up to 8
    # data × fsdp shards.
    n_loss = coarse_bucket(max(64, total))
    loss_row = np.zeros(n_loss, np.int32)
    loss_col = np.zeros(n_loss, np.int32)
    loss_row[:total] = seg_row_S[seg_L][leaf_of]
    loss_col[:total] = first_L[leaf_of] + within
    index_BxGxR = np.zeros((b, g, r), np.int32)
    index_BxGxR[leaf_b_L, segs.leaf_g_L] = np.where(
        r_R[None, :] < len_L[:, None], offset_L[:, None] + r_R[None, :], 0
    )
    # Per row: its loss tokens in flat-list order, slot = rank among the flat entries of its row.
    row_of = loss_row[:total]
    count_N = np.bincount(row_of, minlength=n_rows)
    by_row = np.argsort(row_of, kind="stable")
    slot = np.zeros(n_loss, np.int64)
    slot[by_row] = np.arange(total) - (np.cumsum(count_N) - count_N)[row_of[by_row]]
    m = coarse_bucket(max(1, int(count_N.max())))
    row_col = np.zeros((n_rows, m), np.int32)
    row_live = np.zeros((n_rows, m), bool)
    row_col[row_of, slot[:total]] = loss_col[:total]
    row_live[row_of, slot[:total]] = True
    slot_BxGxR = np.where(r_R < len_BxG[..., None], slot[index_BxGxR], 0).astype(np.int32)

    shape = (n_rows, t)
    subtree_end = subtree_end.reshape(shape)
    blocks = TreeBlocks(*(jnp.asarray(a) for a in build_tree_blocks(subtree_end, *tiles)))
    return PackedTree(
        jnp.asarray(tokens.reshape(shape)), jnp.asarray(positions.reshape(shape)),
        jnp.asarray(subtree_end), jnp.asarray(prev.reshape(shape)), blocks,
        jnp.asarray(row_BxG), jnp.asarray(cols_BxGxR), jnp.asarray(len_BxG),
        jnp.asarray(loss_row), jnp.asarray(loss_col), jnp.asarray(np.arange(n_loss) < total),
        jnp.asarray(index_BxGxR), jnp.asarray(row_col), jnp.asarray(row_live),
        jnp.asarray(slot_BxGxR),
    )


def _loss_width(segs: _Segments, loss_width: int | None) -> int:
    longest = int((segs.length_S[segs.leaf_seg_L] - segs.leaf_start_L).max())
    if loss_width is None:
        return list_bucket(max(1, longest))
    if loss_width < max(1, longest):
        raise ValueError(f"loss_width {loss_width} < the longest sample ({longest} tokens)")
    return loss_width


def _check_fit(segs: _Segments, row_tokens: int, what: str):
    big = np.flatnonzero(segs.tree_tokens > row_tokens)
    if big.size:
        raise ValueError(f"tree {big[0]} has {segs.tree_tokens[big[0]]} tokens, more than "
                         f"{what} {row_tokens}")


def _check_tiles(tiles) -> int:
    """Validate (query tokens, key tokens) per attention tile; returns the row-length multiple."""
    bq, bk = tiles
    if bq < 1 or bk < 1 or bq & (bq - 1) or bk & (bk - 1):
        raise ValueError(f"tiles {tiles} must be two powers of two")
    return max(bq, bk)


def pack_trees(trees, *, row_tokens: int, pad_id: int = 0, tiles: tuple[int, int] = (64, 64),
               loss_width: int | None = None) -> PackedTree:
    """Host-side: pack whole trees (never split) into rows of T = row_tokens in order, starting a
    row when the next tree does not fit; row_tokens is a multiple of both attention tile sizes
    (query tokens, key tokens) of `blocks`. The leaves must name every sample (b, g) of B groups
    × G exactly once; the loss view is [B, G, R] with R = loss_width or the longest sample. Token
    work is vectorised; Python loops run once per tree and segment only (reading the ids, filling
    rows)."""
    multiple = _check_tiles(tiles)
    if row_tokens < 1 or row_tokens % multiple:
        raise ValueError(f"row_tokens {row_tokens} must be a positive multiple of {multiple}")
    segs = _segments(trees, tiles[1])
    _check_fit(segs, row_tokens, "row_tokens")
    b, g = _group_shape(segs)
    tree_row, row, used = [], 0, 0
    for n_tok in segs.tree_tokens:
        if used + n_tok > row_tokens:
            row, used = row + 1, 0
        tree_row.append(row)
        used += n_tok
    return _layout(segs, tree_row, row + 1, row_tokens, segs.leaf_b_L,
                   (b, g, _loss_width(segs, loss_width)), pad_id, tiles)


class MicroBatch(NamedTuple):
    """One micro-batch of `pack_groups_balanced`, its groups re-indexed locally.

    Local group i of `packed` is the caller's group group_ids_B[i] (-1: a padding group, so that
    every micro-batch of a call has the same B). present_BxG marks the samples that live in this
    micro-batch: a group whose samples are separate trees (the depth-1 baseline) may spread over
    several micro-batches; its absent samples have length 0 here.
    """

    packed: PackedTree
    group_ids_B: np.ndarray
    present_BxG: np.ndarray

    def take_groups(self, values_Bx):
        """The caller's per-group host array ([B_total, ...], e.g. advantages [B, G] or old
        log-probs [B, G, R]) -> this micro-batch's [B, ...]; zeros for padding groups."""
        values = np.asarray(values_Bx)
        out = values[np.maximum(self.group_ids_B, 0)]
        real = (self.group_ids_B >= 0).reshape((-1,) + (1,) * (out.ndim - 1))
        return np.where(real, out, np.zeros_like(out))

    def put_groups(self, dest_BxG, values_BxG):
        """A copy of the caller's per-sample array [B_total, G, ...] with this micro-batch's
        present samples ([B, G, ...]) written in (e.g. old log-probs, one micro-batch at a
        time)."""
        out = np.array(dest_BxG, copy=True)
        b, g = np.nonzero(self.present_BxG)
        out[self.group_ids_B[b], g] = np.asarray(values_BxG)[b, g]
        return out


def pack_groups_balanced(trees, *, token_budget: int, tiles: tuple[int, int] = (64, 64),
                         buckets=None, rows_per_batch: int = 1, pad_id: int = 0,
                         loss_width: int | None = None) -> list[MicroBatch]:
    """Host-side micro-batching by a token budget per row.

    Whole trees go to rows by a balancing heuristic: longest first (by cost = tokens + visible
    attention pairs / key tile), each onto the least-cost row that still has room for it within
    token_budget tokens; the number of rows starts at ceil(total tokens / budget) (a multiple of
    rows_per_batch) and grows until every tree fits. Row length T = the smallest bucket ≥ the
    fullest row (from `buckets`, or by default `coarse_bucket`: at most 25% above it, four sizes
    an octave), rounded up to a multiple of the tiles, the same for every micro-batch, so jit
    compiles one program per bucket. Consecutive rows_per_batch rows form a micro-batch.

    The leaves must name every sample (b, g) of B groups × G exactly once (as for `pack_trees`).
    Groups are re-indexed per micro-batch: `MicroBatch.group_ids_B` maps local groups back to the
    caller's b, and `take_groups` / `put_groups` move per-group host arrays ([B, G] advantages,
    [B, G, R] old log-probs) in and out. Every micro-batch has the same B (padded with empty
    groups), G and R (loss_width or the longest sample of the whole call), so its [B, G, R] loss
    view lines up with the caller's arrays; summing per-sample losses over the micro-batches
    gives the full batch's.
    """
    multiple = _check_tiles(tiles)
    if token_budget < 1 or rows_per_batch < 1:
        raise ValueError(f"token_budget {token_budget} and rows_per_batch "
                         f"{rows_per_batch} must be positive")
    segs = _segments(trees, tiles[1])
    _check_fit(segs, token_budget, "token_budget")
    _, g = _group_shape(segs)
    r = _loss_width(segs, loss_width)
    tokens, cost = segs.tree_tokens, segs.tree_cost
    n_rows = -(-int(tokens.sum()) // token_budget)
    n_rows = -(-n_rows // rows_per_batch) * rows_per_batch
    while True:
        row_tokens, row_cost = np.zeros(n_rows, np.int64), np.zeros(n_rows)
        tree_row = np.zeros(len(trees), np.int64)
        for i in np.argsort(-cost, kind="stable"):
            room = row_tokens + tokens[i] <= token_budget
            if not room.any():
                break
            row = int(np.argmin(np.where(room, row_cost, np.inf)))
            tree_row[i] = row
            row_tokens[row] += tokens[i]
            row_cost[row] += cost[i]
        else:
            break
        n_rows += rows_per_batch
    fullest = int(row_tokens.max())
    row_len = bucket(fullest, buckets) if buckets else coarse_bucket(fullest)
    row_len = -(-row_len // multiple) * multiple
    # Trees fill empty rows first and n_rows < trees + rows_per_batch, so no micro-batch is empty.
    firsts = range(0, n_rows, rows_per_batch)
    members = [np.flatnonzero((tree_row >= f) & (tree_row < f + rows_per_batch)) for f in firsts]
    leaf_tree_L = segs.tree_S[segs.leaf_seg_L]
    ids = [np.unique(segs.leaf_b_L[np.isin(leaf_tree_L, m)]) for m in members]
    n_local = max(len(i) for i in ids)
    out = []
    for first, in_batch, group_ids in zip(firsts, members, ids, strict=True):
        sub = _segments([trees[i] for i in in_batch], tiles[1])
        local_b_L = np.searchsorted(group_ids, sub.leaf_b_L)
        present = np.zeros((n_local, g), bool)
        present[local_b_L, sub.leaf_g_L] = True
        packed = _layout(sub, tree_row[in_batch] - first, rows_per_batch, row_len, local_b_L,
                         (n_local, g, r), pad_id, tiles)
        padded_ids = np.concatenate([group_ids, np.full(n_local - len(group_ids), -1)])
        out.append(MicroBatch(packed, padded_ids.astype(np.int64), present))
    return out
