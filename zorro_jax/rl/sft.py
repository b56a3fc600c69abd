"""Supervised warm start on (prompt, answer) pairs by teacher forcing.

Reuses the GRPO machinery: an example is a group with G = 1 packed into `PackedTree` rows by
the training packing policy (`zorro_jax.rl.batches`), the loss is the token-mean negative
log-likelihood of the answer (accumulated exactly over micro-batches), and the optimiser/apply
step are shared.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

import jax.numpy as jnp

from pallas_kernels.tree_blocks import list_bucket
from zorro_jax.attention import XLA_TREE_TILES
from zorro_jax.rl.batches import PackingConfig, pack_groups
from zorro_jax.rl.grpo import grouped_order
from zorro_jax.rl.optim import OptimConfig
from zorro_jax.rl.steps import add_grads, make_sft_grad_fn


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """Supervised warm start: steps, examples per step, data seed and optimiser."""

    # Optimiser steps of the warm start (0 = no SFT).
    steps: int = 200
    # Examples per optimiser step.
    batch_size: int = 16
    seed: int = 0
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=10, decay_steps=190)
    # Probability that an example is seen with the values its question and answer share swapped,
    # in both, for other values of the same shape (breaks memorised question->value pairings; see
    # zorro_jax.tasks.text2sql.augment).
    literal_swap: float = 0.0
    # How each step's examples are packed into micro-batches (token budget per row).
    packing: PackingConfig = PackingConfig()

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"need steps >= 0 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not 0.0 <= self.literal_swap <= 1.0:
            raise ValueError(f"literal_swap is a probability, got {self.literal_swap}")


def make_sft_step(graphdef, apply_fn, examples: list[tuple[list[int], list[int]]], cfg: SFTConfig,
                  pad_id: int = 0, impl=None,
                  swap: Callable[[int, random.Random], tuple[list[int], list[int]]] | None = None,
                  tiles: tuple[int, int] = XLA_TREE_TILES, keys: Sequence[str] | None = None,
                  shared_lens: Sequence[int] | None = None, per_key: int = 1, steps=None):
    """step_fn(step, state={'params', 'opt'}) -> (state, metrics row) for `run_phase`.

    `steps` (a mesh's `parallel.steps.TrainSteps`, instead of `apply_fn`): its sharded gradient
    and donating apply steps, with each micro-batch's rows placed over data × fsdp; the state
    must then be placed by it too (`place_params`, `init_opt`).

    `tiles` are the attention tiles the batches are packed with (`batches.tiles_for`).
    With per_key > 1 each step draws batch_size / per_key keys (databases, `keys[i]` of example i)
    with per_key examples each, and the examples of a key share their first `shared_lens[i]`
    prompt tokens (the schema) as one root segment, as in GRPO.

    With `cfg.literal_swap > 0`, `swap(i, rng)` gives example i with its literals swapped; which
    examples are swapped, and how, depends only on (seed, step), so a resumed run sees the same
    batches.
    """
    if not examples:
        raise ValueError("SFT needs at least one (prompt, answer) example")
    if per_key > 1 and (keys is None or shared_lens is None or cfg.batch_size % per_key):
        raise ValueError(f"per_key {per_key} > 1 needs keys, shared_lens and a batch size "
                         f"({cfg.batch_size}) that is a multiple of it")
    if cfg.literal_swap and swap is None:
        raise ValueError("literal_swap > 0 needs a swap function (the data source must support it)")
    if (steps is None) == (apply_fn is None):
        raise ValueError("make_sft_step needs exactly one of apply_fn (one device) and steps (a mesh)")
    if steps is None:
        grad_fn, place_batch, place_host = make_sft_grad_fn(graphdef, impl), None, None
    else:
        grad_fn, apply_fn, place_batch, place_host = steps.sft_grad, steps.apply, steps.place_batch, steps.place_host
    # One loss width for the run (the longest answer, bucketed; a longer literal-swapped answer
    # widens it for its step): fewer programs to compile.
    width = list_bucket(max(len(a) for _, a in examples))

    def example(step: int, j: int, i: int):
        if cfg.literal_swap:
            rng = random.Random(f"sft/{cfg.seed}/{step}/{j}")
            if rng.random() < cfg.literal_swap:
                return swap(i, rng)
        return examples[i]

    def step_fn(step: int, state):
        idx = grouped_order(keys if per_key > 1 else [""] * len(examples), per_key, cfg.seed,
                            (step - 1) * cfg.batch_size, cfg.batch_size)
        chosen = [example(step, j, i) for j, i in enumerate(idx)]
        mbs = pack_groups([(p, [a]) for p, a in chosen], mode="prompt_once", tiles=tiles,
                          cfg=cfg.packing, pad_id=pad_id,
                          loss_width=max(width, list_bucket(max(len(a) for _, a in chosen))),
                          shared_lens=[shared_lens[i] for i in idx] if per_key > 1 else None)
        n_tok = jnp.asarray(max(1, sum(len(a) for _, a in chosen)), jnp.float32)
        norm = n_tok if place_host is None else place_host(n_tok)
        loss, grads = 0.0, None
        for mb in mbs:
            packed = mb.packed if place_batch is None else place_batch(mb.packed)
            part_loss, _, part_grads = grad_fn(state["params"], packed, norm)
            loss, grads = loss + part_loss, add_grads(grads, part_grads)
        params, opt, gnorm, finite = apply_fn(state["params"], state["opt"], grads)
        row = {"loss": float(loss), "grad_norm": float(gnorm), "skipped_updates": int(not bool(finite)),
               "tokens": int(n_tok), "examples": len(chosen)}
        return {"params": params, "opt": opt}, row

    return step_fn
