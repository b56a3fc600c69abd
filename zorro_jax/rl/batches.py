"""Training batches: groups (a prompt and its G completions) packed into `PackedTree` micro-batches.

One packing policy for every training path (GRPO updates and log-prob passes, SFT, draft
distillation): whole groups are packed into rows of at most `token_budget` tokens by
`layouts.pack_groups_balanced`, `rows_per_micro_batch` rows form a micro-batch, and the row length
comes from a coarse bucket so jit compiles one program per bucket. `mode` decides the sharing:
"prompt_once" packs each prompt once with its G completions under it (depth 2), and with
`shared_lens` consecutive groups whose prompts start with the same shared part (a database schema)
under one root segment holding that part once (depth 3: schema → questions → completions);
"naive" copies the prompt into every sample (depth 1, the baseline). All give the same loss view
[B, G, R].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zorro_jax import attention
from zorro_jax.layouts import (
    MicroBatch,
    Tree,
    group_tree,
    pack_groups_balanced,
    replicated_trees,
    shared_root_tree,
)

MODES = ("prompt_once", "naive")


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """How training groups are packed into micro-batches."""

    # Tokens per packed row (a group larger than this gets a row of its own size).
    token_budget: int = 8192
    # Rows per micro-batch; gradients are accumulated over micro-batches (exactly).
    rows_per_micro_batch: int = 1

    def __post_init__(self):
        if self.token_budget < 16 or self.rows_per_micro_batch < 1:
            raise ValueError(f"need token_budget >= 16 and rows_per_micro_batch >= 1, got "
                             f"{self.token_budget}, {self.rows_per_micro_batch}")


def tiles_for(model_config, impl: str | None) -> tuple[int, int]:
    """The attention tiles (query tokens, key tokens) a model's batches are packed with."""
    c = model_config
    return attention.tree_tiles(impl, c.num_attention_heads // c.num_key_value_heads, c.head_dim,
                                c.compute_dtype)


def shared_runs(prompts, shared_lens) -> list[tuple[int, int]]:
    """[first, end) runs of consecutive prompts that share their first shared_lens tokens (the
    same length and the same ids, and a non-empty rest after them); a prompt that shares with no
    neighbour is a run of one."""
    if len(shared_lens) != len(prompts):
        raise ValueError(f"{len(shared_lens)} shared lengths for {len(prompts)} prompts")
    runs, first = [], 0
    for b in range(1, len(prompts) + 1):
        n = shared_lens[first]
        same = (b < len(prompts) and 0 < n == shared_lens[b] and n < len(prompts[b])
                and n < len(prompts[first])
                and np.array_equal(np.asarray(prompts[b][:n]), np.asarray(prompts[first][:n])))
        if not same:
            runs.append((first, b))
            first = b
    return runs


def group_trees(groups, mode: str, shared_lens=None) -> list[Tree]:
    """The packing units of `groups` (group b is b) in `mode`; see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "naive":
        return [t for b, (p, cs) in enumerate(groups) for t in replicated_trees(p, cs, b)]
    if shared_lens is None:
        return [group_tree(p, cs, b) for b, (p, cs) in enumerate(groups)]
    trees = []
    for first, end in shared_runs([p for p, _ in groups], shared_lens):
        if end - first == 1:
            trees.append(group_tree(*groups[first], first))
            continue
        n = shared_lens[first]
        trees.append(shared_root_tree(groups[first][0][:n],
                                      [(p[n:], cs) for p, cs in groups[first:end]], first))
    return trees


def pack_groups(groups, *, mode: str, tiles: tuple[int, int], cfg: PackingConfig = PackingConfig(),
                pad_id: int = 0, loss_width: int | None = None, shared_lens=None) -> list[MicroBatch]:
    """[(prompt ids, [completion ids] × G), ...] (NumPy arrays or sequences; group b is b) ->
    micro-batches whose loss views are [B_local, G, loss_width or the longest completion].
    `shared_lens[b]` (optional): the length of group b's shared prompt part (prompt-once mode
    puts runs of groups sharing it under one root)."""
    if not groups:
        raise ValueError("pack_groups needs at least one group")
    trees = group_trees(groups, mode, shared_lens)
    largest = max(sum(len(s) for s in t.segments) for t in trees)
    return pack_groups_balanced(trees, token_budget=max(cfg.token_budget, largest), tiles=tiles,
                                rows_per_batch=cfg.rows_per_micro_batch, pad_id=pad_id,
                                loss_width=loss_width)


def rollout_groups(prompts, tokens_BxGxR: np.ndarray, lengths_BxG: np.ndarray):
    """Groups of a sampler's output, as views of its token array (no per-token Python lists)."""
    return [(np.asarray(p, np.int32), [tokens_BxGxR[b, g, : lengths_BxG[b, g]]
                                       for g in range(tokens_BxGxR.shape[1])])
            for b, p in enumerate(prompts)]


def sample_mask(lengths_BxG: np.ndarray, width: int) -> np.ndarray:
    """Boolean [B, G, width]: True at each sample's tokens (the full batch's loss mask)."""
    return np.arange(width)[None, None, :] < np.asarray(lengths_BxG)[:, :, None]
