"""Shared-prefix decode attention over a cascade of prefix levels: each level's KV is read once
per step for every sample under it.

At a decode (T = 1) or speculative-verify (T = γ+1) step, sample g of row b has T new queries.
Its keys are, level by level, the entry it hangs under (a database schema, then a question, ...:
level l holds B_l entries of real lengths [B_l], row b under entry b // (B/B_l)), then its own
suffix keys s <= q_start[b, g] + t ([B, G, S, K, D]; the new tokens' K/V are already written at
q_start .. q_start+T-1). Each part is computed separately and the
parts are merged exactly with the log-sum-exp helpers of `lse_merge`. Two-level decoding (one
prompt per row) is the cascade with one prefix level.

The prefix parts are the expensive ones. For level l and each KV head, the queries of all
(B/B_l)·G samples × T tokens × H//K query heads under an entry are stacked into one matrix, so
every KV block of the level is loaded once per entry and step and feeds a matrix product rather
than one matrix-vector product per sample.

A packed level stores several entries side by side in one cache row (the k questions of a
schema, with no padding between them): its rows are stacked per cache row as well, and each is
masked to its own entry's key window (`level_windows`).

Public functions:
- `shared_prefix_attention` (from `prefix_decode`, with its `BlockSizes`) — the Pallas kernel for
  one prefix level's part (o, lse), each query row within its key window.
- `shared_prefix_attention_xla` — the same part in plain jnp.
- `suffix_attention` (from `suffix_decode`, beside its Pallas kernel) — each sample's causal
  attention over its own suffix, in jnp.
- `shared_prefix_decode_attention` — levels ⊕ suffix, with impl "xla" or "pallas".
- `shared_prefix_decode_reference` — dense masked attention over all levels ++ suffix; ground truth.
"""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import suffix_decode
from pallas_kernels.lse_merge import merge_attention
from pallas_kernels.prefix_decode import (
    BlockSizes,
    shared_prefix_attention,
    shared_prefix_attention_xla,
)
from pallas_kernels.suffix_decode import default_scale, suffix_attention

_PREFIX_BLOCKS = BlockSizes()
_SUFFIX_BLOCKS = suffix_decode.BlockSizes()


def _check_levels(q_BxGxTxHxD, prefix_levels):
    if not prefix_levels:
        raise ValueError("decode attention needs at least one prefix level")
    b = q_BxGxTxHxD.shape[0]
    for i, (k_RxPxKxD, _v, len_N, *start) in enumerate(prefix_levels):
        n, r = len_N.shape[0], k_RxPxKxD.shape[0]
        if b % n or n % r:
            raise ValueError(
                f"prefix level {i} has {n} entries in {r} rows, which do not divide the {b} "
                f"rows of the queries (and the entries)"
            )
        if not start and n != r:
            raise ValueError(f"prefix level {i}: {n} entries in {r} rows need their key starts")


def level_windows(level, b, g):
    """(start [B, G], len [B, G]): the key window of every sample in its ancestor entry of a
    prefix level (k [R, P, K, D], v, len [N]) or, packed, (k, v, len [N], start [N]): row b
    hangs under entry b // (B/N), which is stored in row b // (B/R) at [start, start + len)."""
    _k, _v, len_N, *start = level
    n = len_N.shape[0]
    per_sample = lambda x_N: jnp.broadcast_to(
        jnp.repeat(x_N.astype(jnp.int32), b // n, total_repeat_length=b)[:, None], (b, g))
    start_BxG = per_sample(start[0]) if start else jnp.zeros((b, g), jnp.int32)
    return start_BxG, per_sample(len_N)


def stack_under_entries(x_BxGx_, num_entries):
    """[B, G, ...] -> [N, (B/N)·G, ...]: the rows under each of N prefix entries as one group.

    Row b hangs under entry b // (B/N) (levels nest row-major), so this is a free reshape.
    """
    b, g = x_BxGx_.shape[:2]
    return x_BxGx_.reshape(num_entries, (b // num_entries) * g, *x_BxGx_.shape[2:])


def shared_prefix_decode_attention(
    q_BxGxTxHxD,
    prefix_levels,
    k_suffix_BxGxSxKxD,
    v_suffix_BxGxSxKxD,
    q_start_BxG,
    *,
    impl="xla",
    sm_scale=None,
    block_sizes=_PREFIX_BLOCKS,
    suffix_block_sizes=_SUFFIX_BLOCKS,
    interpret=False,
    prompt_fn=None,
    suffix_fn=None,
):
    """Decode/verify attention over a cascade: (level 0) ⊕ ... ⊕ (last level) ⊕ (own suffix).

    prefix_levels: a sequence of (k [N, P, K, D], v [N, P, K, D], len [N]) per level, where level
    l has N = B_l entries, N divides B, and row b of the queries hangs under entry b // (B/N).
    A packed level holds its N entries side by side in R < N rows, (k [R, P, K, D], v, len [N],
    start [N]): entry n at keys [start, start + len) of row n // (N/R) (`level_windows`).
    For each level the queries of all rows under a cache row are stacked into one group
    (`stack_under_entries`), each masked to its own window, so every KV block of the level is
    read once per step for all of them.

    impl "pallas" runs the prefix parts with the Pallas kernel (tiles `block_sizes`) and the
    suffix part with `suffix_decode.suffix_attention_pallas` (tiles `suffix_block_sizes`), which
    visits only each sample's written keys; "xla" runs both in jnp. `prompt_fn` / `suffix_fn`,
    when given, replace the Pallas prefix / suffix functions (same signatures, e.g. the kernels
    under shard_map). Returns o [B, G, T, H, D] in q's dtype.
    """
    if impl not in ("xla", "pallas"):
        raise ValueError(f"impl must be 'xla' or 'pallas', got {impl!r}")
    _check_levels(q_BxGxTxHxD, prefix_levels)
    if impl == "pallas":
        prompt_fn = prompt_fn or shared_prefix_attention
        suffix_fn = functools.partial(suffix_fn or suffix_decode.suffix_attention_pallas,
                                      block_sizes=suffix_block_sizes, interpret=interpret)
    else:
        prompt_fn, suffix_fn = shared_prefix_attention_xla, suffix_attention
    b, g, t, h, d = q_BxGxTxHxD.shape
    # Every part stays fp32 until after the last merge, so a bf16 output is rounded once.
    o_BxGxTxHxD, lse_BxGxTxH = suffix_fn(
        q_BxGxTxHxD,
        k_suffix_BxGxSxKxD,
        v_suffix_BxGxSxKxD,
        q_start_BxG,
        sm_scale=sm_scale,
        out_dtype=jnp.float32,
    )
    for level in prefix_levels:
        k_RxPxKxD, v_RxPxKxD = level[:2]
        r = k_RxPxKxD.shape[0]
        start_BxG, len_BxG = level_windows(level, b, g)
        o_level, lse_level = prompt_fn(
            stack_under_entries(q_BxGxTxHxD, r),
            k_RxPxKxD,
            v_RxPxKxD,
            stack_under_entries(len_BxG, r),
            stack_under_entries(start_BxG, r),
            sm_scale=sm_scale,
            block_sizes=block_sizes,
            interpret=interpret,
            out_dtype=jnp.float32,
        )
        o_BxGxTxHxD, lse_BxGxTxH = merge_attention(
            o_level.reshape(b, g, t, h, d), lse_level.reshape(b, g, t, h), o_BxGxTxHxD, lse_BxGxTxH
        )
    return o_BxGxTxHxD.astype(q_BxGxTxHxD.dtype)


def shared_prefix_decode_reference(
    q_BxGxTxHxD,
    prefix_levels,
    k_suffix_BxGxSxKxD,
    v_suffix_BxGxSxKxD,
    q_start_BxG,
    *,
    sm_scale=None,
):
    """Dense ground truth: per sample, keys = its ancestor entry of every level ++ own suffix,
    under one mask; fp32 math."""
    _check_levels(q_BxGxTxHxD, prefix_levels)
    b, g, t, h, d = q_BxGxTxHxD.shape
    k = k_suffix_BxGxSxKxD.shape[3]
    s = k_suffix_BxGxSxKxD.shape[2]
    sm_scale = default_scale(sm_scale, d)
    f32 = jnp.float32

    keys, values, masks = [], [], []
    for level in prefix_levels:
        k_RxPxKxD, v_RxPxKxD = level[:2]
        r, p = k_RxPxKxD.shape[:2]
        # The cache row holding row b's ancestor entry at this level, and the entry's window.
        row_B = jnp.arange(b) // (b // r)
        for out, x_RxPxKxD in ((keys, k_RxPxKxD), (values, v_RxPxKxD)):
            out.append(jnp.broadcast_to(x_RxPxKxD[row_B][:, None], (b, g, p, k, d)))
        start_BxG, len_BxG = level_windows(level, b, g)
        pos_P = jnp.arange(p)
        visible_BxGxP = ((pos_P[None, None, :] >= start_BxG[..., None])
                         & (pos_P[None, None, :] < (start_BxG + len_BxG)[..., None]))
        masks.append(jnp.broadcast_to(visible_BxGxP[:, :, None, :], (b, g, t, p)))
    keys.append(k_suffix_BxGxSxKxD)
    values.append(v_suffix_BxGxSxKxD)
    last_BxGxT = q_start_BxG[:, :, None] + jnp.arange(t)[None, None, :]
    masks.append(jnp.arange(s)[None, None, None, :] <= last_BxGxT[..., None])

    def per_sample(parts):
        x_BxGxNxKxD = jnp.concatenate(parts, axis=2).astype(f32)
        return jnp.repeat(x_BxGxNxKxD, h // k, axis=3)  # [B, G, N, H, D]

    k_BxGxNxHxD, v_BxGxNxHxD = per_sample(keys), per_sample(values)
    mask_BxGxTxN = jnp.concatenate(masks, axis=-1)
    scores_BxGxHxTxN = (
        jnp.einsum("bgthd,bgnhd->bghtn", q_BxGxTxHxD.astype(f32), k_BxGxNxHxD) * sm_scale
    )
    scores_BxGxHxTxN = jnp.where(mask_BxGxTxN[:, :, None], scores_BxGxHxTxN, -jnp.inf)
    probs_BxGxHxTxN = jax.nn.softmax(scores_BxGxHxTxN, axis=-1)
    o_BxGxTxHxD = jnp.einsum("bghtn,bgnhd->bgthd", probs_BxGxHxTxN, v_BxGxNxHxD)
    return o_BxGxTxHxD.astype(q_BxGxTxHxD.dtype)
