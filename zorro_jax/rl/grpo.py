"""The GRPO training iteration and loop.

One iteration: pick prompts → rollouts with the shared-prefix sampler → rewards → group-relative
advantages → the rollouts packed into `PackedTree` micro-batches of whole groups (token budget,
`zorro_jax.rl.batches`) → old (and reference) log-probs with the prompt-once forward → `epochs`
passes over the micro-batches with gradient accumulation → AdamW. `mode="naive"` runs the same
iteration on replicated prompts (naive sampler, prompts copied into every packed sample): the
baseline.

Everything random derives from (seed, step), and the data order from (seed, position), so a run
restored from a checkpoint continues exactly as an uninterrupted one.

The jitted steps come from `parallel.steps.TrainSteps`: one device, or a mesh (params and
optimiser state sharded, packed rows split over data × fsdp, rollouts on the mesh). With several
processes every process runs the same iteration; each scores only its `host_bounds` slice of the
step's groups and the rewards are gathered, so every process packs the same batches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zorro_jax.model.lora import split_trainable
from zorro_jax.parallel.distributed import allgather_host, host_bounds, to_host
from zorro_jax.parallel.steps import TrainSteps, training_steps
from zorro_jax.rl.batches import (
    MODES,
    PackingConfig,
    pack_groups,
    rollout_groups,
    sample_mask,
    shared_runs,
    tiles_for,
)
from zorro_jax.rl.losses import LossConfig, compute_advantages, loss_normaliser
from zorro_jax.rl.optim import OptimConfig
from zorro_jax.rl.steps import add_grads
from zorro_jax.sampling.sampler import PromptTree, SamplerConfig, generate, pack_prompts

# rewards, details = reward_fn(completion texts, tasks)
RewardFn = Callable[[list[str], list[Any]], tuple[np.ndarray, list]]


@dataclasses.dataclass(frozen=True)
class SpeculativeRolloutConfig:
    """Speculative rollouts: a small draft proposes `gamma` tokens per sample, the policy verifies
    them in one forward with exact rejection sampling (same distribution as the plain sampler, the
    policy's log-probs). The draft is distilled from the starting policy before GRPO
    (`warmup_steps`, its own resumable phase) and then refreshed online on each iteration's
    rollouts so its acceptance follows the moving policy."""

    # Draft-and-verify rollouts instead of the plain shared-prefix sampler.
    enabled: bool = False
    # Draft tokens proposed per round (each round is one policy forward over gamma + 1 tokens).
    gamma: int = 4
    # Draft size (same family, tokenizer and vocabulary as the policy).
    draft_hidden_size: int = 64
    draft_layers: int = 1
    draft_heads: int = 2
    draft_kv_heads: int = 1
    # Online distillation: every `refresh_every` iterations (0 = never: the draft stays as warmed
    # up) the draft takes `refresh_steps` forward-KL steps on that iteration's rollouts against
    # the updated policy.
    refresh_every: int = 1
    refresh_steps: int = 1
    lr: float = 3e-3
    # Distillation steps before GRPO (0 = none), each on this many SFT examples: KL to the
    # starting policy at every position of the reference answer (teacher forcing, no sampling).
    warmup_steps: int = 200
    warmup_prompts_per_step: int = 16
    seed: int = 0

    def __post_init__(self):
        if self.gamma < 1:
            raise ValueError(f"speculative gamma must be >= 1, got {self.gamma}")
        for name in ("refresh_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"speculative {name} must be >= 0, got {getattr(self, name)}")
        for name in ("refresh_steps", "warmup_prompts_per_step", "draft_hidden_size", "draft_layers",
                     "draft_heads", "draft_kv_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"speculative {name} must be >= 1, got {getattr(self, name)}")
        if self.draft_heads % self.draft_kv_heads:
            raise ValueError("speculative draft_heads must be a multiple of draft_kv_heads")
        if self.lr <= 0:
            raise ValueError(f"speculative lr must be positive, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """One GRPO run: batch shape, optimisation, loss, sampler and (optional) speculative rollouts."""

    # GRPO iterations (rollouts + one or more updates each); 0 = none: the run only evaluates the
    # policy after SFT (with sft.steps 0 too, the checkpoint as loaded: a zero-shot figure).
    steps: int = 20
    # Unique prompts per iteration (B) and completions per prompt (G).
    prompts_per_step: int = 8
    group_size: int = 8
    # How rollouts are packed into micro-batches (token budget per row, rows per micro-batch);
    # gradients are accumulated over micro-batches (exactly).
    packing: PackingConfig = PackingConfig()
    # Optimisation passes over each iteration's rollouts (one update per pass).
    epochs: int = 1
    # "prompt_once" (ours) or "naive" (replicated prompts everywhere: the baseline).
    mode: str = "prompt_once"
    attention_impl: str | None = None
    seed: int = 0
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig(lr=2e-4, warmup_steps=2, decay_steps=50)
    sampler: SamplerConfig = SamplerConfig(max_new_tokens=64, temperature=1.0)
    # Reward at or above which a rollout counts as correct (the accuracy metrics).
    correct_threshold: float = 1.0
    # Held-out evaluation every this many GRPO steps (besides before and after GRPO); 0 = about
    # five times per run (steps // 5).
    eval_every: int = 0
    speculative: SpeculativeRolloutConfig = SpeculativeRolloutConfig()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0 = about five evaluations), got {self.eval_every}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0 = evaluate only), got {self.steps}")
        for name in ("prompts_per_step", "group_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2: group-relative advantages need a group")
        if self.speculative.enabled and self.mode != "prompt_once":
            raise ValueError("speculative rollouts run on shared-prefix caches: they need mode='prompt_once'")


def _permutation_stream(n: int, key: Sequence[int], position: int, count: int) -> list[int]:
    """Indices `position .. position+count-1` of an endless stream of seeded permutations of n."""
    out = []
    for pos in range(position, position + count):
        epoch, i = divmod(pos, n)
        out.append(int(np.random.default_rng([*key, epoch]).permutation(n)[i]))
    return out


def data_order(n: int, seed: int, position: int, count: int) -> list[int]:
    """Indices `position .. position+count-1` of an endless stream of seeded permutations."""
    if n < 1:
        raise ValueError("no training prompts")
    return _permutation_stream(n, [seed], position, count)


def grouped_order(keys: Sequence[str], per_key: int, seed: int, position: int, count: int) -> list[int]:
    """Like `data_order`, `per_key` items at a time from one key (a database): item positions
    `position .. position+count-1` (both multiples of per_key) are keys at positions
    position/per_key .. of a seeded stream of permutations of the distinct keys, each followed by
    per_key distinct items of that key: the next per_key of a seeded permutation of its items (a
    new permutation when fewer than per_key are left; a key with fewer items than per_key repeats
    some). Items of one key are adjacent in the result. per_key = 1 is `data_order` itself.
    Deterministic in (seed, position): a resumed run draws the same."""
    if per_key < 1:
        raise ValueError(f"questions per key must be >= 1, got {per_key}")
    if per_key == 1:
        return data_order(len(keys), seed, position, count)
    if not keys:
        raise ValueError("no training prompts")
    if position % per_key or count % per_key:
        raise ValueError(f"position {position} and count {count} must be multiples of {per_key}")
    names = sorted(set(keys))
    members = {name: [] for name in names}
    for i, k in enumerate(keys):
        members[k].append(i)
    out = []
    for pos in range(position // per_key, (position + count) // per_key):
        [d] = _permutation_stream(len(names), [seed], pos, 1)
        visit = pos // len(names)  # each key comes once per epoch of the key stream
        m = members[names[d]]
        windows = max(1, len(m) // per_key)  # visits per permutation of the key's items
        epoch, w = divmod(visit, windows)
        perm = np.random.default_rng([seed, 1, d, epoch]).permutation(len(m))
        out += [m[perm[(w * per_key + j) % len(m)]] for j in range(per_key)]
    return out


@dataclasses.dataclass
class PromptItem:
    """A task with its tokenised prompt (what the trainer needs of a data set): prompt_ids[:shared_len]
    is the part shared by every item of the same group_key (a database's schema), the rest the
    item's own (its question)."""

    task: Any
    prompt_ids: list[int]
    shared_len: int = 0
    group_key: str = ""


class Policy:
    """Mutable holder of (graphdef, params) so the sampler and the steps see the latest weights."""

    def __init__(self, graphdef, params):
        self.graphdef, self.params = graphdef, params

    def model(self):
        """The current policy as an NNX module (graphdef merged with the latest params)."""
        return nnx.merge(self.graphdef, self.params)


def decode_texts(tokenizer, completions: Sequence[Sequence[int]], stop_ids: Sequence[int]) -> list[str]:
    """Detokenise completions, dropping stop tokens."""
    stop = set(stop_ids)
    return [tokenizer.decode([t for t in c if t not in stop], skip_special_tokens=True)
            for c in completions]


def sampler_prompts(items: list[PromptItem], questions_per_key: int = 1):
    """What the sampler gets for `items`: with questions_per_key > 1, when the items form runs of
    exactly that many sharing their first shared_len tokens (as `grouped_order` draws them), a
    `PromptTree` (each shared part prefilled once, each question once on top of it); otherwise
    the list of whole prompts."""
    prompts = [it.prompt_ids for it in items]
    if questions_per_key == 1:
        return prompts
    runs = shared_runs(prompts, [it.shared_len for it in items])
    if any(end - first != questions_per_key for first, end in runs):
        return prompts
    return PromptTree(
        roots=[list(prompts[first][: items[first].shared_len]) for first, _ in runs],
        questions=[[list(prompts[b][items[b].shared_len:]) for b in range(first, end)]
                   for first, end in runs])


def score_slices(reward_fn: RewardFn, texts: list[str], tasks: list, per_group: int):
    """(rewards [B, per_group], this process's details) of B·per_group texts: each process runs
    the reward on its own `host_bounds` slice of the groups (reward execution stays local to the
    host) and the rewards are gathered onto every process."""
    n = len(texts) // per_group
    lo, hi = host_bounds(n, jax.process_index(), jax.process_count())
    rewards, details = reward_fn(texts[lo * per_group: hi * per_group], tasks[lo * per_group: hi * per_group])
    local = np.asarray(rewards, np.float32).reshape(hi - lo, per_group)
    return allgather_host(local, n), details


def rollout_and_score(policy: Policy, tokenizer, items: list[PromptItem], group: int,
                      sampler: SamplerConfig, key, reward_fn: RewardFn, mode: str, draft=None, gamma: int = 4,
                      questions_per_key: int = 1, steps: TrainSteps | None = None):
    """Generate G completions per item and score them.

    With `draft` (a draft model) the rollouts are speculative (exact: the policy's distribution).
    With questions_per_key > 1 (prompt-once mode) a database's schema is prefilled once for its
    questions (`sampler_prompts`). `steps` (a mesh's `TrainSteps`) runs the rollouts on its
    mesh. Returns (rollouts, rewards [B, G], this process's reward details, texts, rollout
    seconds, reward seconds, speculative stats or None).
    """
    t0 = time.perf_counter()
    prompts = sampler_prompts(items, questions_per_key if mode == "prompt_once" else 1)
    spec_stats = None
    if draft is not None:
        from zorro_jax.sampling.speculative import generate_speculative

        roll, spec_stats = generate_speculative(policy.model(), draft, prompts, group, sampler, key, gamma)
    elif steps is not None:
        roll = steps.generate(policy.params, prompts, group, sampler, key,
                              mode="shared" if mode == "prompt_once" else "naive")
    else:
        roll = generate(policy.model(), prompts, group, sampler, key,
                        mode="shared" if mode == "prompt_once" else "naive")
    t1 = time.perf_counter()
    flat = [c for per_prompt in roll.completions for c in per_prompt]
    texts = decode_texts(tokenizer, flat, sampler.eos_token_ids)
    tasks = [it.task for it in items for _ in range(group)]
    rewards, details = score_slices(reward_fn, texts, tasks, group)
    t2 = time.perf_counter()
    return roll, rewards, details, texts, t1 - t0, t2 - t1, spec_stats


def evaluate(policy: Policy, tokenizer, items: list[PromptItem], reward_fn: RewardFn,
             sampler: SamplerConfig, batch_size: int = 16, threshold: float = 1.0,
             steps: TrainSteps | None = None) -> dict:
    """Greedy held-out accuracy (share of completions scoring >= threshold). Batches are padded to
    a fixed size (one compile). `steps` (a mesh's `TrainSteps`) generates on its mesh."""
    greedy = dataclasses.replace(sampler, greedy=True)
    rewards, texts = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        prompts = [it.prompt_ids for it in padded]
        if steps is not None:
            roll = steps.generate(policy.params, prompts, 1, greedy, jax.random.key(0))
        else:
            roll = generate(policy.model(), prompts, 1, greedy, jax.random.key(0), mode="shared")
        t = decode_texts(tokenizer, [c[0] for c in roll.completions[: len(chunk)]], greedy.eos_token_ids)
        r, _ = score_slices(reward_fn, t, [it.task for it in chunk], 1)
        rewards.extend(r[:, 0].tolist())
        texts.extend(t)
    rewards = np.asarray(rewards)
    return {"accuracy": float(np.mean(rewards >= threshold)) if len(rewards) else math.nan,
            "reward_mean": float(rewards.mean()) if len(rewards) else math.nan,
            "n": len(items), "texts": texts, "correct": (rewards >= threshold).tolist()}


def probe_rewards(policy: Policy, tokenizer, items: list[PromptItem], group: int, sampler: SamplerConfig,
                  reward_fn: RewardFn, seed: int = 0, steps: TrainSteps | None = None) -> np.ndarray:
    """Sampled rewards [len(items), group] of a fixed prompt set, drawn under one fixed key: every
    call reuses the same random numbers, so a change between two calls comes from the policy, not
    from which prompts were drawn or from the sampler's noise (the step-to-step rollout reward
    mixes all three). `steps` (a mesh's `TrainSteps`) generates on its mesh."""
    _, rewards, *_ = rollout_and_score(policy, tokenizer, items, group, sampler, jax.random.key(seed),
                                       reward_fn, "prompt_once", steps=steps)
    return np.asarray(rewards, np.float64)


class GRPOTrainer:
    """Holds the jitted steps; `iteration(step, opt_state)` runs one GRPO iteration.

    `draft` (a `zorro_jax.rl.distill.DraftTrainer`) switches on speculative rollouts and
    online draft distillation as configured by `cfg.speculative`; its params and optimiser state
    are the caller's to checkpoint (`draft.params`, `draft.opt_state`).

    The KL reference is `ref_params` on the policy's graph, or on `ref_graphdef` when given: with
    LoRA, the base model without adapters (`zorro_jax.model.lora.base_model`), whose arrays are
    the policy's frozen ones (one copy of the weights), on one device or a mesh alike: a mesh's
    apply step donates only the trainable part, so only that part of a reference on the policy's
    graph is copied.
    """

    def __init__(self, policy: Policy, optimizer, apply_fn, tokenizer, items: list[PromptItem],
                 reward_fn: RewardFn, cfg: GRPOConfig, ref_params=None, draft=None,
                 questions_per_key: int = 1, steps: TrainSteps | None = None, ref_graphdef=None):
        self.policy, self.tok, self.items, self.reward_fn, self.cfg = policy, tokenizer, items, reward_fn, cfg
        if questions_per_key < 1 or cfg.prompts_per_step % questions_per_key:
            raise ValueError(f"prompts_per_step {cfg.prompts_per_step} must be a multiple of the "
                             f"questions per database {questions_per_key}")
        # Each step draws prompts_per_step / k databases with k questions each; their schema is
        # shared three levels deep (schema → questions → completions) in training.
        self.questions_per_key = questions_per_key
        if cfg.speculative.enabled and draft is None:
            raise ValueError("cfg.speculative.enabled needs a draft (DraftTrainer)")
        self.draft = draft if cfg.speculative.enabled else None
        self._round_costs: dict = {}
        if cfg.loss.kl_coef > 0 and ref_params is None:
            raise ValueError("kl_coef > 0 needs reference params")
        # The jitted steps: one device (the given apply_fn), or `steps` built for a mesh, whose
        # apply step is sharded and donating (an apply_fn of our own would not match it).
        if steps is None:
            steps = training_steps(policy.graphdef, policy.params, optimizer, loss_cfg=cfg.loss,
                                   impl=cfg.attention_impl)
            steps = steps._replace(apply=apply_fn or steps.apply)
        elif apply_fn is not None:
            raise ValueError("pass either apply_fn or steps (whose apply step is used), not both")
        if steps.mesh is not None:
            if self.draft is not None:
                raise ValueError("speculative rollouts run on one device; drop the mesh or "
                                 "speculative.enabled")
            if cfg.mode != "prompt_once":
                raise ValueError("on a mesh GRPO runs prompt-once (shared-prefix rollouts); the naive "
                                 "baseline runs on one device")
        self.steps, self.optimizer = steps, optimizer
        frozen = jax.tree.leaves(split_trainable(policy.params)[1])
        policy.params = steps.place_params(policy.params)
        if ref_params is not None:
            # A reference built on the policy's frozen arrays (LoRA) keeps sharing them once placed.
            placed = dict(zip(map(id, frozen), jax.tree.leaves(split_trainable(policy.params)[1])))
            ref_params = jax.tree.map(lambda x: placed.get(id(x), x), ref_params)
        if ref_params is not None and steps.donates and ref_graphdef is None:
            # The policy's trainable arrays will be donated: the reference keeps its own copy of
            # that part (all of it without LoRA; the adapters with it, the base stays shared).
            trainable, frozen = split_trainable(ref_params)
            ref_params = nnx.merge_state(jax.tree.map(jnp.copy, trainable), frozen)
        self.ref_params = None if ref_params is None else steps.place_params(ref_params)
        self.ref_logprob = (steps.logprob if ref_graphdef is None
                            else steps.logprob_for(ref_graphdef, self.ref_params))
        self.tiles = tiles_for(policy.model().config, cfg.attention_impl)

    @property
    def eval_every(self) -> int:
        """Held-out evaluation period in GRPO steps (`GRPOConfig.eval_every`, 0 = steps // 5)."""
        return self.cfg.eval_every or max(1, self.cfg.steps // 5)

    def iteration(self, step: int, opt_state):
        """Run GRPO iteration `step` (0-based): rollouts, rewards, advantages, log-probs, `epochs`
        updates, and the draft refresh when speculative. Updates `policy.params` in place.
        Returns (metrics row, new optimiser state, {texts, rewards, details, items}).
        """
        cfg = self.cfg
        idx = grouped_order([it.group_key for it in self.items], self.questions_per_key, cfg.seed,
                            step * cfg.prompts_per_step, cfg.prompts_per_step)
        items = [self.items[i] for i in idx]
        key = jax.random.fold_in(jax.random.key(cfg.seed), step)
        spec = cfg.speculative
        roll, rewards, details, texts, t_roll, t_reward, spec_stats = rollout_and_score(
            self.policy, self.tok, items, cfg.group_size, cfg.sampler, key, self.reward_fn, cfg.mode,
            draft=self.draft.model() if self.draft else None, gamma=spec.gamma,
            questions_per_key=self.questions_per_key,
            steps=self.steps if self.steps.mesh is not None else None)

        t0 = time.perf_counter()
        adv = np.asarray(compute_advantages(jnp.asarray(rewards), cfg.loss))
        # The loss view is the sampler's response buffer: one length bucket policy for both.
        width = roll.tokens_BxGxR.shape[2]
        groups = rollout_groups([it.prompt_ids for it in items], roll.tokens_BxGxR, roll.lengths_BxG)
        shared = [it.shared_len for it in items] if self.questions_per_key > 1 else None
        mbs = pack_groups(groups, mode=cfg.mode, tiles=self.tiles, cfg=cfg.packing,
                          pad_id=cfg.sampler.pad_token_id, loss_width=width, shared_lens=shared)
        placed = [self.steps.place_batch(mb.packed) for mb in mbs]
        old_lp = self._logprobs(self.policy.params, mbs, placed, roll.tokens_BxGxR.shape)
        ref_lp = (self._logprobs(self.ref_params, mbs, placed, roll.tokens_BxGxR.shape, self.ref_logprob)
                  if cfg.loss.kl_coef > 0 else old_lp)
        t1 = time.perf_counter()

        steps = self.steps
        norm = steps.place_host(loss_normaliser(jnp.asarray(sample_mask(roll.lengths_BxG, width)), cfg.loss))
        parts = [(packed, *(steps.place_host(jnp.asarray(mb.take_groups(x))) for x in (old_lp, adv, ref_lp)))
                 for mb, packed in zip(mbs, placed)]
        losses, metrics_acc, skipped, gnorm = [], [], 0, 0.0
        for _ in range(cfg.epochs):
            grads = None
            for packed, old, a, ref in parts:
                loss, metrics, g = steps.grad(self.policy.params, packed, old, a, ref, norm)
                grads = add_grads(grads, g)
                losses.append(loss)
                metrics_acc.append(metrics)
            params, opt_state, gn, finite = steps.apply(self.policy.params, opt_state, grads)
            loss_total = float(sum(losses[-len(parts):]))
            # A non-finite gradient leaves the state as it was inside `apply`; a donating apply
            # has consumed the old state, so its (unchanged) result is kept.
            if (bool(finite) and math.isfinite(loss_total)) or steps.donates:
                self.policy.params = params
            if not (bool(finite) and math.isfinite(loss_total)):
                skipped += 1
            gnorm = float(gn)
        jax.block_until_ready(self.policy.params)
        t2 = time.perf_counter()
        spec_row = self._draft_metrics(step, items, mbs, spec_stats, t_roll) if self.draft else {}

        mean_metric = lambda k: float(np.mean([float(m[k]) for m in metrics_acc]))
        gen_tokens = int(roll.lengths_BxG.sum())
        total = t_roll + t_reward + (t1 - t0) + (t2 - t1) + spec_row.get("time_distill", 0.0)
        row = {
            "prompts": len(items), "group_size": cfg.group_size,
            "reward_mean": float(rewards.mean()),
            "accuracy": float((rewards >= cfg.correct_threshold).mean()),
            # Groups whose G rewards are all equal: zero advantage, so no gradient from them.
            "zero_signal_groups": float((np.ptp(rewards, axis=1) < 1e-6).mean()),
            "loss": float(np.sum([float(x) for x in losses]) / cfg.epochs),
            "clip_fraction": mean_metric("clip_fraction"),
            "kl": mean_metric("kl"),
            "entropy": mean_metric("entropy"),
            "grad_norm": gnorm,
            "skipped_updates": skipped,
            "completion_len_mean": float(roll.lengths_BxG.mean()),
            "generated_tokens": gen_tokens,
            "tokens_per_s": gen_tokens / max(t_roll, 1e-9),
            "time_rollout": t_roll, "time_reward": t_reward,
            "time_logprobs": t1 - t0, "time_update": t2 - t1, "time_total": total,
            **spec_row,
        }
        return row, opt_state, {"texts": texts, "rewards": rewards, "details": details, "items": items}

    def _logprobs(self, params, mbs, placed, shape_BxGxR, fn=None) -> np.ndarray:
        """Log-probs [B, G, R] of the rollouts, one micro-batch at a time (`placed`: the
        micro-batches' PackedTrees where the steps want them), by the policy's log-prob step
        unless `fn`."""
        fn = fn or self.steps.logprob
        out = np.zeros(shape_BxGxR, np.float32)
        for mb, packed in zip(mbs, placed):
            out = mb.put_groups(out, to_host(fn(params, packed)[0]))
        return out

    def _draft_metrics(self, step: int, items, mbs, spec_stats: dict, t_roll: float) -> dict:
        """Speculative metrics of this iteration, and the online draft refresh when it is due."""
        from zorro_jax.sampling.speculative import measure_round_costs, split_time

        spec, cfg = self.cfg.speculative, self.cfg
        prompts = [it.prompt_ids for it in items]
        shape = pack_prompts(prompts, cfg.sampler)[0].shape
        if shape not in self._round_costs:  # measured once per padded prompt shape
            self._round_costs[shape] = measure_round_costs(
                self.policy.model(), self.draft.model(), prompts, cfg.group_size, cfg.sampler, spec.gamma)
        row = {
            "spec_acceptance_rate": spec_stats["acceptance_rate"],
            "spec_tokens_per_forward": spec_stats["tokens_per_policy_forward"],
            "spec_policy_forwards": spec_stats["policy_forwards"],
            **split_time(t_roll, self._round_costs[shape]),
        }
        if spec.refresh_every and (step + 1) % spec.refresh_every == 0:
            t0 = time.perf_counter()
            policy = self.policy.model()
            for _ in range(spec.refresh_steps):
                for mb in mbs:  # one draft step per micro-batch of the rollouts
                    m = self.draft.step(policy, mb.packed)
            row.update(distill_kl=m["kl"], distill_expected_acceptance=m["expected_acceptance"],
                       time_distill=time.perf_counter() - t0)
        return row
