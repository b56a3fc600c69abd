"""PackedTree builders: hand-computed arrays at depths 1–3, every error, random-tree invariants
against independent oracles, and token-budget micro-batching."""

import numpy as np
import pytest

from pallas_kernels.tree_blocks import visible_mask
from tests.tree_fixtures import (
    random_packed,
    random_trees,
    root_paths,
    tree_tokens,
    visibility_oracle,
)
from zorro_jax.layouts import (
    Leaf,
    Tree,
    group_tree,
    pack_groups_balanced,
    pack_trees,
    replicated_trees,
    shared_root_tree,
)


def arrays(p):
    return {name: np.asarray(getattr(p, name)).tolist() for name in (
        "tokens_NxT", "positions_NxT", "subtree_end_NxT", "prev_NxT",
        "sample_row_BxG", "sample_cols_BxGxR", "sample_len_BxG")}


def dense_rows(p):
    d = p.to_dense()
    toks, lens = np.asarray(d.tokens_NxT), np.asarray(d.lengths_N)
    return [toks[i, : lens[i]].tolist() for i in range(len(lens))]


def test_depth2_two_groups_in_one_row():
    # Group 1 starts at column 6: its positions restart at 0 and its completions' first tokens
    # are predicted by its prompt's last token (column 7), not by the previous column.
    p = pack_trees([group_tree([1, 2, 3], [[4, 5], [6], []], 0),
                    group_tree([7, 8], [[9], [10, 11], [12]], 1)], row_tokens=16, tiles=(4, 4))
    assert arrays(p) == {
        "tokens_NxT": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0, 0, 0]],
        "positions_NxT": [[0, 1, 2, 3, 4, 3, 0, 1, 2, 2, 3, 2, 0, 0, 0, 0]],
        "subtree_end_NxT": [[6, 6, 6, 5, 5, 6, 12, 12, 9, 11, 11, 12, 13, 14, 15, 16]],
        "prev_NxT": [[-1, 0, 1, 2, 3, 2, -1, 6, 7, 7, 9, 7, -1, -1, -1, -1]],
        "sample_row_BxG": [[0, 0, 0], [0, 0, 0]],
        # The empty sample (0, 2) points at the token that would predict it (the prompt's last).
        "sample_cols_BxGxR": [[[3, 4], [5, 5], [2, 2]], [[8, 8], [9, 10], [11, 11]]],
        "sample_len_BxG": [[2, 1, 0], [1, 2, 1]],
    }
    assert dense_rows(p) == [[1, 2, 3, 4, 5], [1, 2, 3, 6], [1, 2, 3],
                             [7, 8, 9], [7, 8, 10, 11], [7, 8, 12]]
    assert p.shape == (1, 16, 2, 3, 2)
    assert np.asarray(p.sample_mask()).tolist() == [[[True, True], [True, False], [False, False]],
                                                     [[True, False], [True, True], [True, False]]]


def test_depth1_loss_on_the_completion_tail():
    p = pack_trees(replicated_trees([1, 2], [[3, 4], [5], []], 0), row_tokens=12, tiles=(4, 4))
    a = arrays(p)
    assert a["tokens_NxT"] == [[1, 2, 3, 4, 1, 2, 5, 1, 2, 0, 0, 0]]
    assert a["positions_NxT"] == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 0, 0, 0]]
    assert a["subtree_end_NxT"] == [[4, 4, 4, 4, 7, 7, 7, 9, 9, 10, 11, 12]]
    assert a["prev_NxT"] == [[-1, 0, 1, 2, -1, 4, 5, -1, 7, -1, -1, -1]]
    assert a["sample_cols_BxGxR"] == [[[2, 3], [6, 6], [8, 8]]]
    assert a["sample_len_BxG"] == [[2, 1, 0]]
    assert dense_rows(p) == [[1, 2, 3, 4], [1, 2, 5], [1, 2]]


def test_depth3_schema_questions_completions():
    p = pack_trees([shared_root_tree([1, 2], [([3], [[4], [5, 6]]), ([7, 8], [[9], []])], 0)],
                   row_tokens=12, tiles=(4, 4))
    a = arrays(p)
    assert a["tokens_NxT"] == [[1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 0, 0]]
    assert a["positions_NxT"] == [[0, 1, 2, 3, 3, 4, 2, 3, 4, 0, 0, 0]]
    # The root's subtree runs to the end of the last question's subtree (its empty leaf too).
    assert a["subtree_end_NxT"] == [[9, 9, 6, 4, 6, 6, 9, 9, 9, 10, 11, 12]]
    # The second question's first token is predicted by the root's last token (column 1).
    assert a["prev_NxT"] == [[-1, 0, 1, 2, 2, 4, 1, 6, 7, -1, -1, -1]]
    assert a["sample_cols_BxGxR"] == [[[3, 3], [4, 5]], [[8, 8], [7, 7]]]
    assert a["sample_len_BxG"] == [[1, 2], [1, 0]]
    assert dense_rows(p) == [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7, 8, 9], [1, 2, 7, 8]]


def test_general_tree_deeper_than_three():
    # root -> a -> b, then c under the root after a's subtree; d is a second root (a forest).
    tree = Tree([[1], [2, 3], [4], [5], [6, 7]], [-1, 0, 1, 0, -1],
                [Leaf(2, 0, 0), Leaf(3, 0, 1), Leaf(4, 1, 0, 1), Leaf(1, 1, 1, 1)])
    a = arrays(pack_trees([tree], row_tokens=8, tiles=(4, 4)))
    assert a["positions_NxT"] == [[0, 1, 2, 3, 1, 0, 1, 0]]
    assert a["subtree_end_NxT"] == [[5, 4, 4, 4, 5, 7, 7, 8]]
    assert a["prev_NxT"] == [[-1, 0, 1, 2, 0, -1, 5, -1]]
    assert a["sample_cols_BxGxR"] == [[[3], [4]], [[6], [2]]]


def test_trees_fill_rows_in_order():
    trees = [group_tree([1] * 5, [[2]], 0), group_tree([3] * 2, [[4]], 1),
             group_tree([5] * 6, [[6]], 2)]
    p = pack_trees(trees, row_tokens=12, tiles=(4, 4))
    assert np.asarray(p.sample_row_BxG).ravel().tolist() == [0, 0, 1]
    assert np.asarray(p.tokens_NxT)[1, :7].tolist() == [5] * 6 + [6]
    assert np.asarray(p.positions_NxT)[1, :8].tolist() == [0, 1, 2, 3, 4, 5, 6, 0]
    assert np.asarray(p.sample_cols_BxGxR).ravel().tolist() == [5, 8, 6]


@pytest.mark.parametrize("trees, kwargs, match", [
    ([Tree([[1], [], [2]], [-1, 0, 1], [Leaf(2, 0, 0)])], {}, "segment 1 is empty"),
    ([Tree([[1], [], [2]], [-1, 0, 1], [Leaf(1, 0, 0), Leaf(2, 0, 1)])], {}, "has children"),
    ([group_tree([1] * 10, [[2] * 7], 0)], {}, "more than row_tokens"),
    ([Tree([[1], [2]], [-1, 1], [Leaf(1, 0, 0)])], {}, "not an earlier segment"),
    ([Tree([[1], [2]], [-2, 0], [Leaf(1, 0, 0)])], {}, "not an earlier segment"),
    # d's parent a is no longer on the path once c (a child of the root) has started.
    ([Tree([[1], [2], [3], [4], [5]], [-1, 0, 1, 0, 1], [Leaf(4, 0, 0)])], {},
     "segment 4: parent 1 is not on the current depth-first path"),
    ([group_tree([1], [[2], [3], [4]], 0), group_tree([1], [[2], [3]], 1)], {},
     r"G=3 samples: sample \(b=1, g=2\) appears 0"),
    ([group_tree([1], [[2]], 0), group_tree([1], [[2]], 0)], {}, "appears 2 times"),
    ([group_tree([1], [[2]], 0), group_tree([1], [[2]], 2)], {}, r"\(b=1, g=0\) appears 0"),
    ([Tree([[1, 2]], [-1], [Leaf(0, 0, 0, 3)])], {}, "starts outside its segment"),
    (replicated_trees([], [[2, 3]], 0), {}, "which no token predicts"),
    ([Tree([[]], [-1], [Leaf(0, 0, 0)])], {}, "which no token predicts"),
    ([Tree([[1], [2]], [-1, 0], [Leaf(2, 0, 0)])], {}, "names no segment"),
    ([Tree([[1], [2]], [-1], [Leaf(1, 0, 0)])], {}, "2 segments and 1 parents"),
    ([Tree([[1], [2]], [-1, 0], [Leaf(1, 0, 0), Leaf(1, 0, 1)])], {}, "named by two leaves"),
    ([group_tree([1], [[2]], 0), Tree([[1]], [-1], [])], {}, "tree 1 has no loss leaves"),
    ([], {}, "at least one tree"),
    ([group_tree([1], [[2]], 0)], {"row_tokens": 10}, "multiple of 4"),
    ([group_tree([1], [[2, 3, 4]], 0)], {"loss_width": 2}, "loss_width 2 < the longest"),
])
def test_pack_trees_errors(trees, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pack_trees(trees, **{"row_tokens": 16, "tiles": (4, 4), **kwargs})


@pytest.mark.parametrize("seed, depths, g", [(0, (1,), 3), (1, (2,), 1), (2, (3,), 4),
                                             (3, (1, 2, 3), 16), (4, (1, 2, 3), 2)])
def test_random_trees_match_independent_oracles(seed, depths, g):
    rng = np.random.default_rng(seed)
    trees = random_trees(rng, n_groups=5, g=g, depths=depths)
    row = sum(sorted(tree_tokens(t) for t in trees)[-2:])  # any two trees share a row
    p = pack_trees(trees, row_tokens=-(-row // 8) * 8, tiles=(8, 8), loss_width=12)
    assert p.tokens_NxT.shape[0] < len(trees)  # several trees share rows
    # Attention rule: subtree_end encodes exactly the ancestor relation of the trees.
    np.testing.assert_array_equal(visible_mask(np.asarray(p.subtree_end_NxT)),
                                  visibility_oracle(trees, p))
    # prev: the predicting token is one position earlier on the same root path.
    pos, prev = np.asarray(p.positions_NxT), np.asarray(p.prev_NxT)
    has_prev = prev >= 0
    rows = np.nonzero(has_prev)[0]
    assert (pos[rows, prev[has_prev]] == pos[has_prev] - 1).all()
    assert (pos[~has_prev] == 0).all()  # roots' first tokens and padding
    # Loss view: every sample's tokens, and the Dense oracle's rows are the root paths.
    toks_BxGxR = np.asarray(p.gather_samples(p.tokens_NxT))
    len_BxG, mask = np.asarray(p.sample_len_BxG), np.asarray(p.sample_mask())
    d = p.to_dense()
    dense_toks, dense_len = np.asarray(d.tokens_NxT), np.asarray(d.lengths_N)
    g_total = len_BxG.shape[1]
    for tree in trees:
        for b, gi, path, loss in root_paths(tree):
            assert len_BxG[b, gi] == len(loss)
            assert toks_BxGxR[b, gi, : len(loss)].tolist() == loss
            n = b * g_total + gi
            assert dense_toks[n, : dense_len[n]].tolist() == path
    # Dense next-token values map onto the loss view: the next token of dense position t-1 is
    # the loss token itself.
    nxt = np.asarray(p.from_dense_next_token(d.tokens_NxT[:, 1:]))
    np.testing.assert_array_equal(np.where(mask, nxt, -1), np.where(mask, toks_BxGxR, -1))
    # Every loss token has a predictor, one position earlier on its root path.
    pred, loss_pos = np.asarray(p.gather_samples(p.prev_NxT)), np.asarray(p.gather_samples(p.positions_NxT))
    rows_BxGxR = np.broadcast_to(np.asarray(p.sample_row_BxG)[..., None], mask.shape)
    assert (pred[mask] >= 0).all()
    assert (pos[rows_BxGxR[mask], pred[mask]] == loss_pos[mask] - 1).all()
    assert p.blocks.num_blocks == (p.tokens_NxT.shape[1] // 8,) * 2


def _light(first_b):
    """30 tokens of cheap attention: a 2-token root with 14 one-token questions, one leaf each."""
    return shared_root_tree([7, 7], [([5], [[8]]) for _ in range(14)], first_b)


def test_balancing_counts_attention_cost():
    # A (one 32-token sequence) costs more attention than the three light trees together, so it
    # gets a row of its own; balancing by tokens alone would pair it with a light tree.
    heavy = replicated_trees([7] * 31, [[8]], 0)[0]
    trees = [heavy, _light(1), _light(15), _light(29)]
    mbs = pack_groups_balanced(trees, token_budget=100, tiles=(2, 2))
    assert len(mbs) == 2
    ids = sorted((mb.group_ids_B.tolist() for mb in mbs), key=lambda x: x[0])
    assert ids == [[0] + [-1] * 41, list(range(1, 43))]
    # T: the coarse bucket >= the fullest row (90 tokens: steps of 16 from 64), a multiple of
    # the tiles; or the smallest of explicit buckets.
    assert {mb.packed.tokens_NxT.shape for mb in mbs} == {(1, 96)}
    mbs = pack_groups_balanced(trees, token_budget=100, tiles=(2, 2), buckets=(50, 100, 200))
    assert {mb.packed.tokens_NxT.shape for mb in mbs} == {(1, 100)}
    mbs = pack_groups_balanced(trees, token_budget=100, tiles=(8, 8), buckets=(50, 100, 200))
    assert {mb.packed.tokens_NxT.shape for mb in mbs} == {(1, 104)}


def test_balancing_adds_rows_until_every_tree_fits():
    trees = [group_tree([1] * 50, [[2] * 5, [3]], b) for b in range(3)]  # 56 tokens each
    mbs = pack_groups_balanced(trees, token_budget=100, tiles=(4, 4))
    assert len(mbs) == 3 and all(len(mb.group_ids_B) == 1 for mb in mbs)
    mbs = pack_groups_balanced(trees, token_budget=100, tiles=(4, 4), rows_per_batch=2)
    assert [mb.packed.tokens_NxT.shape[0] for mb in mbs] == [2, 2]
    assert sorted(i for mb in mbs for i in mb.group_ids_B.tolist()) == [-1, 0, 1, 2]


@pytest.mark.parametrize("rows_per_batch", [1, 3])
def test_micro_batches_equal_the_full_batch(rows_per_batch):
    rng = np.random.default_rng(7)
    trees = random_trees(rng, n_groups=8, g=3)
    budget = -(-max(tree_tokens(t) for t in trees) * 2 // 8) * 8
    full = pack_trees(trees, row_tokens=budget, tiles=(8, 8))
    b, g, r = full.sample_cols_BxGxR.shape
    mbs = pack_groups_balanced(trees, token_budget=budget, tiles=(8, 8), rows_per_batch=rows_per_batch)
    assert len(mbs) > 1 and len({mb.packed.shape for mb in mbs}) == 1
    got_toks, got_len = np.full((b, g, r), -1), np.full((b, g), -1)
    for mb in mbs:
        p = mb.packed
        row_tokens = (np.asarray(p.subtree_end_NxT) > np.arange(p.shape[1]) + 1).sum(1)
        assert (np.asarray(p.tokens_NxT) > 0).sum(1).max() <= budget >= row_tokens.max()
        toks = np.where(np.asarray(p.sample_mask()), np.asarray(p.gather_samples(p.tokens_NxT)), 0)
        got_toks = mb.put_groups(got_toks, toks)
        got_len = mb.put_groups(got_len, np.asarray(p.sample_len_BxG))
        # take_groups inverts put_groups on the present samples; padding groups are zero.
        present = mb.present_BxG
        np.testing.assert_array_equal(mb.take_groups(got_toks)[present], toks[present])
        assert (mb.take_groups(got_toks)[mb.group_ids_B < 0] == 0).all()
    want = np.asarray(full.gather_samples(full.tokens_NxT))
    want = np.where(np.asarray(full.sample_mask()), want, 0)
    np.testing.assert_array_equal(got_toks, want)
    np.testing.assert_array_equal(got_len, np.asarray(full.sample_len_BxG))


def test_depth1_groups_spread_over_micro_batches():
    trees = replicated_trees([7] * 20, [[8] * 10, [9] * 10, [5] * 10], 0)  # 30 tokens each
    mbs = pack_groups_balanced(trees, token_budget=64, tiles=(4, 4))
    assert [mb.present_BxG.tolist() for mb in mbs] == [[[True, False, True]],
                                                       [[False, True, False]]]
    logp = np.zeros((1, 3, 12))  # the loss width: 10 rounded up by list_bucket
    for mb in mbs:
        assert mb.group_ids_B.tolist() == [0]
        toks = np.asarray(mb.packed.gather_samples(mb.packed.tokens_NxT))
        logp = mb.put_groups(logp, np.where(np.asarray(mb.packed.sample_mask()), toks, 0))
    assert logp[0, :, 0].tolist() == [8, 9, 5] and (logp[0, :, :10] == logp[0, :, :1]).all()


def test_take_groups_pads_with_zeros():
    mbs = pack_groups_balanced([*replicated_trees([7] * 31, [[8]], 0), _light(1)],
                               token_budget=40, tiles=(2, 2))
    adv_BxG = np.arange(1, 16, dtype=np.float32)[:, None]
    taken = [mb.take_groups(adv_BxG) for mb in mbs]
    assert sorted(t.ravel().tolist() for t in taken) == [[1.0] + [0.0] * 13,
                                                         list(range(2, 16))]


@pytest.mark.parametrize("trees, kwargs, match", [
    ([group_tree([1] * 20, [[2]], 0)], {}, "more than token_budget"),
    ([group_tree([1], [[2]], 0)], {"token_budget": 0}, "token_budget 0 and rows_per_batch 1"),
    ([group_tree([1], [[2]], 0)], {"rows_per_batch": 0}, "rows_per_batch 0 must be positive"),
    ([group_tree([1], [[2]], 0)], {"buckets": (1,)}, "largest bucket"),
])
def test_balanced_errors(trees, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pack_groups_balanced(trees, **{"token_budget": 16, "tiles": (4, 4), **kwargs})


def test_flat_loss_list_matches_the_loss_view():
    """Every real loss-view slot indexes the flat loss list at the same (row, column); the list
    holds each loss token exactly once and its dead tail is masked."""
    rng = np.random.default_rng(11)
    _, p = random_packed(rng, n_groups=5, g=4, block=8, trees_per_row=2)
    mask = np.asarray(p.sample_mask())
    idx = np.asarray(p.loss_index_BxGxR)
    rows, cols = np.asarray(p.loss_row_L), np.asarray(p.loss_col_L)
    want_rows = np.broadcast_to(np.asarray(p.sample_row_BxG)[:, :, None], mask.shape)
    np.testing.assert_array_equal(rows[idx][mask], want_rows[mask])
    np.testing.assert_array_equal(cols[idx][mask], np.asarray(p.sample_cols_BxGxR)[mask])
    live = np.asarray(p.loss_live_L)
    assert live.sum() == mask.sum() and sorted(idx[mask].tolist()) == list(range(mask.sum()))
    assert not live[mask.sum():].any()


@pytest.mark.parametrize("balanced", [False, True])
def test_row_loss_lists_match_the_loss_view(balanced):
    """The per-row loss lists name, for every real loss-view slot, the slot's own row and column;
    each row lists exactly its own loss tokens, once each, live entries first. Balanced packing
    puts trees in rows out of their order, so a row's entries are not a run of the flat list."""
    rng = np.random.default_rng(12)
    trees, p = random_packed(rng, n_groups=6, g=3, block=8, trees_per_row=2)
    if balanced:
        p = pack_groups_balanced(trees, token_budget=p.tokens_NxT.shape[1] // 2 + 8, tiles=(8, 8),
                                 rows_per_batch=4)[0].packed
    mask = np.asarray(p.sample_mask())
    row_BxG, slot = np.asarray(p.sample_row_BxG), np.asarray(p.loss_slot_BxGxR)
    cols, live = np.asarray(p.row_loss_col_NxM), np.asarray(p.row_loss_live_NxM)
    rows_BxGxR = np.broadcast_to(row_BxG[:, :, None], mask.shape)
    assert live[rows_BxGxR, slot][mask].all()
    np.testing.assert_array_equal(cols[rows_BxGxR, slot][mask], np.asarray(p.sample_cols_BxGxR)[mask])
    for n in range(cols.shape[0]):
        mine = mask & (rows_BxGxR == n)
        assert sorted(slot[mine].tolist()) == list(range(mine.sum())), n
        assert live[n].sum() == mine.sum() and not live[n, mine.sum():].any()
    assert cols.shape[1] >= live.sum(1).max() and (cols[~live] == 0).all()
    if balanced:
        assert len(np.unique(row_BxG)) > 1 and p.tokens_NxT.shape[0] == 4
