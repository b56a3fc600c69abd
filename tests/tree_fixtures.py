"""Random prefix trees for tests: ragged prompts and completions (tiny and empty ones included) at
depths 1–3, packed several trees to a row, plus an independent per-pair visibility oracle."""

import numpy as np

from zorro_jax.layouts import (
    Tree,
    group_tree,
    pack_trees,
    replicated_trees,
    shared_root_tree,
)

VOCAB = 89


def _ids(rng, n):
    return rng.integers(3, VOCAB, int(n)).tolist()


def _completions(rng, g, completion_len):
    """G completion lengths in [lo, hi], with one empty and one single-token one when G allows."""
    lo, hi = completion_len
    lens = rng.integers(lo, hi + 1, g)
    if g >= 3:
        lens[rng.permutation(g)[:2]] = [0, 1]
    return [_ids(rng, n) for n in lens]


def random_group(rng, *, depth: int, g: int, first_b: int = 0, questions: int = 2,
                 prompt_len=(1, 24), completion_len=(0, 9)) -> list[Tree]:
    """The trees of one random group: depth 1 (G trees prompt ++ completion), depth 2 (prompt + G
    completions) or depth 3 (one tree: a root + `questions` groups of G completions each)."""
    prompt = _ids(rng, rng.integers(prompt_len[0], prompt_len[1] + 1))
    if depth == 1:
        return replicated_trees(prompt, _completions(rng, g, completion_len), first_b)
    if depth == 2:
        return [group_tree(prompt, _completions(rng, g, completion_len), first_b)]
    if depth == 3:
        groups = [(_ids(rng, rng.integers(1, 8)), _completions(rng, g, completion_len))
                  for _ in range(questions)]
        return [shared_root_tree(prompt, groups, first_b)]
    raise ValueError(f"depth must be 1, 2 or 3, got {depth}")


def random_trees(rng, *, n_groups: int, g: int, depths=(1, 2, 3), **kwargs) -> list[Tree]:
    """The trees of n_groups random groups (depths drawn from depths; a depth-3 draw brings its
    `questions` groups) with consecutive group indices b."""
    trees, b = [], 0
    for _ in range(n_groups):
        new = random_group(rng, depth=int(rng.choice(depths)), g=g, first_b=b, **kwargs)
        b = max(leaf.b for tree in new for leaf in tree.leaves) + 1
        trees += new
    return trees


def tree_tokens(tree: Tree) -> int:
    """Number of tokens of a tree."""
    return sum(len(s) for s in tree.segments)


def random_packed(rng, *, n_groups: int, g: int, block: int, trees_per_row: int = 2, **kwargs):
    """Random trees packed with at least trees_per_row trees a row: (trees, PackedTree)."""
    trees = random_trees(rng, n_groups=n_groups, g=g, **kwargs)
    sizes = sorted(tree_tokens(t) for t in trees)
    row = sum(sizes[-trees_per_row:])
    return trees, pack_trees(trees, row_tokens=-(-row // block) * block, tiles=(block, block))


def root_paths(tree: Tree):
    """Independent oracle: for each leaf, (b, g, its root path's tokens, its loss tokens)."""
    out = []
    for leaf in tree.leaves:
        path, s = [], leaf.segment
        while s >= 0:
            path = list(tree.segments[s]) + path
            s = tree.parents[s]
        out.append((leaf.b, leaf.g, path, list(tree.segments[leaf.segment])[leaf.start:]))
    return out


def visibility_oracle(trees: list[Tree], packed) -> np.ndarray:
    """[N, T, T] mask built pair by pair from the trees (not from subtree_end): token i sees token
    j iff j's segment is an ancestor-or-self of i's segment and, in the same segment, j ≤ i. Trees
    are located in the rows by matching the packed tokens in order (pack_trees fills rows in
    order). Padding sees only itself."""
    n, t = packed.tokens_NxT.shape
    mask = np.zeros((n, t, t), bool)
    mask[:, np.arange(t), np.arange(t)] = True
    row, col = 0, 0
    for tree in trees:
        size = tree_tokens(tree)
        if col + size > t:
            row, col = row + 1, 0
        seg_of, start = [], {}
        for s, seg in enumerate(tree.segments):
            start[s] = col + len(seg_of)
            seg_of += [s] * len(seg)
        for a, sa in enumerate(seg_of):
            anc, s = set(), sa
            while s >= 0:
                anc.add(s)
                s = tree.parents[s]
            for b, sb in enumerate(seg_of):
                if sb in anc and (sb != sa or b <= a):
                    mask[row, col + a, col + b] = True
        col += size
    return mask
