"""Training batches: groups (a prompt and its G completions) packed into `PackedTree` micro-batches.

One packing policy for every training path (GRPO updates and log-prob passes, SFT, draft
distillation): whole groups are packed into rows of at most `token_budget` tokens by
`layouts.pack_groups_balanced`, `rows_per_micro_batch` rows form a micro-batch, and the row length
comes from a coarse bucket so jit compiles one program per bucket. `mode` decides the sharing:
"prompt_once" packs each prompt once with its G completions under it (depth 2); "naive" copies
the prompt into every sample (depth 1, the baseline). Both give the same loss view [B, G, R].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from zorro_jax import attention
from zorro_jax.layouts import MicroBatch, group_tree, pack_groups_balanced, replicated_trees

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


def pack_groups(groups, *, mode: str, tiles: tuple[int, int], cfg: PackingConfig = PackingConfig(),
                pad_id: int = 0, loss_width: int | None = None) -> list[MicroBatch]:
    """[(prompt ids, [completion ids] × G), ...] (NumPy arrays or sequences; group b is b) ->
    micro-batches whose loss views are [B_local, G, loss_width or the longest completion]."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not groups:
        raise ValueError("pack_groups needs at least one group")
    if mode == "prompt_once":
        trees = [group_tree(p, cs, b) for b, (p, cs) in enumerate(groups)]
    else:
        trees = [t for b, (p, cs) in enumerate(groups) for t in replicated_trees(p, cs, b)]
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
