"""Group sampler: B prompts, G independent completions each, jitted prefill + decode loop.

Prompts come as a list (B unique prompts) or as a `PromptTree` (D shared roots, e.g. database
schemas, with k questions each: B = D·k prompts root ++ question, ordered root-major). Two modes
with the same interface and the same random draws:
- "shared": a cascade of shared prefixes (`SharedPrefixKVCache`). A list of prompts is one prefix
  level (each prompt prefilled once, its KV stored once per group); a PromptTree is two (each
  root once, each question once on top of it, the questions of a root packed side by side in one
  cache row). Every decode step reads each level's KV once for
  all the samples under it.
- "naive": each (concatenated) prompt is replicated G times into B·G rows of a `DenseKVCache`
  (the baseline every replicated-prompt RL stack uses), prefilled and decoded with `dense_step`.

The draw for sample (b, g) at step r depends only on (key, r, b, g): the key of step r is
`fold_in(key, r)` and one categorical draw is made over logits shaped [B, G, V] in every mode
and for both prompt forms. So with the same key the modes, and a PromptTree and its concatenated
prompts, emit the same tokens (up to float noise in the logits), which the tests use as a strong
end-to-end check.

Jitted entry points are pure functions of (graphdef, state, ...) via `nnx.merge`; the decode
loop donates the cache it is given. Each level's length and the response buffer R are rounded up
to buckets and B, G are static, so a training run compiles a handful of programs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zorro_jax.attention import IMPLS
from zorro_jax.layouts import Dense, bucket
from zorro_jax.model.forward import DenseKVCache, dense_prefill, dense_step
from zorro_jax.model.transformer import Transformer
from zorro_jax.sampling.cache import (
    PromptLevel,
    SharedPrefixKVCache,
    dense_impl,
    shared_prefix_prefill,
    shared_prefix_step,
)
from zorro_jax.sampling.processors import policy_logprob, sample_tokens

MODES = ("shared", "naive")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How rollouts are drawn: token budget, temperature / top-k / top-p or greedy, stop and pad
    ids, attention backend and length buckets.
    """

    # Upper bound on generated tokens per sample (the stop token, if any, counts).
    max_new_tokens: int = 64
    # Softmax temperature for sampling and for the recorded log-probs (ignored when greedy).
    temperature: float = 1.0
    # Keep only the k most likely tokens; 0 disables.
    top_k: int = 0
    # Nucleus sampling mass; 1.0 disables.
    top_p: float = 1.0
    # Argmax decoding; log-probs are then recorded at temperature 1.
    greedy: bool = False
    # A sample stops after emitting any of these (the token is part of its completion).
    eos_token_ids: tuple[int, ...] = ()
    # Generate exactly max_new_tokens for every sample (benchmarks).
    ignore_eos: bool = False
    # Fills completions after a sample stops.
    pad_token_id: int = 0
    # "reference" | "xla" | "pallas"; None picks the platform default.
    attention_impl: str | None = None
    # Allowed padded prompt lengths (ascending); empty means powers of two >= 16.
    prompt_buckets: tuple[int, ...] = ()
    # Allowed response buffer lengths (ascending); empty means powers of two >= 16.
    response_buckets: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.eos_token_ids, tuple) or any(
            not isinstance(t, int) or t < 0 for t in self.eos_token_ids
        ):
            raise ValueError(f"eos_token_ids must be a tuple of non-negative ints, got {self.eos_token_ids!r}")
        if self.pad_token_id < 0:
            raise ValueError(f"pad_token_id must be >= 0, got {self.pad_token_id}")
        if self.attention_impl is not None and self.attention_impl not in IMPLS:
            raise ValueError(f"attention_impl must be None or one of {IMPLS}, got {self.attention_impl!r}")
        for name in ("prompt_buckets", "response_buckets"):
            b = getattr(self, name)
            if any(x <= 0 for x in b) or list(b) != sorted(set(b)):
                raise ValueError(f"{name} must be strictly ascending positive ints, got {b!r}")
        if self.response_buckets and self.response_buckets[-1] < self.max_new_tokens:
            raise ValueError(
                f"max_new_tokens {self.max_new_tokens} exceeds the largest response bucket "
                f"{self.response_buckets[-1]}"
            )

    def draw_spec(self) -> DrawSpec:
        """The static knobs of the jitted prefill/decode programs."""
        return DrawSpec(
            greedy=self.greedy,
            temperature=1.0 if self.greedy else float(self.temperature),
            top_k=self.top_k,
            top_p=float(self.top_p),
            stop_ids=() if self.ignore_eos else tuple(self.eos_token_ids),
            pad_id=self.pad_token_id,
            impl=self.attention_impl,
        )


@dataclasses.dataclass(frozen=True)
class PromptTree:
    """Prompts that share their first part: D roots (e.g. database schemas) with k questions
    each. The B = D·k prompts are roots[d] ++ questions[d][j], row d·k + j (root-major)."""

    # The D shared parts.
    roots: list[list[int]]
    # questions[d]: the k per-question parts under root d (the same k for every root).
    questions: list[list[list[int]]]

    def __post_init__(self):
        if not self.roots:
            raise ValueError("a PromptTree needs at least one root")
        if len(self.questions) != len(self.roots):
            raise ValueError(f"{len(self.roots)} roots but questions for {len(self.questions)}")
        counts = sorted({len(qs) for qs in self.questions})
        if counts[0] < 1 or len(counts) > 1:
            raise ValueError(f"every root needs the same number k >= 1 of questions, got {counts}")
        if min(map(len, self.roots)) < 1 or min(len(q) for qs in self.questions for q in qs) < 1:
            raise ValueError("every root and every question needs at least one token")

    def prompts(self) -> list[list[int]]:
        """The B concatenated prompts, root-major."""
        return [list(r) + list(q) for r, qs in zip(self.roots, self.questions) for q in qs]


def flat_prompts(prompts: list[list[int]] | PromptTree) -> list[list[int]]:
    """Each row's whole prompt (a PromptTree's roots ++ questions)."""
    return prompts.prompts() if isinstance(prompts, PromptTree) else list(prompts)


class DrawSpec(NamedTuple):
    """Static part of a compiled program; max_new_tokens is not in it (it is a loop bound)."""

    greedy: bool
    temperature: float
    top_k: int
    top_p: float
    stop_ids: tuple[int, ...]
    pad_id: int
    impl: str | None


@dataclasses.dataclass
class Rollouts:
    """Host-side result of `generate` (NumPy), R = max_new_tokens."""

    # Generated ids; pad_token_id after a sample's stop.
    tokens_BxGxR: np.ndarray
    # Tokens per completion, the stop token included.
    lengths_BxG: np.ndarray
    # Policy log-prob of each generated token (0 on padding); see `policy_logprob`.
    logp_BxGxR: np.ndarray
    # Each row's whole prompt length (a PromptTree's root + question).
    prompt_lengths_B: np.ndarray
    # completions[b][g]: the generated ids of sample g of prompt b, without padding.
    completions: list[list[list[int]]]
    # K/V bytes of the cache the run used (every prefix level once + suffixes in shared mode,
    # replicated prompts in naive).
    kv_cache_bytes: int

    def mask_BxGxR(self) -> np.ndarray:
        """Boolean [B, G, R]: True at each completion's generated tokens."""
        r = self.tokens_BxGxR.shape[-1]
        return np.arange(r)[None, None, :] < self.lengths_BxG[:, :, None]


def draw_tokens(key, step, logits_BxGxV, spec: DrawSpec):
    """Tokens and policy log-probs for one step; the randomness depends on (key, step, b, g) only."""
    tok_BxG = sample_tokens(jax.random.fold_in(key, step), logits_BxGxV, greedy=spec.greedy,
                            temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p)
    return tok_BxG, policy_logprob(logits_BxGxV, tok_BxG, temperature=spec.temperature)


def is_stop(tok_BxG, spec: DrawSpec):
    """Boolean [B, G]: the token is one of the stop ids."""
    if not spec.stop_ids:
        return jnp.zeros(tok_BxG.shape, bool)
    return jnp.isin(tok_BxG, jnp.asarray(spec.stop_ids, jnp.int32))


def _decode_loop(step_fn: Callable, cache, tok0_BxG, logp0_BxG, key, max_new, spec: DrawSpec,
                 response_size: int):
    """Generate tokens 1..max_new-1 after the prefill's token 0, stopping early when all are done.

    step_fn(cache, last_BxG, live_BxG) -> (logits [B, G, V], cache) feeds each sample's last
    token; stopped samples are fed padding and do not advance their cache.
    """
    b, g = tok0_BxG.shape
    tokens_BxGxR = jnp.full((b, g, response_size), spec.pad_id, jnp.int32).at[:, :, 0].set(tok0_BxG)
    logp_BxGxR = jnp.zeros((b, g, response_size), jnp.float32).at[:, :, 0].set(logp0_BxG)
    done_BxG = is_stop(tok0_BxG, spec)
    lengths_BxG = jnp.ones((b, g), jnp.int32)

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < max_new) & ~jnp.all(done)

    def body(carry):
        i, cache, last_BxG, done_BxG, tokens_BxGxR, logp_BxGxR, lengths_BxG = carry
        live_BxG = ~done_BxG
        logits_BxGxV, cache = step_fn(cache, last_BxG, live_BxG)
        tok_BxG, lp_BxG = draw_tokens(key, i, logits_BxGxV, spec)
        tok_BxG = jnp.where(live_BxG, tok_BxG, spec.pad_id)
        lp_BxG = jnp.where(live_BxG, lp_BxG, 0.0)
        tokens_BxGxR = jax.lax.dynamic_update_slice(tokens_BxGxR, tok_BxG[:, :, None], (0, 0, i))
        logp_BxGxR = jax.lax.dynamic_update_slice(logp_BxGxR, lp_BxG[:, :, None], (0, 0, i))
        lengths_BxG = lengths_BxG + live_BxG.astype(jnp.int32)
        done_BxG = done_BxG | is_stop(tok_BxG, spec)
        return i + 1, cache, tok_BxG, done_BxG, tokens_BxGxR, logp_BxGxR, lengths_BxG

    carry = (jnp.int32(1), cache, tok0_BxG, done_BxG, tokens_BxGxR, logp_BxGxR, lengths_BxG)
    _, cache, _, _, tokens_BxGxR, logp_BxGxR, lengths_BxG = jax.lax.while_loop(cond, body, carry)
    return tokens_BxGxR, logp_BxGxR, lengths_BxG, cache


_STATIC = ("graphdef", "spec", "group_size", "response_size")


def prefill_and_draw(model: Transformer, prompt_levels, key, spec: DrawSpec, group_size: int,
                     response_size: int):
    """Prefill a cascade of prompt levels once each and draw every sample's first token from its
    row's last real position: (cache, first tokens [B, G], their log-probs [B, G])."""
    h_BxE, cache = shared_prefix_prefill(model, prompt_levels, group_size, response_size, spec.impl)
    logits_BxV = model.logits(h_BxE)
    b, v = logits_BxV.shape
    tok_BxG, logp_BxG = draw_tokens(key, 0, jnp.broadcast_to(logits_BxV[:, None], (b, group_size, v)),
                                    spec)
    return cache, tok_BxG, logp_BxG


@functools.partial(jax.jit, static_argnames=_STATIC)
def shared_prefill(graphdef, state, prompt_levels, key, *, spec, group_size, response_size):
    """`prefill_and_draw` of a tuple of `PromptLevel`s: (cache, first tokens [B, G], log-probs [B, G])."""
    return prefill_and_draw(nnx.merge(graphdef, state), prompt_levels, key, spec, group_size,
                            response_size)


@functools.partial(jax.jit, static_argnames=_STATIC[:2] + _STATIC[3:], donate_argnames=("cache",))
def shared_decode(graphdef, state, cache: SharedPrefixKVCache, tok0_BxG, logp0_BxG, key, max_new, *,
                  spec, response_size):
    """The decode loop on a shared-prefix cache: (tokens [B,G,R], logp [B,G,R], lengths [B,G], cache)."""
    model = nnx.merge(graphdef, state)

    def step(cache, last_BxG, live_BxG):
        h_BxGx1xE, cache = shared_prefix_step(model, cache, last_BxG[:, :, None],
                                              live_BxG.astype(jnp.int32), spec.impl)
        return model.logits(h_BxGx1xE[:, :, 0]), cache

    return _decode_loop(step, cache, tok0_BxG, logp0_BxG, key, max_new, spec, response_size)


@functools.partial(jax.jit, static_argnames=_STATIC)
def naive_prefill(graphdef, state, tokens_BxP, prompt_len_B, key, *, spec, group_size, response_size):
    """Replicate every prompt G times and prefill B·G rows into a cache of P + R per row."""
    model = nnx.merge(graphdef, state)
    b, p = tokens_BxP.shape
    rows = Dense(jnp.repeat(tokens_BxP, group_size, axis=0), jnp.repeat(prompt_len_B, group_size))
    logits_NxV, cache = dense_prefill(model, rows, p + response_size, dense_impl(spec.impl))
    tok_BxG, logp_BxG = draw_tokens(key, 0, logits_NxV.reshape(b, group_size, -1), spec)
    return cache, tok_BxG, logp_BxG


@functools.partial(jax.jit, static_argnames=_STATIC[:2] + _STATIC[3:], donate_argnames=("cache",))
def naive_decode(graphdef, state, cache: DenseKVCache, tok0_BxG, logp0_BxG, key, max_new, *,
                 spec, response_size):
    """The decode loop on B·G replicated rows with `dense_step`."""
    model = nnx.merge(graphdef, state)
    b, g = tok0_BxG.shape

    def step(cache, last_BxG, live_BxG):
        h_Nx1xE, cache = dense_step(model, cache, last_BxG.reshape(b * g, 1),
                                    live_BxG.reshape(b * g).astype(jnp.int32), dense_impl(spec.impl))
        return model.logits(h_Nx1xE[:, 0]).reshape(b, g, -1), cache

    return _decode_loop(step, cache, tok0_BxG, logp0_BxG, key, max_new, spec, response_size)


def check_request(prompts: list[list[int]] | PromptTree, group_size: int, cfg: SamplerConfig,
                  vocab: int) -> None:
    """ValueError unless there is a prompt, every prompt has tokens in [0, vocab), G >= 1 and
    the pad / stop ids are real tokens (the pad id is fed back to the model for stopped samples)."""
    rows = flat_prompts(prompts)
    if not rows:
        raise ValueError("generate needs at least one prompt")
    if min(map(len, rows)) < 1:
        raise ValueError("every prompt needs at least one token")
    bad = [t for p in rows for t in p if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt token ids out of range [0, {vocab}): {bad[:5]}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if max((cfg.pad_token_id, *cfg.eos_token_ids)) >= vocab:
        raise ValueError(f"pad/eos token ids must be < vocab size {vocab}")


def pack_prompts(prompts: list[list[int]], cfg: SamplerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad prompts to their length bucket: (tokens [B, P], lengths [B])."""
    if not prompts:
        raise ValueError("generate needs at least one prompt")
    lengths = np.asarray([len(p) for p in prompts], np.int32)
    if lengths.min() < 1:
        raise ValueError("every prompt needs at least one token")
    tokens = np.full((len(prompts), bucket(int(lengths.max()), cfg.prompt_buckets)), cfg.pad_token_id,
                     np.int32)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = p
    return tokens, lengths


def pack_side_by_side(groups: list[list[list[int]]], cfg: SamplerConfig) -> PromptLevel:
    """A packed prefix level: the entries of each group (the k questions of one root) side by
    side in one cache row, with no padding between them; the rows are padded to the length bucket
    of the longest group. The entries are also right-padded rows (`pack_prompts`) for the
    prefill, which writes them into their slots."""
    tokens_NxP, len_N = pack_prompts([e for group in groups for e in group], cfg)
    r, p = len(groups), tokens_NxP.shape[1]
    len_RxJ = len_N.reshape(r, -1)
    start_RxJ = np.cumsum(len_RxJ, axis=1) - len_RxJ
    slots = bucket(int(len_RxJ.sum(axis=1).max()), cfg.prompt_buckets)
    c_C = np.arange(slots)
    # Slot c of a row belongs to the last entry starting at or before it; slots past the row's
    # last entry are padding (they gather token 0 and lie outside every window).
    entry_RxC = (c_C[None, :, None] >= start_RxJ[:, None, :]).sum(axis=2) - 1
    offset_RxC = c_C[None, :] - np.take_along_axis(start_RxJ, entry_RxC, axis=1)
    real_RxC = c_C[None, :] < len_RxJ.sum(axis=1, keepdims=True)
    pack_RxC = np.where(real_RxC, entry_RxC * p + offset_RxC, 0).astype(np.int32)
    return PromptLevel(tokens_NxP, len_N, pack_RxC, start_RxJ.reshape(-1).astype(np.int32))


def pack_levels(prompts: list[list[int]] | PromptTree, cfg: SamplerConfig) -> tuple[PromptLevel, ...]:
    """Every prefix level in its own length bucket: a list of prompts (or a PromptTree's roots)
    as right-padded rows (`pack_prompts`), a PromptTree's questions packed side by side under
    their root (`pack_side_by_side`)."""
    if isinstance(prompts, PromptTree):
        return (PromptLevel(*pack_prompts(prompts.roots, cfg)),
                pack_side_by_side(prompts.questions, cfg))
    return (PromptLevel(*pack_prompts(list(prompts), cfg)),)


def generate(model: Transformer, prompts: list[list[int]] | PromptTree, group_size: int,
             cfg: SamplerConfig, rng: jax.Array, mode: str = "shared") -> Rollouts:
    """Sample `group_size` completions for each prompt (host-side API).

    With a PromptTree the rows are its D·k concatenated prompts, root-major; mode "shared" then
    holds each root and each question once (a three-level cascade) and draws the same tokens as
    `generate` on `prompts.prompts()`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_request(prompts, group_size, cfg, model.config.vocab_size)
    rows = flat_prompts(prompts)
    response_size = bucket(cfg.max_new_tokens, cfg.response_buckets)
    graphdef, state = nnx.split(model)
    spec = cfg.draw_spec()
    kw = {"spec": spec, "group_size": group_size, "response_size": response_size}
    if mode == "shared":
        cache, tok0, logp0 = shared_prefill(graphdef, state, pack_levels(prompts, cfg), rng, **kw)
        decode = shared_decode
    else:
        cache, tok0, logp0 = naive_prefill(graphdef, state, *pack_prompts(rows, cfg), rng, **kw)
        decode = naive_decode
    kv_bytes = cache.nbytes()
    tokens, logp, lengths, _ = decode(graphdef, state, cache, tok0, logp0, rng,
                                      jnp.int32(cfg.max_new_tokens), spec=spec,
                                      response_size=response_size)
    return to_rollouts(tokens, logp, lengths, rows, cfg.max_new_tokens, kv_bytes)


def to_rollouts(tokens_BxGxR, logp_BxGxR, lengths_BxG, rows: list[list[int]], max_new: int,
                kv_bytes: int) -> Rollouts:
    """Host-side `Rollouts` of the first len(rows) rows (a sharded run pads B), cut to max_new."""
    n = len(rows)
    tokens = np.asarray(tokens_BxGxR)[:n, :, :max_new]
    lengths = np.asarray(lengths_BxG)[:n]
    completions = [[tokens[b, g, : lengths[b, g]].tolist() for g in range(tokens.shape[1])]
                   for b in range(n)]
    prompt_lengths_B = np.asarray([len(p) for p in rows], np.int32)
    return Rollouts(tokens, lengths, np.asarray(logp_BxGxR)[:n, :, :max_new], prompt_lengths_B,
                    completions, kv_bytes)
