"""The end-to-end RL run of a registered task, behind `experiments/quickstart.py` and
`experiments/train.py`.

task examples → tokenizer → policy (new tiny model or a Hugging Face checkpoint) → SFT warm start →
held-out eval → GRPO → held-out eval → report (metrics.jsonl, PNG plots, summary.md) and the
trained policy exported as a Hugging Face folder. Each phase checkpoints, so re-running the same
command after a crash resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from zorro_jax.checkpoints.hf import LORA_EXPORTS, export_hf_model, export_policy, load_hf_model
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.lora import LoRAConfig, add_lora, base_model, reference_state, split_trainable
from zorro_jax.model.transformer import init_model
from zorro_jax.parallel.distributed import is_leader, maybe_initialize_distributed, to_host
from zorro_jax.parallel.mesh import MeshConfig
from zorro_jax.parallel.steps import training_steps
from zorro_jax.rl.batches import tiles_for
from zorro_jax.rl.grpo import GRPOConfig, GRPOTrainer, Policy, PromptItem, evaluate, probe_rewards
from zorro_jax.rl.loop import run_phase
from zorro_jax.rl.optim import make_optimizer
from zorro_jax.rl.report import MetricsLog, plot_metrics, provenance, run_summary, write_summary
from zorro_jax.rl.sft import SFTConfig, make_sft_step
from zorro_jax.rl.steps import init_opt_state, make_apply_fn
from zorro_jax.rl.task import PromptFit, make_task
from zorro_jax.tokenizer import (
    PromptEncoder,
    ensure_pad_token,
    load_tokenizer,
    stop_token_ids,
    train_bpe_tokenizer,
)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which splits of the task serve SFT, GRPO and evaluation, the prompt budget, and how
    questions are drawn."""

    # SFT examples come from train_split; GRPO prompts from grpo_split (empty = train_split).
    train_split: str = "train"
    grpo_split: str = ""
    eval_split: str = "dev"
    # Cap on evaluated examples (0 = all).
    eval_limit: int = 0
    # Prompt budget in tokens (special tokens and chat frame included): the task shortens longer
    # prompts where it can (text-to-SQL trims the schema); an example that still does not fit is
    # skipped and counted.
    max_prompt_tokens: int = 384
    # "auto": prompts through the tokenizer's chat template when it has one (SFT, rollouts,
    # training and evaluation alike); "none": plain text after BOS.
    chat_template: str = "auto"
    # Questions drawn from each chosen group (a database) per step (SFT and GRPO). Above 1, the
    # group's shared prompt part is processed once for all of them in training (three-level prefix
    # trees: schema → questions → completions) and in generation. 1 = one question per draw,
    # groups mixed.
    questions_per_database: int = 1

    def __post_init__(self):
        if self.questions_per_database < 1:
            raise ValueError(f"questions_per_database must be >= 1, got {self.questions_per_database}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}")
        if self.chat_template not in ("auto", "none"):
            raise ValueError(f"chat_template must be auto or none, got {self.chat_template!r}")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """The policy: a Hugging Face checkpoint folder, or the size of a new model trained from
    scratch.
    """

    # A Hugging Face folder (config.json, *.safetensors, tokenizer files); empty = new tiny model.
    checkpoint: str = ""
    # For a new model: tokenizer vocabulary and model size.
    vocab_size: int = 1024
    # How the trained tokenizer cuts text before BPE: "words" (literals copyable from question to
    # SQL) or "bytelevel" (GPT-2 style); see zorro_jax.tokenizer.SPLITS.
    tokenizer_split: str = "bytelevel"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    seed: int = 0
    # dtype of the matmuls (float32 | bfloat16); weights stay float32 master copies, the residual
    # stream, norms, softmax and log-probs float32 (see ModelConfig.compute_dtype).
    compute_dtype: str = "float32"
    # Rematerialisation in the training forward: none | block (recompute each layer in the
    # backward) | attention (recompute the attention core only).
    remat: str = "none"
    # The training forward's layers as one lax.scan (faster compiles and less memory on deep
    # models; see ModelConfig.scan_layers) or, false, a Python loop over them.
    scan_layers: bool = False
    # LoRA: adapters of this rank on every attention and MLP projection, and only they train in
    # SFT and GRPO (0 = the whole model trains). One device only for now.
    lora_rank: int = 0
    # The adapters' outputs are scaled by lora_alpha / lora_rank (PEFT's lora_alpha).
    lora_alpha: float = 16.0
    # What a LoRA run exports: "adapter" (a PEFT folder, adapter/, for the base weights),
    # "merged" (policy/, an ordinary Hugging Face folder of base + adapters) or "both".
    lora_export: str = "both"

    def __post_init__(self):
        LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha)  # validates both
        if self.lora_export not in LORA_EXPORTS:
            raise ValueError(f"lora_export must be one of {LORA_EXPORTS}, got {self.lora_export!r}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run: task, data, policy, SFT, GRPO, checkpointing and evaluation settings."""

    # Folder of the run: checkpoints, metrics, plots, report, exported model; re-running the
    # same command with the same folder resumes.
    run_dir: str = "runs/quickstart"
    # The registered task trained on (zorro_jax.rl.task); its own options are --<task>.*.
    task: str = "text2sql"
    data: DataConfig = DataConfig()
    policy: PolicyConfig = PolicyConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    # Save a checkpoint every this many steps of each phase (and at its end).
    checkpoint_every: int = 10
    # Checkpoints kept per phase (older ones are deleted).
    keep_checkpoints: int = 2
    # Prompts per greedy evaluation batch (padded to this size: one compiled program).
    eval_batch_size: int = 16
    # GRPO prompts (a fixed draw from its pool) whose sampled reward, G rollouts each under one
    # fixed key, is measured at every held-out evaluation: the training reward of one policy
    # against another on the same prompts and random numbers (0 = off).
    probe_prompts: int = 64
    # Device mesh (data × fsdp × tensor; one axis may be -1: the rest of the devices). 1 × 1 × 1
    # = one device. Packed rows per micro-batch (sft/grpo .packing.rows_per_micro_batch) must
    # divide over data × fsdp.
    mesh: MeshConfig = MeshConfig(data=1, fsdp=1, tensor=1)
    # No progress bars or messages.
    quiet: bool = False

    def __post_init__(self):
        if self.probe_prompts < 0:
            raise ValueError(f"probe_prompts must be >= 0, got {self.probe_prompts}")
        k = self.data.questions_per_database
        for name, n in (("grpo.prompts_per_step", self.grpo.prompts_per_step),
                        ("sft.batch_size", self.sft.batch_size)):
            if n % k:
                raise ValueError(f"{name} ({n}) must be a multiple of data.questions_per_database ({k})")


def parse_command_line(argv, defaults: RunConfig = RunConfig(), task_defaults: dict | None = None,
                       description: str = ""):
    """(RunConfig, the chosen task's config) from command-line options: every RunConfig field
    (`--grpo.steps 40`), `--task NAME`, and each registered task's own fields under its name
    (`--text2sql.source DIR`). `task_defaults` maps task names to their default configs."""
    import argparse

    from zorro_jax.cli import add_config_args, config_from_args
    from zorro_jax.rl.task import TASKS, task_config_class

    task_defaults = task_defaults or {}
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap, RunConfig, defaults)
    for name in sorted(TASKS):
        cls = task_config_class(name)
        add_config_args(ap, cls, task_defaults.get(name), prefix=f"{name}.")
    args = ap.parse_args(argv)
    cfg = config_from_args(RunConfig, args, defaults)
    cls = task_config_class(cfg.task)
    return cfg, config_from_args(cls, args, task_defaults.get(cfg.task), prefix=f"{cfg.task}.")


def prompt_fit(encoder: PromptEncoder, budget: int) -> PromptFit:
    """The budget of `encoder`'s output, for tasks to write prompts within."""
    return PromptFit(count=encoder.count, budget=budget)


def encode_example(encoder: PromptEncoder, ex) -> tuple[list[int], int]:
    """(ids, shared length) of an `Example`'s prompt."""
    return encoder.encode(ex.shared, ex.question, ex.system)


def get_tokenizer(cfg: RunConfig, train_texts: list[str]):
    """The checkpoint's tokenizer, else the run's trained tokenizer, training it on `train_texts` on
    first use.
    """
    if cfg.policy.checkpoint:
        return load_tokenizer(cfg.policy.checkpoint)
    folder = Path(cfg.run_dir) / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    return train_bpe_tokenizer(train_texts, cfg.policy.vocab_size, folder, split=cfg.policy.tokenizer_split)


def new_model_config(cfg: RunConfig, tok) -> ModelConfig:
    """A Qwen3-style `ModelConfig` of the configured size for a policy trained from scratch with
    `tok`.
    """
    p = cfg.policy
    return ModelConfig(
        model_type="qwen3", vocab_size=len(tok), hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size, num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads, num_key_value_heads=p.num_kv_heads,
        head_dim=p.hidden_size // p.num_heads, qk_norm=True, tie_word_embeddings=True,
        max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, compute_dtype=p.compute_dtype,
    )


def answer_ids(tok, answer: str) -> list[int]:
    """Token ids of a reference answer as SFT targets it: its tokens, then EOS."""
    return tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def sft_augmenter(task, items: list[PromptItem], encoder: PromptEncoder, fit: PromptFit):
    """swap(i, rng) -> (prompt ids, answer ids) of a task-made variant of items[i]'s example
    (`SFTConfig.literal_swap`)."""
    variant = task.augmenter([it.task for it in items], fit)
    if variant is None:
        raise ValueError(f"task {task.name!r} has no SFT augmentation: set sft.literal_swap to 0")

    def swap(i: int, rng):
        ex = variant(i, rng)
        return encode_example(encoder, ex)[0], answer_ids(encoder.tok, ex.answer)

    return swap


def warm_up_draft(cfg: RunConfig, grpo_cfg: GRPOConfig, policy: Policy, examples: list[tuple[list[int], list[int]]],
                  run_dir: Path, log: MetricsLog):
    """Build the draft and distil it from the policy before GRPO (the resumable "distill" phase).

    Each warm-up step takes `warmup_prompts_per_step` SFT examples (prompt, reference answer) and
    one forward-KL step of the draft towards the policy's distributions at every answer position
    (teacher forcing: no sampling, so the warm-up is cheap). Online refreshes during GRPO then
    distil on the policy's own rollouts. Returns a `DraftTrainer` (draft params + optimiser state).
    """
    import optax

    from zorro_jax.rl.batches import pack_groups
    from zorro_jax.rl.distill import DraftTrainer
    from zorro_jax.rl.grpo import data_order
    from zorro_jax.sampling.speculative import draft_config

    spec, sampler = grpo_cfg.speculative, grpo_cfg.sampler
    model_cfg = policy.model().config
    dcfg = draft_config(model_cfg, hidden_size=spec.draft_hidden_size, num_layers=spec.draft_layers,
                        num_heads=spec.draft_heads, num_kv_heads=spec.draft_kv_heads)
    trainer = DraftTrainer(init_model(dcfg, seed=spec.seed), optax.adam(spec.lr),
                           temperature=sampler.temperature, impl=grpo_cfg.attention_impl)
    n = spec.warmup_prompts_per_step
    tiles = tiles_for(model_cfg, grpo_cfg.attention_impl)

    def step_fn(step, st):
        trainer.params, trainer.opt_state = st["draft"], st["draft_opt"]
        chosen = [examples[i] for i in data_order(len(examples), spec.seed + 1, (step - 1) * n, n)]
        for mb in pack_groups([(prompt, [answer]) for prompt, answer in chosen], mode="prompt_once",
                              tiles=tiles, pad_id=sampler.pad_token_id):
            m = trainer.step(policy.model(), mb.packed)
        return {"draft": trainer.params, "draft_opt": trainer.opt_state}, {
            "distill_kl": m["kl"], "distill_expected_acceptance": m["expected_acceptance"]}

    def restore(st):
        trainer.params, trainer.opt_state = st["draft"], st["draft_opt"]

    if spec.warmup_steps:
        st = run_phase("distill", spec.warmup_steps, step_fn, {"draft": trainer.params, "draft_opt": trainer.opt_state},
                       run_dir, log, checkpoint_every=max(cfg.checkpoint_every, 50), keep=cfg.keep_checkpoints,
                       later_phases=("grpo",), quiet=cfg.quiet, after_restore=restore,
                       show=lambda r: {"kl": f"{r['distill_kl']:.3f}",
                                       "accept": f"{r['distill_expected_acceptance']:.2f}"})
        restore(st)
    return trainer


def load_items(task, data: DataConfig, encoder: PromptEncoder, fit: PromptFit, say):
    """The task's train / grpo / eval examples as encoded `PromptItem`s: (items by split, what the
    task dropped by split (reason -> count), how many were skipped by split).

    Examples the task cannot score (a failing gold query) are dropped before anything trains on
    them; prompts over the budget even after shortening are skipped. Both are counted and said.
    """
    grpo_split = data.grpo_split or data.train_split
    split_examples = {"train": task.examples(data.train_split, fit), "eval": task.examples(data.eval_split, fit)}
    split_examples["grpo"] = (split_examples["train"] if grpo_split == data.train_split
                              else task.examples(grpo_split, fit))
    dropped, skipped = {}, {}
    items = {}
    for split, exs in split_examples.items():
        kept, reasons = task.check(exs)
        if reasons:
            dropped[split] = reasons
            say(f"{split}: dropped {len(exs) - len(kept)} of {len(exs)} examples the task cannot score: "
                f"{reasons}")
        its = [PromptItem(exs[i], *encode_example(encoder, exs[i]), group_key=exs[i].group_key) for i in kept]
        fits = [it for it in its if len(it.prompt_ids) <= data.max_prompt_tokens]
        if len(fits) < len(its):
            skipped[split] = len(its) - len(fits)
            say(f"{split}: {skipped[split]} of {len(exs)} examples skipped (prompt over "
                f"{data.max_prompt_tokens} tokens after shortening)")
        if not fits:
            raise ValueError(f"no {split} example fits data.max_prompt_tokens = {data.max_prompt_tokens}")
        items[split] = fits
    return items, dropped, skipped


def run(cfg: RunConfig, task_config=None) -> dict:
    """Run (or resume) the whole pipeline of `cfg` on the registered task `cfg.task` built from
    `task_config` (its defaults when None); returns the summary figures also written to
    summary.md.
    """
    t_start = time.perf_counter()
    task = make_task(cfg.task, task_config)
    try:
        return _run(cfg, task, t_start)
    finally:
        task.close()


def _run(cfg: RunConfig, task, t_start: float) -> dict:
    # One process per host (ZORRO_* variables): every process runs this same function.
    maybe_initialize_distributed()
    leader = is_leader()
    run_dir = Path(cfg.run_dir)
    # Process 0 writes the run's files; the others keep their own metrics log (the same rows:
    # every process runs the same steps, so each decides alike what a resume skips).
    own_dir = run_dir if leader else run_dir / f"process{jax.process_index()}"
    own_dir.mkdir(parents=True, exist_ok=True)
    if leader:
        (run_dir / "config.json").write_text(json.dumps(
            {**dataclasses.asdict(cfg), cfg.task: dataclasses.asdict(task.config)}, indent=2, default=str))
        seeds = {"policy": cfg.policy.seed, "sft": cfg.sft.seed, "grpo": cfg.grpo.seed,
                 "speculative": cfg.grpo.speculative.seed}
        (run_dir / "provenance.json").write_text(json.dumps(provenance(seeds), indent=2))
    say = (lambda *a: None) if cfg.quiet or not leader else (lambda *a: print(*a, flush=True))
    mesh = None if cfg.mesh.single_device and jax.process_count() == 1 else cfg.mesh.make()
    data = cfg.data
    grpo_split = data.grpo_split or data.train_split
    # The tokenizer learns from whole prompts; then every prompt is written within the budget.
    untrimmed = task.examples(data.train_split)
    # Each process trains its own (identical, deterministic) copy: no reads of a half-written file.
    tok = ensure_pad_token(get_tokenizer(
        cfg if leader else dataclasses.replace(cfg, run_dir=str(own_dir)),
        [e.system + e.shared + e.question for e in untrimmed] + [e.answer for e in untrimmed]))
    stop_ids = stop_token_ids(tok, cfg.policy.checkpoint or None)
    encoder = PromptEncoder(tok, data.chat_template)
    fit = prompt_fit(encoder, data.max_prompt_tokens)
    items, dropped, skipped = load_items(task, data, encoder, fit, say)
    train_items, grpo_items = items["train"], items["grpo"]
    eval_items = items["eval"][: data.eval_limit] if data.eval_limit else items["eval"]
    examples = [(it.prompt_ids, answer_ids(tok, it.task.answer)) for it in train_items]
    say(f"data ({task.name}): {len(train_items)} SFT ({data.train_split}) / {len(grpo_items)} GRPO "
        f"({grpo_split}) / {len(eval_items)} eval ({data.eval_split}) examples; tokenizer vocab {len(tok)}"
        f"{', chat template' if encoder.chat else ''}; stop ids {list(stop_ids)}")

    if cfg.policy.checkpoint:
        model = load_hf_model(cfg.policy.checkpoint, compute_dtype=cfg.policy.compute_dtype)
    else:
        model = init_model(new_model_config(cfg, tok), seed=cfg.policy.seed)
    model.config = dataclasses.replace(model.config, remat=cfg.policy.remat,
                                       scan_layers=cfg.policy.scan_layers)
    lora = LoRAConfig(rank=cfg.policy.lora_rank, alpha=cfg.policy.lora_alpha)
    if lora.rank:
        add_lora(model, lora, seed=cfg.policy.seed)
    graphdef, params = nnx.split(model)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    say(f"policy: {model.config.model_type}, {n_params / 1e6:.2f}M parameters"
        + (f" (LoRA rank {lora.rank} adapters trained)" if lora.rank else ""))

    reward_fn = task.score
    sampler = dataclasses.replace(cfg.grpo.sampler, eos_token_ids=stop_ids, pad_token_id=tok.pad_token_id)
    grpo_cfg = dataclasses.replace(cfg.grpo, sampler=sampler)
    log = MetricsLog(own_dir)
    phases = {}

    def mesh_steps(optimizer, packing):
        """The jitted steps on the run's mesh (None on one device)."""
        return None if mesh is None else training_steps(
            graphdef, params, optimizer, loss_cfg=cfg.grpo.loss, mesh=mesh, impl=cfg.grpo.attention_impl,
            rows_per_micro_batch=packing.rows_per_micro_batch)

    # SFT warm start.
    sft_opt = make_optimizer(cfg.sft.optim)
    sft_steps = mesh_steps(sft_opt, cfg.sft.packing)
    if sft_steps is None:
        state = {"params": params, "opt": init_opt_state(sft_opt, params)}
    else:
        placed = sft_steps.place_params(params)
        state = {"params": placed, "opt": sft_steps.init_opt(placed)}
    if cfg.sft.steps:
        t0 = time.perf_counter()
        step_fn = make_sft_step(graphdef, None if sft_steps else make_apply_fn(sft_opt), examples, cfg.sft,
                                pad_id=tok.pad_token_id, steps=sft_steps,
                                impl=cfg.grpo.attention_impl,
                                tiles=tiles_for(model.config, cfg.grpo.attention_impl),
                                keys=[it.group_key for it in train_items],
                                shared_lens=[it.shared_len for it in train_items],
                                per_key=cfg.data.questions_per_database,
                                swap=sft_augmenter(task, train_items, encoder, fit) if cfg.sft.literal_swap else None)
        state = run_phase("sft", cfg.sft.steps, step_fn, state, run_dir, log,
                          checkpoint_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints,
                          later_phases=("eval", "probe", "distill", "grpo"), quiet=cfg.quiet,
                          show=lambda r: {"loss": f"{r['loss']:.3f}"})
        phases["sft_seconds"] = time.perf_counter() - t0
    policy = Policy(graphdef, state["params"])
    grpo_opt = make_optimizer(cfg.grpo.optim)
    grpo_steps = mesh_steps(grpo_opt, cfg.grpo.packing)

    # The probe set: a fixed draw of GRPO prompts (none without GRPO steps: nothing to compare).
    pick = np.random.default_rng(grpo_cfg.seed).permutation(len(grpo_items))[: cfg.probe_prompts]
    probe_items = [grpo_items[i] for i in sorted(pick)] if grpo_cfg.steps else []

    def logged(phase: str, step: int) -> dict | None:
        """The row of `phase` at `step` when it is in the log (a resumed run skips its work)."""
        rows = [r for r in log.rows() if r.get("phase") == phase and r["step"] == step]
        return rows[-1] if rows else None

    def probe(step: int):
        """The probe set's sampled reward at `step` (logged as a "probe" row)."""
        if not probe_items or logged("probe", step):
            return
        t0 = time.perf_counter()
        r = probe_rewards(policy, tok, probe_items, grpo_cfg.group_size, sampler, reward_fn,
                          seed=grpo_cfg.seed, steps=grpo_steps)
        log.append({"phase": "probe", "step": step, "reward_mean": float(r.mean()),
                    "prompt_rewards": r.mean(axis=1).tolist(), "group_size": grpo_cfg.group_size,
                    "seconds": time.perf_counter() - t0})

    def held_out(step: int):
        """The held-out evaluation at GRPO step `step` (and the probe's reward), each run once."""
        probe(step)
        if (row := logged("eval", step)) is not None:
            return row
        t0 = time.perf_counter()
        res = evaluate(policy, tok, eval_items, reward_fn, sampler, cfg.eval_batch_size, grpo_cfg.correct_threshold,
                       steps=grpo_steps)
        row = {"phase": "eval", "step": step, "accuracy": res["accuracy"],
               "reward_mean": res["reward_mean"], "n": res["n"], "seconds": time.perf_counter() - t0}
        (own_dir / f"eval_step{step}.jsonl").write_text("".join(
            json.dumps({"task_id": it.task.id, "question": it.task.question, "reference": it.task.answer,
                        "output": txt, "correct": ok}) + "\n"
            for it, txt, ok in zip(eval_items, res["texts"], res["correct"])))
        log.append(row)  # after the outputs: a logged eval always has its per-task file
        return row

    def correct_at(step: int) -> list[bool]:
        lines = (own_dir / f"eval_step{step}.jsonl").read_text().splitlines()
        return [bool(json.loads(x)["correct"]) for x in lines if x.strip()]

    before = held_out(0)
    say(f"held-out {task.metric} after SFT: {before['accuracy']:.3f} (n={before['n']})")

    # Speculative rollouts: a draft distilled from the SFT policy before GRPO, refreshed during it.
    draft = None
    if grpo_cfg.speculative.enabled:
        t0 = time.perf_counter()
        draft = warm_up_draft(cfg, grpo_cfg, policy, examples, run_dir, log)
        phases["draft_warmup_seconds"] = time.perf_counter() - t0

    # GRPO.
    t0 = time.perf_counter()
    # The KL reference is the policy as GRPO starts. With LoRA it is built on the
    # policy's own base arrays (one copy of the weights, also after a restore): the base with its
    # adapters off when they are fresh, else the base with the SFT adapters.
    ref_graphdef, start_adapters = None, split_trainable(state["params"])[0] if lora.rank else None
    if lora.rank and not cfg.sft.steps:
        ref_graphdef = nnx.graphdef(base_model(policy.model()))

    def reference(params):
        if grpo_cfg.loss.kl_coef == 0:
            return None
        if not lora.rank:
            return state["params"]
        return reference_state(params, None if ref_graphdef is not None else start_adapters)

    trainer = GRPOTrainer(policy, grpo_opt, None if grpo_steps else make_apply_fn(grpo_opt), tok, grpo_items,
                          reward_fn, grpo_cfg, ref_params=reference(policy.params), draft=draft,
                          questions_per_key=cfg.data.questions_per_database, steps=grpo_steps,
                          ref_graphdef=ref_graphdef)

    def grpo_step(step, st):
        policy.params = st["params"]
        if draft:
            draft.params, draft.opt_state = st["draft"], st["draft_opt"]
        row, opt, _ = trainer.iteration(step - 1, st["opt"])
        if step % trainer.eval_every == 0 and step < grpo_cfg.steps:  # the last one comes below
            row["heldout_accuracy"] = held_out(step)["accuracy"]
        out = {"params": policy.params, "opt": opt}
        return ({**out, "draft": draft.params, "draft_opt": draft.opt_state} if draft else out), row

    def restore(s):
        policy.params = s["params"]
        if lora.rank:  # the reference shares the restored state's base arrays
            trainer.ref_params = reference(policy.params)
        if draft:
            draft.params, draft.opt_state = s["draft"], s["draft_opt"]

    def show(r):
        out = {"reward": f"{r['reward_mean']:.3f}", "acc": f"{r['accuracy']:.2f}"}
        if "spec_acceptance_rate" in r:
            out["accept"] = f"{r['spec_acceptance_rate']:.2f}"
        return out

    init = {"params": policy.params, "opt": trainer.steps.init_opt(policy.params)}
    if draft:
        init.update(draft=draft.params, draft_opt=draft.opt_state)
    st = run_phase("grpo", grpo_cfg.steps, grpo_step, init, run_dir, log, checkpoint_every=cfg.checkpoint_every,
                   keep=cfg.keep_checkpoints, quiet=cfg.quiet, after_restore=restore, show=show)
    restore(st)
    phases["grpo_seconds"] = time.perf_counter() - t0
    after = held_out(grpo_cfg.steps)
    say(f"held-out {task.metric} after GRPO: {after['accuracy']:.3f} (n={after['n']})")
    # Gathered by every process (a collective when the mesh spans processes); process 0 exports
    # the model and writes the report.
    final = policy.model() if mesh is None else nnx.merge(graphdef, to_host(policy.params))
    if not leader:
        return {}

    exported = export_policy(final, run_dir, tok, lora_export=cfg.policy.lora_export,
                             base_checkpoint=cfg.policy.checkpoint or None)
    if draft:
        export_hf_model(draft.model(), run_dir / "draft", tokenizer=tok)
    rows = log.rows()
    plots = plot_metrics(rows, run_dir)
    grpo_rows = [r for r in rows if r.get("phase") == "grpo"]
    results = {
        "task": task.name,
        f"held-out {task.metric} after SFT": before["accuracy"],
        f"held-out {task.metric} after GRPO": after["accuracy"],
        "eval split / tasks": f"{cfg.data.eval_split} / {after['n']}",
        "tasks skipped (prompt over budget), train / grpo / eval": "{} / {} / {}".format(
            *(skipped.get(k, 0) for k in ("train", "grpo", "eval"))),
        "tasks dropped (the task cannot score them), train / grpo / eval": "{} / {} / {}".format(
            *(sum(dropped.get(k, {}).values()) for k in ("train", "grpo", "eval"))),
        **({"why they cannot be scored": "; ".join(f"{k} ({v})" for r in dropped.values()
                                                for k, v in r.items())} if dropped else {}),
        **task.summary(),
        **run_summary(rows, correct_at(0), correct_at(grpo_cfg.steps)),
        "parameters (M)": n_params / 1e6,
        "wall seconds (this invocation)": time.perf_counter() - t_start,
        **phases,
    }
    if grpo_rows and draft:
        for k in ("time_draft_est", "time_verify_est"):
            results[f"seconds per GRPO step, {k[5:]} (estimated split of rollout)"] = float(
                np.mean([r[k] for r in grpo_rows]))
    write_summary(run_dir, f"zorro_jax {task.name} run", {
        "Results": results,
        "Files": [f"metrics.jsonl ({len(rows)} rows)", *[p.name for p in plots],
                  *exported, "eval_step*.jsonl (held-out outputs, per task)",
                  "provenance.json (commit, package versions, seeds, machine)",
                  "summary.json (the results above)"],
        "Config": f"```json\n{(run_dir / 'config.json').read_text()}\n```",
    })
    (run_dir / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    say(f"report: {run_dir / 'summary.md'}")
    return results
