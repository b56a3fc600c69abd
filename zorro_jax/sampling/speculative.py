"""Speculative group sampling: a small draft proposes γ tokens, the policy verifies them at once.

Both models keep a shared-prefix cache (`SharedPrefixKVCache`): each prompt (or, for a
`PromptTree`, each root and each question on top of it) is prefilled once per model, every
sample owns a suffix, and every step reads each prefix level once for all samples under it. One
iteration of the jitted loop, per sample:

1. the draft catches up on the tokens it has not seen (the last emitted token, plus the last
   draft when the previous round accepted everything) in one T=2 step, then proposes γ tokens
   d_1..d_γ autoregressively with T=1 steps;
2. the policy runs ONE `shared_prefix_step` over [last, d_1..d_γ] (T = γ+1), which gives its
   distributions p_0..p_γ;
3. d_k is accepted with probability min(1, p(d_k)/q(d_k)) (p, q after the same temperature /
   top-k / top-p processing); at the first rejection a replacement is drawn from
   norm(max(0, p − q)); if all γ are accepted a bonus token is drawn from p_γ. So every round
   emits between 1 and γ+1 tokens and the samples follow the policy's distribution exactly.

Each cache advances its suffix length only by the tokens that stay; positions written beyond
that are overwritten by later steps. Greedy mode accepts d_k iff it equals the policy argmax and
emits the argmax, so it reproduces greedy `generate`. The recorded log-probs are the policy's
`policy_logprob` of every emitted token, as in `sampler.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zorro_jax.layouts import bucket
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.transformer import Transformer
from zorro_jax.sampling.cache import SharedPrefixKVCache, shared_prefix_prefill, shared_prefix_step
from zorro_jax.sampling.processors import policy_logprob, process_logits
from zorro_jax.sampling.sampler import (
    DrawSpec,
    PromptTree,
    Rollouts,
    SamplerConfig,
    check_request,
    flat_prompts,
    is_stop,
    pack_levels,
    prefill_and_draw,
    to_rollouts,
)

# Deliberately wrong acceptance rules, used only by the tests to show the exactness test has
# power: "always_accept" keeps every draft, "resample_p" redraws rejections from p.
_WRONG_RULES = (None, "always_accept", "resample_p")


@dataclasses.dataclass(frozen=True)
class SpeculativeConfig:
    """Draft tokens proposed per sample per policy forward (gamma)."""

    # Draft tokens proposed per sample per policy forward.
    gamma: int = 4

    def __post_init__(self):
        if self.gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {self.gamma}")


def draft_config(policy_cfg: ModelConfig, hidden_size: int = 128, num_layers: int = 2,
                 num_heads: int = 2, num_kv_heads: int = 1, head_dim: int | None = None,
                 intermediate_size: int | None = None) -> ModelConfig:
    """A small model of the policy's family and vocabulary (same ids, same special tokens)."""
    head_dim = head_dim or max(8, hidden_size // num_heads)
    return dataclasses.replace(
        policy_cfg, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
        intermediate_size=intermediate_size or 4 * hidden_size,
    )


def _verify(key, d_BxGxN, q_BxGxNxV, plog_BxGxN1xV, spec: DrawSpec, wrong_rule):
    """Accept/reject N=γ drafts against the policy logits at N+1 positions.

    q are the draft's processed logits (what d was drawn from). Returns (emitted tokens
    [B, G, N+1] of which the first n_acc + 1 are real, n_acc [B, G]).
    """
    n = d_BxGxN.shape[-1]
    if spec.greedy:
        best_BxGxN1 = jnp.argmax(plog_BxGxN1xV, axis=-1).astype(jnp.int32)
        ok_BxGxN = d_BxGxN == best_BxGxN1[..., :n]
        n_acc_BxG = jnp.sum(jnp.cumprod(ok_BxGxN.astype(jnp.int32), axis=-1), axis=-1)
        x_BxG = jnp.take_along_axis(best_BxGxN1, n_acc_BxG[..., None], axis=-1)[..., 0]
    else:
        k_acc, k_res = jax.random.split(key)
        p_BxGxN1xV = jax.nn.softmax(process_logits(plog_BxGxN1xV, temperature=spec.temperature,
                                                   top_k=spec.top_k, top_p=spec.top_p), axis=-1)
        q_BxGxNxV = jax.nn.softmax(q_BxGxNxV, axis=-1)
        pick = lambda a, t: jnp.take_along_axis(a, t[..., None], axis=-1)[..., 0]
        p_d = pick(p_BxGxN1xV[..., :n, :], d_BxGxN)
        q_d = pick(q_BxGxNxV, d_BxGxN)
        u_BxGxN = jax.random.uniform(k_acc, d_BxGxN.shape)
        # q(d) > 0 since d was drawn from q; u < p/q as u·q < p avoids the division.
        ok_BxGxN = u_BxGxN * q_d < p_d
        if wrong_rule == "always_accept":
            ok_BxGxN = jnp.ones_like(ok_BxGxN)
        n_acc_BxG = jnp.sum(jnp.cumprod(ok_BxGxN.astype(jnp.int32), axis=-1), axis=-1)
        # Residual at position n_acc: norm(max(0, p − q)) on a rejection, p itself for the bonus
        # (q padded with zeros at position N).
        v = q_BxGxNxV.shape[-1]
        b, g = n_acc_BxG.shape
        q_pad = jnp.concatenate([q_BxGxNxV, jnp.zeros((b, g, 1, v), q_BxGxNxV.dtype)], axis=2)
        idx = n_acc_BxG[:, :, None, None]
        p_at = jnp.take_along_axis(p_BxGxN1xV, idx, axis=2)[:, :, 0]
        q_at = jnp.take_along_axis(q_pad, idx, axis=2)[:, :, 0]
        res_BxGxV = p_at if wrong_rule == "resample_p" else jnp.maximum(p_at - q_at, 0.0)
        # p == q exactly leaves nothing to resample; rejection then has probability 0 anyway.
        empty_BxG1 = jnp.sum(res_BxGxV, axis=-1, keepdims=True) <= 0
        res_BxGxV = jnp.where(empty_BxG1, p_at, res_BxGxV)
        x_BxG = jax.random.categorical(k_res, jnp.log(res_BxGxV), axis=-1).astype(jnp.int32)
    k_BxGxN1 = jnp.arange(n + 1, dtype=jnp.int32)[None, None, :]
    d_pad = jnp.concatenate([d_BxGxN, jnp.zeros(d_BxGxN.shape[:2] + (1,), jnp.int32)], axis=-1)
    e_BxGxN1 = jnp.where(k_BxGxN1 < n_acc_BxG[..., None], d_pad, x_BxG[..., None])
    return e_BxGxN1, n_acc_BxG


def _spec_loop(policy, draft, pcache, dcache, tok0_BxG, logp0_BxG, key, max_new, spec: DrawSpec,
               gamma: int, response_size: int, wrong_rule):
    b, g = tok0_BxG.shape
    n1 = gamma + 1
    tokens_BxGxR = jnp.full((b, g, response_size), spec.pad_id, jnp.int32).at[:, :, 0].set(tok0_BxG)
    logp_BxGxR = jnp.zeros((b, g, response_size), jnp.float32).at[:, :, 0].set(logp0_BxG)
    lengths_BxG = jnp.ones((b, g), jnp.int32)
    done_BxG = is_stop(tok0_BxG, spec) | (max_new <= 1)
    # catch_BxG: the draft has not seen prev_BxG (the last draft of a fully accepted round).
    catch_BxG = jnp.zeros((b, g), bool)
    prev_BxG = jnp.zeros((b, g), jnp.int32)
    stats = jnp.zeros((3,), jnp.int32)  # rounds, live sample-rounds, accepted drafts

    def draft_logits(h):
        x = draft.logits(h)
        return x if spec.greedy else process_logits(x, temperature=spec.temperature,
                                                    top_k=spec.top_k, top_p=spec.top_p)

    def draw_draft(k, x_BxGxV):
        if spec.greedy:
            return jnp.argmax(x_BxGxV, axis=-1).astype(jnp.int32)
        return jax.random.categorical(k, x_BxGxV, axis=-1).astype(jnp.int32)

    def cond(carry):
        return ~jnp.all(carry[4])

    def body(carry):
        it, pcache, dcache, last_BxG, done_BxG, catch_BxG, prev_BxG, toks, logps, lengths, stats = carry
        live_BxG = ~done_BxG
        key_it = jax.random.fold_in(key, it)
        k_draft, k_verify = jax.random.split(key_it)
        # Draft catch-up: [prev, last] when prev is unseen, else [last, pad] with one real token.
        first_BxGx2 = jnp.stack([jnp.where(catch_BxG, prev_BxG, last_BxG),
                                 jnp.where(catch_BxG, last_BxG, spec.pad_id)], axis=-1)
        n_first_BxG = 1 + catch_BxG.astype(jnp.int32)
        base_BxG = dcache.suffix_len_BxG
        h_BxGx2xE, dcache = shared_prefix_step(draft, dcache, first_BxGx2, n_first_BxG, spec.impl)
        h_BxGxE = jnp.take_along_axis(h_BxGx2xE, (n_first_BxG - 1)[:, :, None, None], axis=2)[:, :, 0]
        q_BxGxV = draft_logits(h_BxGxE)
        d_list, q_list = [draw_draft(jax.random.fold_in(k_draft, 0), q_BxGxV)], [q_BxGxV]
        for j in range(1, gamma):
            h_BxGx1xE, dcache = shared_prefix_step(draft, dcache, d_list[-1][:, :, None],
                                                   jnp.ones((b, g), jnp.int32), spec.impl)
            q_BxGxV = draft_logits(h_BxGx1xE[:, :, 0])
            d_list.append(draw_draft(jax.random.fold_in(k_draft, j), q_BxGxV))
            q_list.append(q_BxGxV)
        d_BxGxN = jnp.stack(d_list, axis=-1)
        q_BxGxNxV = jnp.stack(q_list, axis=2)

        verify_BxGxN1 = jnp.concatenate([last_BxG[:, :, None], d_BxGxN], axis=-1)
        h_BxGxN1xE, pcache_new = shared_prefix_step(policy, pcache, verify_BxGxN1,
                                                    jnp.zeros((b, g), jnp.int32), spec.impl)
        plog_BxGxN1xV = policy.logits(h_BxGxN1xE)
        e_BxGxN1, n_acc_BxG = _verify(k_verify, d_BxGxN, q_BxGxNxV, plog_BxGxN1xV, spec, wrong_rule)
        lp_BxGxN1 = policy_logprob(plog_BxGxN1xV, e_BxGxN1, temperature=spec.temperature)

        # Emit n_acc + 1 tokens, cut after the first stop token and at the token budget.
        k_BxGxN1 = jnp.arange(n1, dtype=jnp.int32)[None, None, :]
        count_BxG = n_acc_BxG + 1
        stop_BxGxN1 = is_stop(e_BxGxN1, spec) & (k_BxGxN1 < count_BxG[..., None])
        first_stop_BxG = jnp.argmax(stop_BxGxN1, axis=-1).astype(jnp.int32)
        stopped_BxG = jnp.any(stop_BxGxN1, axis=-1)
        count_BxG = jnp.where(stopped_BxG, first_stop_BxG + 1, count_BxG)
        count_BxG = jnp.minimum(count_BxG, max_new - lengths)
        count_BxG = jnp.where(live_BxG, count_BxG, 0)
        keep_BxGxN1 = k_BxGxN1 < count_BxG[..., None]
        pos_BxGxN1 = jnp.where(keep_BxGxN1, lengths[..., None] + k_BxGxN1, response_size)
        bi = jnp.arange(b)[:, None, None]
        gi = jnp.arange(g)[None, :, None]
        toks = toks.at[bi, gi, pos_BxGxN1].set(e_BxGxN1, mode="drop")
        logps = logps.at[bi, gi, pos_BxGxN1].set(lp_BxGxN1, mode="drop")
        new_lengths = lengths + count_BxG
        done_BxG = done_BxG | stopped_BxG | (new_lengths >= max_new)

        # The policy keeps [last, the emitted tokens but the final one]; that one is the new last.
        pcache = pcache_new._replace(suffix_len_BxG=pcache.suffix_len_BxG + count_BxG)
        # The draft saw its catch-up tokens and d_1..d_{γ-1}; it keeps what was emitted of them.
        kept_drafts_BxG = jnp.maximum(jnp.minimum(count_BxG - 1, gamma - 1), 0)
        dlen_BxG = jnp.where(live_BxG, base_BxG + n_first_BxG + kept_drafts_BxG, base_BxG)
        dcache = dcache._replace(suffix_len_BxG=dlen_BxG)
        catch_BxG = live_BxG & (count_BxG == n1)
        prev_BxG = d_BxGxN[:, :, -1]
        last_idx = jnp.maximum(count_BxG - 1, 0)[..., None]
        new_last = jnp.take_along_axis(e_BxGxN1, last_idx, axis=-1)[..., 0]
        last_BxG = jnp.where(live_BxG, new_last, last_BxG)
        n_live = jnp.sum(live_BxG.astype(jnp.int32))
        # Accepted by the rule, even where a stop token or the budget then cut the round short.
        acc = jnp.sum(jnp.where(live_BxG, n_acc_BxG, 0))
        stats = stats + jnp.stack([jnp.int32(1), n_live, acc.astype(jnp.int32)])
        return (it + 1, pcache, dcache, last_BxG, done_BxG, catch_BxG, prev_BxG, toks, logps,
                new_lengths, stats)

    carry = (jnp.int32(1), pcache, dcache, tok0_BxG, done_BxG, catch_BxG, prev_BxG, tokens_BxGxR,
             logp_BxGxR, lengths_BxG, stats)
    out = jax.lax.while_loop(cond, body, carry)
    return out[7], out[8], out[9], out[10]


_STATIC = ("pgraph", "dgraph", "spec", "group_size", "response_size", "gamma", "wrong_rule")


@functools.partial(jax.jit, static_argnames=_STATIC)
def speculative_generate_jit(pgraph, pstate, dgraph, dstate, prompt_levels, key, max_new, *, spec,
                             group_size, response_size, gamma, wrong_rule=None):
    """Prefill both models once per prefix entry (a tuple of `PromptLevel`s), draw token 0 from the
    policy, then the speculative loop.

    Returns (tokens [B,G,R], logp [B,G,R], lengths [B,G], stats [rounds, sample-rounds, accepted]).
    """
    policy = nnx.merge(pgraph, pstate)
    draft = nnx.merge(dgraph, dstate)
    pcache, tok0, logp0 = prefill_and_draw(policy, prompt_levels, key, spec, group_size,
                                           response_size)
    _, dcache = shared_prefix_prefill(draft, prompt_levels, group_size, response_size, spec.impl)
    return _spec_loop(policy, draft, pcache, dcache, tok0, logp0, jax.random.fold_in(key, 1),
                      max_new, spec, gamma, response_size, wrong_rule)


def _response_size(cfg: SamplerConfig, gamma: int) -> int:
    """Suffix / output buffer length: every round writes γ+1 slots past a suffix length
    < max_new, and the output buffer takes up to γ+1 tokens past a length < max_new."""
    need = cfg.max_new_tokens + gamma + 1
    buckets = cfg.response_buckets if cfg.response_buckets and cfg.response_buckets[-1] >= need else ()
    return bucket(need, buckets)


def generate_speculative(policy_model: Transformer, draft_model: Transformer,
                         prompts: list[list[int]] | PromptTree, group_size: int,
                         sampler_cfg: SamplerConfig, rng: jax.Array,
                         gamma: int | SpeculativeConfig = 4, *, _wrong_rule: str | None = None) -> tuple[Rollouts, dict]:
    """Sample `group_size` completions per prompt with the policy's distribution, drafting with
    `draft_model`; a PromptTree holds each root and question once in both models' caches (rows
    root-major, as in `generate`). Returns (Rollouts, stats) where stats holds:

    acceptance_rate (drafts accepted by the rule / drafts proposed), tokens_per_policy_forward (mean tokens a
    live sample gains per verify), policy_forwards (verify rounds + 1 prefill), draft_forwards
    (per round: 1 catch-up + γ−1 proposal steps, + 1 prefill), and seconds (wall clock, no split:
    draft and verify run inside one compiled loop; the first call of a shape includes compilation).
    """
    gamma = (gamma if isinstance(gamma, SpeculativeConfig) else SpeculativeConfig(gamma)).gamma
    if _wrong_rule not in _WRONG_RULES:
        raise ValueError(f"unknown rule {_wrong_rule!r}")
    cfg = sampler_cfg
    vocab = policy_model.config.vocab_size
    if draft_model.config.vocab_size != vocab:
        raise ValueError(f"draft vocab {draft_model.config.vocab_size} != policy vocab {vocab}")
    check_request(prompts, group_size, cfg, vocab)
    levels = pack_levels(prompts, cfg)
    response_size = _response_size(cfg, gamma)
    pgraph, pstate = nnx.split(policy_model)
    dgraph, dstate = nnx.split(draft_model)
    t0 = time.perf_counter()
    tokens, logp, lengths, stats = speculative_generate_jit(
        pgraph, pstate, dgraph, dstate, levels, rng, jnp.int32(cfg.max_new_tokens),
        spec=cfg.draw_spec(), group_size=group_size, response_size=response_size, gamma=gamma,
        wrong_rule=_wrong_rule)
    level_shapes = [level.stored_shape() for level in levels]
    kv = sum(SharedPrefixKVCache.abstract(m.config, level_shapes, group_size, response_size).nbytes()
             for m in (policy_model, draft_model))
    out = to_rollouts(tokens, logp, lengths, flat_prompts(prompts), cfg.max_new_tokens, kv)
    seconds = time.perf_counter() - t0
    rounds, sample_rounds, accepted = (int(x) for x in np.asarray(stats))
    emitted_in_loop = int(out.lengths_BxG.sum()) - out.lengths_BxG.size
    stats_out = {
        "gamma": gamma,
        "acceptance_rate": accepted / max(1, sample_rounds * gamma),
        "tokens_per_policy_forward": emitted_in_loop / max(1, sample_rounds),
        "policy_forwards": rounds + 1,
        "draft_forwards": rounds * gamma + 1,
        "sample_rounds": sample_rounds,
        "seconds": seconds,
    }
    return out, stats_out


@functools.partial(jax.jit, static_argnames=("pgraph", "dgraph", "group_size", "response_size", "impl"))
def _prefill_both(pgraph, pstate, dgraph, dstate, prompt_levels, *, group_size, response_size, impl):
    policy, draft = nnx.merge(pgraph, pstate), nnx.merge(dgraph, dstate)
    _, pcache = shared_prefix_prefill(policy, prompt_levels, group_size, response_size, impl)
    _, dcache = shared_prefix_prefill(draft, prompt_levels, group_size, response_size, impl)
    return pcache, dcache


@functools.partial(jax.jit, static_argnames=("dgraph", "gamma", "impl"))
def _draft_round(dgraph, dstate, dcache, last_BxG, *, gamma, impl):
    """The draft's work in one round: a T=2 catch-up step, then γ−1 T=1 steps, with logits."""
    draft = nnx.merge(dgraph, dstate)
    b, g = last_BxG.shape
    h, dcache = shared_prefix_step(draft, dcache, jnp.stack([last_BxG, last_BxG], -1),
                                   jnp.full((b, g), 2, jnp.int32), impl)
    tok = jnp.argmax(draft.logits(h[:, :, -1]), axis=-1).astype(jnp.int32)
    for _ in range(1, gamma):
        h, dcache = shared_prefix_step(draft, dcache, tok[:, :, None], jnp.ones((b, g), jnp.int32), impl)
        tok = jnp.argmax(draft.logits(h[:, :, 0]), axis=-1).astype(jnp.int32)
    return tok


@functools.partial(jax.jit, static_argnames=("pgraph", "gamma", "impl"))
def _verify_round(pgraph, pstate, pcache, last_BxG, *, gamma, impl):
    """The policy's work in one round: one T=γ+1 step and its logits."""
    policy = nnx.merge(pgraph, pstate)
    b, g = last_BxG.shape
    toks = jnp.broadcast_to(last_BxG[:, :, None], (b, g, gamma + 1))
    h, _ = shared_prefix_step(policy, pcache, toks, jnp.zeros((b, g), jnp.int32), impl)
    return jnp.argmax(policy.logits(h), axis=-1)


def measure_round_costs(policy_model: Transformer, draft_model: Transformer,
                        prompts: list[list[int]] | PromptTree, group_size: int, sampler_cfg: SamplerConfig, gamma: int, repeats: int = 3) -> dict:
    """Seconds of the draft's share and of the policy's share of one speculative round.

    The speculative loop is one compiled `while_loop`, so its draft and verify parts cannot be
    timed from inside. This times, outside the loop but at the same shapes (B prompts, G samples,
    the same cache sizes), the draft's round (catch-up + γ−1 proposal steps) and the policy's
    round (one γ+1-token verify step), each compiled first and then the median of `repeats` runs.
    `split_time` apportions a measured loop time between the two with these costs.
    Returns {"draft_round_s", "verify_round_s", "draft_fraction"}.
    """
    cfg = sampler_cfg
    levels = pack_levels(prompts, cfg)
    response_size = _response_size(cfg, gamma)
    pgraph, pstate = nnx.split(policy_model)
    dgraph, dstate = nnx.split(draft_model)
    impl = cfg.draw_spec().impl
    pcache, dcache = _prefill_both(pgraph, pstate, dgraph, dstate, levels,
                                   group_size=group_size, response_size=response_size, impl=impl)
    last = jnp.full((levels[-1].len_N.shape[0], group_size), cfg.pad_token_id, jnp.int32)

    def median_seconds(fn):
        jax.block_until_ready(fn())
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    t_draft = median_seconds(lambda: _draft_round(dgraph, dstate, dcache, last, gamma=gamma, impl=impl))
    t_verify = median_seconds(lambda: _verify_round(pgraph, pstate, pcache, last, gamma=gamma, impl=impl))
    return {"draft_round_s": t_draft, "verify_round_s": t_verify,
            "draft_fraction": t_draft / max(t_draft + t_verify, 1e-12)}


def split_time(seconds: float, costs: dict) -> dict:
    """Apportion a speculative generation's wall time into estimated draft and verify seconds."""
    f = costs["draft_fraction"]
    return {"time_draft_est": seconds * f, "time_verify_est": seconds * (1.0 - f)}
