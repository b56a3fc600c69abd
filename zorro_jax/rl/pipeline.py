"""The end-to-end text-to-SQL RL run behind `experiments/quickstart.py` and `experiments/train.py`.

data → tokenizer → policy (new tiny model or a Hugging Face checkpoint) → SFT warm start →
held-out eval → GRPO → held-out eval → report (metrics.jsonl, PNG plots, summary.md) and the
trained policy exported as a Hugging Face folder. Each phase checkpoints, so re-running the same
command after a crash resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from zorro_jax.checkpoints.hf import export_hf_model, load_hf_model
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.transformer import init_model
from zorro_jax.parallel.distributed import is_leader, maybe_initialize_distributed, to_host
from zorro_jax.parallel.mesh import MeshConfig
from zorro_jax.parallel.steps import training_steps
from zorro_jax.rl.batches import tiles_for
from zorro_jax.rl.grpo import GRPOConfig, GRPOTrainer, Policy, PromptItem, evaluate
from zorro_jax.rl.loop import run_phase
from zorro_jax.rl.optim import make_optimizer
from zorro_jax.rl.report import MetricsLog, plot_metrics, run_summary, write_summary
from zorro_jax.rl.sft import SFTConfig, make_sft_step
from zorro_jax.rl.steps import make_apply_fn
from zorro_jax.tasks.text2sql.reward import RewardConfig
from zorro_jax.tokenizer import load_tokenizer, train_bpe_tokenizer


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the tasks come from (built-in benchmark or a Spider/BIRD folder), which splits serve
    SFT, GRPO and evaluation, and how prompts are written.
    """

    # "builtin" (the embedded benchmark) or a Spider/BIRD-format folder.
    source: str = "builtin"
    # Layout of a folder source: "auto" (recognised from its files), "spider" or "bird".
    format: str = "auto"
    # SFT examples come from train_split; GRPO prompts from grpo_split (empty = train_split).
    train_split: str = "train"
    grpo_split: str = ""
    eval_split: str = "dev"
    # Cap on evaluated tasks (0 = all).
    eval_limit: int = 0
    # Prompt style of zorro_jax.tasks.text2sql.prompts ("compact" suits small models).
    prompt_style: str = "compact"
    max_prompt_tokens: int = 384
    # Questions drawn from each chosen database per step (SFT and GRPO). Above 1, the database's
    # schema is processed once for all of them in training (three-level prefix trees: schema →
    # questions → completions) and in generation. 1 = one question per draw, databases mixed.
    questions_per_database: int = 1

    def __post_init__(self):
        if self.format not in ("auto", "spider", "bird"):
            raise ValueError(f"format must be auto, spider or bird, got {self.format!r}")
        if self.questions_per_database < 1:
            raise ValueError(f"questions_per_database must be >= 1, got {self.questions_per_database}")


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


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run: data, policy, SFT, GRPO, checkpointing and evaluation settings."""

    # Folder of the run: checkpoints, metrics, plots, report, exported model; re-running the
    # same command with the same folder resumes.
    run_dir: str = "runs/quickstart"
    data: DataConfig = DataConfig()
    policy: PolicyConfig = PolicyConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    # Execution reward: comparison rule (auto = the data set's), reward values, sandbox limits.
    reward: RewardConfig = RewardConfig(rule="auto")
    # Save a checkpoint every this many steps of each phase (and at its end).
    checkpoint_every: int = 10
    # Checkpoints kept per phase (older ones are deleted).
    keep_checkpoints: int = 2
    # Prompts per greedy evaluation batch (padded to this size: one compiled program).
    eval_batch_size: int = 16
    # Device mesh (data × fsdp × tensor; one axis may be -1: the rest of the devices). 1 × 1 × 1
    # = one device. Packed rows per micro-batch (sft/grpo .packing.rows_per_micro_batch) must
    # divide over data × fsdp.
    mesh: MeshConfig = MeshConfig(data=1, fsdp=1, tensor=1)
    # No progress bars or messages.
    quiet: bool = False

    def __post_init__(self):
        k = self.data.questions_per_database
        for name, n in (("grpo.prompts_per_step", self.grpo.prompts_per_step),
                        ("sft.batch_size", self.sft.batch_size)):
            if n % k:
                raise ValueError(f"{name} ({n}) must be a multiple of data.questions_per_database ({k})")


def load_tasks(data: DataConfig, split: str):
    """(tasks, comparison rule) of a split of the configured source; "a+b" concatenates splits
    (e.g. "train+rl"). For a folder, "train" / "dev" / "test" are the data set's splits as shipped
    (Spider's train = train_spider.json + train_others.json), any other name an examples file
    ("x" or "x.json")."""
    if "+" in split:
        parts = [load_tasks(data, part) for part in split.split("+")]
        return [t for tasks, _ in parts for t in tasks], parts[0][1]
    if data.source == "builtin":
        from zorro_jax.tasks.text2sql.benchmark import load_builtin

        return load_builtin(split), "spider"
    from zorro_jax.tasks.text2sql import spider

    root = Path(data.source)
    if not root.is_dir():
        raise FileNotFoundError(f"data source {root.resolve()} is neither 'builtin' nor a folder")
    fmt = None if data.format == "auto" else data.format
    if split in ("train", "dev", "test"):
        tasks, report = spider.load_split(str(root), split, format=fmt)
    else:
        name = split if split.endswith(".json") else f"{split}.json"
        if not (root / name).is_file():
            raise FileNotFoundError(f"no examples file {name} in {root.resolve()}")
        rule = spider.RULE_OF_FORMAT[fmt or spider.detect_format(str(root))]
        tasks, report = spider.load(str(root), examples_file=name, rule=rule)
    if report is not None:
        print(f"{split}: {report}", flush=True)
    return tasks, report.rule if report is not None else "spider"


def drop_failing_golds(tasks, executor) -> tuple[list[int], dict[str, int]]:
    """Indices of the tasks whose gold query executes (once, cached by the executor for the
    reward), and {reason: count} of the others: a failing gold would give its whole group noise."""
    kept, reasons = [], {}
    for i, t in enumerate(tasks):
        gold = executor.execute_gold(t.gold_sql, t.db_path)
        if gold.ok:
            kept.append(i)
        else:
            why = f"{gold.status}: {gold.message.splitlines()[0][:80] if gold.message else ''}"
            reasons[why] = reasons.get(why, 0) + 1
    return kept, reasons


def prompt_and_answer_texts(tasks, data: DataConfig, tok=None):
    """Prompts as (shared part, question part) text pairs — the shared part is the database's
    (system text and schema), the question part the task's — and the reference answers (the gold
    SQL in a fenced block) of `tasks`. Every path tokenises the parts apart (`encode_prompt`), so
    the policy sees one format whether or not a schema is shared.

    With a tokenizer, a prompt longer than `data.max_prompt_tokens` is shrunk by the
    token-budgeted builder (example values, then the least relevant tables' columns and tables;
    the question and the instructions always stay), so its schema part may then differ from the
    other questions of its database."""
    from zorro_jax.tasks.text2sql.prompts import build_prompt, format_answer

    system_turn = data.prompt_style != "compact"
    count = None
    if tok is not None:
        # BOS and the system turn come on top of what the builder counts.
        extra = 1 + (len(tok(build_prompt(tasks[0], style=data.prompt_style).system + "\n\n",
                             add_special_tokens=False)["input_ids"]) if system_turn and tasks else 0)
        count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"]) + extra

    def parts(task):
        prompt = build_prompt(task, style=data.prompt_style)
        if count is not None and count(prompt.text) > data.max_prompt_tokens:
            prompt = build_prompt(task, style=data.prompt_style, count_tokens=count,
                                  budget=data.max_prompt_tokens)
        # The compact style is for small policies trained from scratch: no system turn needed.
        shared = f"{prompt.system}\n\n{prompt.shared}" if system_turn else prompt.shared
        return shared, prompt.question

    return [parts(t) for t in tasks], [format_answer(t.gold_sql) for t in tasks]


def literal_swapper(tasks, tok, data: DataConfig, eos: int):
    """swap(i, rng) -> (prompt ids, answer ids) of tasks[i] with the values its question and gold
    SQL share replaced by other values of the same shape from `tasks` (`SFTConfig.literal_swap`)."""
    from zorro_jax.tasks.text2sql.augment import ValuePool, swap_literals

    pool = ValuePool.from_pairs((t.question, t.gold_sql) for t in tasks)

    def swap(i: int, rng):
        task = tasks[i]
        question, sql = swap_literals(task.question, task.gold_sql, rng, pool)
        [prompt], [answer] = prompt_and_answer_texts(
            [dataclasses.replace(task, question=question, gold_sql=sql)], data, tok)
        return encode_prompt(tok, prompt)[0], tok(answer, add_special_tokens=False)["input_ids"] + [eos]

    return swap


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
        pad_token_id=tok.pad_token_id,
    )


def encode_prompt(tok, parts: tuple[str, str]) -> tuple[list[int], int]:
    """(token ids, shared length) of a (shared, question) prompt: BOS + the shared part's ids +
    the question part's ids, each part tokenised on its own. Nothing is cut: prompts are fitted
    to the budget when they are written (`prompt_and_answer_texts`)."""
    shared, question = (tok(text, add_special_tokens=False)["input_ids"] for text in parts)
    prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return prefix + shared + question, len(prefix) + len(shared)


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


PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "transformers", "tokenizers",
            "duckdb", "sqlglot")


def git_state() -> tuple[str | None, bool]:
    """(HEAD commit or None outside a git checkout, whether tracked files other than the README
    and results/ — which `make results` rewrites while it runs — have local changes)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!README.md", ":!results")
    return git("rev-parse", "HEAD"), bool(status)


def provenance(cfg: RunConfig) -> dict:
    """What a run's figures depend on: the code's git commit (and whether the tree had local
    changes), package versions, Python and machine, and every seed of the config."""
    import importlib.metadata
    import platform

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": {name: version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, "
                   f"jax backend {jax.default_backend()}",
        "seeds": {"policy": cfg.policy.seed, "sft": cfg.sft.seed, "grpo": cfg.grpo.seed,
                  "speculative": cfg.grpo.speculative.seed},
    }


def run(cfg: RunConfig) -> dict:
    """Run (or resume) the whole pipeline of `cfg`; returns the summary figures also written to
    summary.md.
    """
    t_start = time.perf_counter()
    # One process per host (ZORRO_* variables): every process runs this same function.
    maybe_initialize_distributed()
    leader = is_leader()
    run_dir = Path(cfg.run_dir)
    # Process 0 writes the run's files; the others keep their own metrics log (the same rows:
    # every process runs the same steps, so each decides alike what a resume skips).
    own_dir = run_dir if leader else run_dir / f"process{jax.process_index()}"
    own_dir.mkdir(parents=True, exist_ok=True)
    if leader:
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
        (run_dir / "provenance.json").write_text(json.dumps(provenance(cfg), indent=2))
    say = (lambda *a: None) if cfg.quiet or not leader else (lambda *a: print(*a, flush=True))
    mesh = None if cfg.mesh.single_device and jax.process_count() == 1 else cfg.mesh.make()

    from zorro_jax.tasks.text2sql.reward import RewardFn

    train_tasks, rule = load_tasks(cfg.data, cfg.data.train_split)
    eval_tasks, _ = load_tasks(cfg.data, cfg.data.eval_split)
    grpo_split = cfg.data.grpo_split or cfg.data.train_split
    grpo_tasks = train_tasks if grpo_split == cfg.data.train_split else load_tasks(cfg.data, grpo_split)[0]
    reward_cfg = cfg.reward if cfg.reward.rule != "auto" else dataclasses.replace(cfg.reward, rule=rule)
    # The tokenizer learns from whole prompts; then every prompt is written within the budget.
    untrimmed, train_answers = prompt_and_answer_texts(train_tasks, cfg.data)
    # Each process trains its own (identical, deterministic) copy: no reads of a half-written file.
    tok = get_tokenizer(cfg if leader else dataclasses.replace(cfg, run_dir=str(own_dir)),
                        ["".join(p) for p in untrimmed] + train_answers)
    train_prompts, _ = prompt_and_answer_texts(train_tasks, cfg.data, tok)
    eval_prompts, _ = prompt_and_answer_texts(eval_tasks, cfg.data, tok)
    grpo_prompts, _ = prompt_and_answer_texts(grpo_tasks, cfg.data, tok)
    # The reward's sandbox opens the databases only now: the prompts have read their schemas
    # (cached), and DuckDB refuses a second connection with another configuration.
    reward = RewardFn(reward_cfg)
    # Tasks whose gold query fails or times out are dropped before anything trains on them.
    dropped = {}

    def drop(split, tasks, prompts, answers=None):
        kept, reasons = drop_failing_golds(tasks, reward.executor)
        if reasons:
            dropped[split] = reasons
            say(f"{split}: dropped {len(tasks) - len(kept)} of {len(tasks)} tasks whose gold query "
                f"fails: {reasons}")
        pick = lambda xs: None if xs is None else [xs[i] for i in kept]
        return pick(tasks), pick(prompts), pick(answers)

    train_tasks, train_prompts, train_answers = drop("train", train_tasks, train_prompts, train_answers)
    grpo_tasks, grpo_prompts, _ = drop("grpo", grpo_tasks, grpo_prompts)
    eval_tasks, eval_prompts, _ = drop("eval", eval_tasks, eval_prompts)
    if cfg.data.eval_limit:
        eval_tasks, eval_prompts = eval_tasks[: cfg.data.eval_limit], eval_prompts[: cfg.data.eval_limit]
    eos = tok.eos_token_id
    say(f"data: {len(train_tasks)} SFT ({cfg.data.train_split}) / {len(grpo_tasks)} GRPO ({grpo_split}) / "
        f"{len(eval_tasks)} eval ({cfg.data.eval_split}) tasks; tokenizer vocab {len(tok)}")

    if cfg.policy.checkpoint:
        model = load_hf_model(cfg.policy.checkpoint)
    else:
        model = init_model(new_model_config(cfg, tok), seed=cfg.policy.seed)
    graphdef, params = nnx.split(model)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    say(f"policy: {model.config.model_type}, {n_params / 1e6:.2f}M parameters")

    skipped = {}

    def items(split, tasks, prompts, answers=None):
        """PromptItems (and SFT examples) of the tasks whose prompt fits the budget even after
        trimming the schema; the others are skipped and counted in the report."""
        kept, examples = [], []
        for i, (t, p) in enumerate(zip(tasks, prompts)):
            item = PromptItem(t, *encode_prompt(tok, p), group_key=t.db_id)
            if len(item.prompt_ids) > cfg.data.max_prompt_tokens:
                skipped[split] = skipped.get(split, 0) + 1
                continue
            kept.append(item)
            if answers is not None:
                examples.append((item.prompt_ids, tok(answers[i], add_special_tokens=False)["input_ids"] + [eos]))
        if skipped.get(split):
            say(f"{split}: {skipped[split]} of {len(tasks)} tasks skipped (prompt over "
                f"{cfg.data.max_prompt_tokens} tokens after trimming the schema)")
        if not kept:
            raise ValueError(f"no {split} task fits data.max_prompt_tokens = {cfg.data.max_prompt_tokens}")
        return (kept, examples) if answers is not None else kept

    train_items, examples = items("train", train_tasks, train_prompts, train_answers)
    eval_items, grpo_items = items("eval", eval_tasks, eval_prompts), items("grpo", grpo_tasks, grpo_prompts)

    reward_fn = reward.score
    sampler = dataclasses.replace(cfg.grpo.sampler, eos_token_ids=(eos,), pad_token_id=tok.pad_token_id)
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
        state = {"params": params, "opt": sft_opt.init(params)}
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
                                swap=literal_swapper(train_tasks, tok, cfg.data, eos) if cfg.sft.literal_swap else None)
        state = run_phase("sft", cfg.sft.steps, step_fn, state, run_dir, log,
                          checkpoint_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints,
                          later_phases=("eval", "distill", "grpo"), quiet=cfg.quiet,
                          show=lambda r: {"loss": f"{r['loss']:.3f}"})
        phases["sft_seconds"] = time.perf_counter() - t0
    policy = Policy(graphdef, state["params"])
    grpo_opt = make_optimizer(cfg.grpo.optim)
    grpo_steps = mesh_steps(grpo_opt, cfg.grpo.packing)

    def held_out(step: int):
        rows = [r for r in log.rows() if r.get("phase") == "eval" and r["step"] == step]
        if rows:
            return rows[-1]
        t0 = time.perf_counter()
        res = evaluate(policy, tok, eval_items, reward_fn, sampler, cfg.eval_batch_size, grpo_cfg.correct_threshold,
                       steps=grpo_steps)
        row = {"phase": "eval", "step": step, "exec_accuracy": res["exec_accuracy"],
               "reward_mean": res["reward_mean"], "n": res["n"], "seconds": time.perf_counter() - t0}
        (own_dir / f"eval_step{step}.jsonl").write_text("".join(
            json.dumps({"task_id": it.task.task_id, "question": it.task.question, "gold": it.task.gold_sql,
                        "output": txt, "correct": ok}) + "\n"
            for it, txt, ok in zip(eval_items, res["texts"], res["correct"])))
        log.append(row)  # after the outputs: a logged eval always has its per-task file
        return row

    def correct_at(step: int) -> list[bool]:
        lines = (own_dir / f"eval_step{step}.jsonl").read_text().splitlines()
        return [bool(json.loads(x)["correct"]) for x in lines if x.strip()]

    before = held_out(0)
    say(f"held-out execution accuracy after SFT: {before['exec_accuracy']:.3f} (n={before['n']})")

    # Speculative rollouts: a draft distilled from the SFT policy before GRPO, refreshed during it.
    draft = None
    if grpo_cfg.speculative.enabled:
        t0 = time.perf_counter()
        draft = warm_up_draft(cfg, grpo_cfg, policy, examples, run_dir, log)
        phases["draft_warmup_seconds"] = time.perf_counter() - t0

    # GRPO.
    t0 = time.perf_counter()
    trainer = GRPOTrainer(policy, grpo_opt, None if grpo_steps else make_apply_fn(grpo_opt), tok, grpo_items,
                          reward_fn, grpo_cfg, ref_params=state["params"] if grpo_cfg.loss.kl_coef > 0 else None,
                          draft=draft, questions_per_key=cfg.data.questions_per_database, steps=grpo_steps)

    def grpo_step(step, st):
        policy.params = st["params"]
        if draft:
            draft.params, draft.opt_state = st["draft"], st["draft_opt"]
        row, opt, _ = trainer.iteration(step - 1, st["opt"])
        if step % trainer.eval_every == 0 and step < grpo_cfg.steps:  # the last one comes below
            row["heldout_accuracy"] = held_out(step)["exec_accuracy"]
        out = {"params": policy.params, "opt": opt}
        return ({**out, "draft": draft.params, "draft_opt": draft.opt_state} if draft else out), row

    def restore(s):
        policy.params = s["params"]
        if draft:
            draft.params, draft.opt_state = s["draft"], s["draft_opt"]

    def show(r):
        out = {"reward": f"{r['reward_mean']:.3f}", "acc": f"{r['exec_accuracy']:.2f}"}
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
    say(f"held-out execution accuracy after GRPO: {after['exec_accuracy']:.3f} (n={after['n']})")
    # Gathered by every process (a collective when the mesh spans processes); process 0 exports
    # the model and writes the report.
    final = policy.model() if mesh is None else nnx.merge(graphdef, to_host(policy.params))
    if not leader:
        reward.close()
        return {}

    export_hf_model(final, run_dir / "policy", tokenizer=tok)
    if draft:
        export_hf_model(draft.model(), run_dir / "draft", tokenizer=tok)
    rows = log.rows()
    plots = plot_metrics(rows, run_dir)
    grpo_rows = [r for r in rows if r.get("phase") == "grpo"]
    results = {
        "held-out execution accuracy after SFT": before["exec_accuracy"],
        "held-out execution accuracy after GRPO": after["exec_accuracy"],
        "eval split / tasks": f"{cfg.data.eval_split} / {after['n']}",
        "tasks skipped (prompt over budget), train / grpo / eval": "{} / {} / {}".format(
            *(skipped.get(k, 0) for k in ("train", "grpo", "eval"))),
        "tasks dropped (gold query fails), train / grpo / eval": "{} / {} / {}".format(
            *(sum(dropped.get(k, {}).values()) for k in ("train", "grpo", "eval"))),
        **({"why gold queries failed": "; ".join(f"{k} ({v})" for r in dropped.values()
                                                for k, v in r.items())} if dropped else {}),
        "reward comparison rule": reward_cfg.rule,
        **run_summary(rows, correct_at(0), correct_at(grpo_cfg.steps)),
        "parameters (M)": n_params / 1e6,
        "wall seconds (this invocation)": time.perf_counter() - t_start,
        **phases,
    }
    if grpo_rows and draft:
        for k in ("time_draft_est", "time_verify_est"):
            results[f"seconds per GRPO step, {k[5:]} (estimated split of rollout)"] = float(
                np.mean([r[k] for r in grpo_rows]))
    write_summary(run_dir, "zorro_jax text-to-SQL run", {
        "Results": results,
        "Files": [f"metrics.jsonl ({len(rows)} rows)", *[p.name for p in plots],
                  "policy/ (Hugging Face folder)", "eval_step*.jsonl (held-out outputs, per task)",
                  "provenance.json (commit, package versions, seeds, machine)",
                  "summary.json (the results above)"],
        "Config": f"```json\n{json.dumps(dataclasses.asdict(cfg), indent=1, default=str)}\n```",
    })
    (run_dir / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    reward.close()
    say(f"report: {run_dir / 'summary.md'}")
    return results
