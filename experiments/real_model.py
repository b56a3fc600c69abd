"""SmolLM2-135M-Instruct on the built-in text-to-SQL benchmark: greedy held-out execution accuracy
zero-shot, after a short SFT, and after GRPO on top of it, with wall time per phase.

    python -m experiments.fetch_model smollm2-135m      # once: builds the model folder
    python -m experiments.real_model [--out runs/real_model] [--sft-steps 20] [--grpo-steps 10]
                                     [--eval-limit 48] [--prompts 4] [--group-size 6] ...

Two pipeline runs (`zorro_jax.rl.pipeline.run`), each resumable: `zero_shot/` (no SFT, no GRPO:
the checkpoint as loaded, prompted through its chat template with the "ddl" prompt's system
turn) and `trained/` (SFT, held-out eval, GRPO, held-out eval; its reward curve is
trained/reward_accuracy.png). The same first `--eval-limit` dev tasks are scored at every stage, so the
stages compare task by task (paired differences). The report goes to summary.md / summary.json
in `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

import zorro_jax.tasks  # noqa: F401  (registers the built-in tasks)
from experiments.common import machine_note
from zorro_jax.checkpoints.pretrained import default_folder, is_fetched
from zorro_jax.rl.grpo import GRPOConfig
from zorro_jax.rl.losses import LossConfig
from zorro_jax.rl.optim import OptimConfig
from zorro_jax.rl.pipeline import DataConfig, PolicyConfig, RunConfig, run
from zorro_jax.rl.report import accuracy_se, write_summary
from zorro_jax.rl.sft import SFTConfig
from zorro_jax.sampling.sampler import SamplerConfig
from zorro_jax.tasks.text2sql.task import Text2SQLConfig

MODEL = "smollm2-135m"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/real_model", help="run folder (re-running resumes)")
    p.add_argument("--checkpoint", default="",
                   help=f"Hugging Face folder of the model (default: the fetched {MODEL} folder)")
    p.add_argument("--eval-limit", type=int, default=48, help="dev tasks scored at every stage")
    p.add_argument("--eval-batch", type=int, default=16, help="prompts per greedy evaluation batch")
    p.add_argument("--max-prompt-tokens", type=int, default=384,
                   help="prompt budget (chat frame included); longer schemas are trimmed")
    p.add_argument("--max-new-tokens", type=int, default=80, help="generation budget (eval and rollouts)")
    p.add_argument("--sft-steps", type=int, default=20)
    p.add_argument("--sft-batch", type=int, default=8, help="examples per SFT step")
    p.add_argument("--sft-lr", type=float, default=5e-5)
    p.add_argument("--grpo-steps", type=int, default=10)
    p.add_argument("--prompts", type=int, default=4, help="GRPO prompts per step")
    p.add_argument("--group-size", type=int, default=6, help="GRPO completions per prompt")
    p.add_argument("--grpo-lr", type=float, default=1e-5)
    p.add_argument("--temperature", type=float, default=1.0, help="GRPO rollout temperature")
    p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--remat", default="none", choices=("none", "block", "attention"))
    p.add_argument("--lora-rank", type=int, default=0,
                   help="train LoRA adapters of this rank only (0 = full fine-tuning)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reuse-sft", default="",
                   help="an earlier --out folder run with the same SFT and eval settings: its zero-shot "
                        "figures and finished SFT phase are taken over, so only GRPO runs (GRPO variants)")
    return p.parse_args(argv)


def model_folder(args) -> str:
    """The model folder, or a clear error saying how to build it."""
    folder = Path(args.checkpoint) if args.checkpoint else default_folder(MODEL)
    if not is_fetched(folder):
        raise SystemExit(f"no converted model in {folder}: run `python -m experiments.fetch_model {MODEL}` first")
    return str(folder)


def run_configs(args) -> tuple[RunConfig, RunConfig]:
    """(zero-shot run, SFT + GRPO run) of the command line."""
    n = args.max_new_tokens
    sampler = SamplerConfig(max_new_tokens=n, temperature=args.temperature, response_buckets=(n,))
    trained = RunConfig(
        run_dir=str(Path(args.out) / "trained"),
        task="text2sql",
        data=DataConfig(eval_split="dev", eval_limit=args.eval_limit, max_prompt_tokens=args.max_prompt_tokens),
        policy=PolicyConfig(checkpoint=model_folder(args), compute_dtype=args.compute_dtype,
                            remat=args.remat, seed=args.seed, lora_rank=args.lora_rank),
        # A pretrained model needs a small rate: ~1e-3 (the from-scratch quickstart's) wipes
        # out what it knows within a few steps.
        sft=SFTConfig(steps=args.sft_steps, batch_size=args.sft_batch, seed=args.seed,
                      optim=OptimConfig(lr=args.sft_lr, warmup_steps=min(4, args.sft_steps),
                                        decay_steps=max(1, args.sft_steps - 4), final_lr_fraction=0.3)),
        grpo=GRPOConfig(
            steps=args.grpo_steps, prompts_per_step=args.prompts, group_size=args.group_size,
            seed=args.seed, loss=LossConfig(aggregation="token_mean", clip_low=0.2, clip_high=0.28),
            optim=OptimConfig(lr=args.grpo_lr, warmup_steps=min(2, args.grpo_steps),
                              decay_steps=max(1, args.grpo_steps - 2), final_lr_fraction=0.5),
            sampler=sampler,
            # No evaluations between the first and the last: each costs as much as several steps.
            eval_every=max(1, args.grpo_steps)),
        eval_batch_size=args.eval_batch,
        # Each checkpoint of a 135M-parameter model with Adam state is ~1.6 GB: only at phase ends.
        checkpoint_every=max(args.sft_steps, args.grpo_steps, 1),
        keep_checkpoints=1,
    )
    zero_shot = dataclasses.replace(trained, run_dir=str(Path(args.out) / "zero_shot"),
                                    sft=dataclasses.replace(trained.sft, steps=0),
                                    grpo=dataclasses.replace(trained.grpo, steps=0))
    return zero_shot, trained


def reuse_sft(src: Path, zero_shot: RunConfig, trained: RunConfig) -> None:
    """Seed this experiment's run folders with `src`'s zero-shot evaluation and finished SFT
    phase (its checkpoint, loss rows and after-SFT evaluation), which the pipeline then resumes
    from. Refuses when anything those figures depend on differs."""
    import shutil

    old = json.loads((src / "trained" / "config.json").read_text())
    new = json.loads(json.dumps(dataclasses.asdict(trained), default=str))
    defaults = json.loads(json.dumps(dataclasses.asdict(RunConfig()), default=str))

    def filled(was, default):
        # A field added to the config after `src` ran behaved as its default there.
        if not isinstance(default, dict):
            return was
        return {k: filled(was[k], d) if k in was else d for k, d in default.items()}

    for key in ("data", "policy", "sft", "eval_batch_size"):
        if filled(old[key], defaults[key]) != new[key]:
            raise SystemExit(f"--reuse-sft {src}: its {key} settings differ from this run's")
    for cfg in (zero_shot, trained):
        dst = Path(cfg.run_dir)
        if (dst / "metrics.jsonl").exists():
            continue  # seeded (or run) before: the pipeline resumes it as it is
        origin = src / dst.name
        dst.mkdir(parents=True)
        rows = [json.loads(x) for x in (origin / "metrics.jsonl").read_text().splitlines() if x.strip()]
        keep = [r for r in rows if r.get("phase") == "sft" or (r.get("phase") == "eval" and r["step"] == 0)]
        (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
        shutil.copy(origin / "eval_step0.jsonl", dst / "eval_step0.jsonl")
        if cfg.sft.steps:
            shutil.copytree(origin / "ckpt_sft", dst / "ckpt_sft")


def eval_row(run_dir: Path, step: int) -> tuple[dict, list[bool]]:
    """(metrics row, per-task correctness) of the held-out evaluation at GRPO step `step`."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    row = [r for r in rows if r.get("phase") == "eval" and r["step"] == step][-1]
    lines = (run_dir / f"eval_step{step}.jsonl").read_text().splitlines()
    return row, [bool(json.loads(x)["correct"]) for x in lines if x.strip()]


def paired(before: list[bool], after: list[bool]) -> dict:
    """Mean paired difference after − before on the same tasks, its s.e. and 95% interval."""
    d = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return {"mean": float(d.mean()), "se": float(se), "lo": float(d.mean() - 1.96 * se),
            "hi": float(d.mean() + 1.96 * se), "fixed": int((d > 0).sum()), "broken": int((d < 0).sum())}


def phase_seconds(run_dir: Path, phase: str) -> float:
    """Seconds logged by the steps of a phase (compilation included, eval rows excluded)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return float(sum(r["seconds"] for r in rows if r.get("phase") == phase))


def report(args, zero_shot: RunConfig, trained: RunConfig, wall: dict) -> dict:
    """The figures of both runs as one payload (summary.json; rendered by experiments.results)."""
    z_dir, t_dir, last = Path(zero_shot.run_dir), Path(trained.run_dir), trained.grpo.steps
    (z_row, z_ok), (s_row, s_ok), (g_row, g_ok) = eval_row(z_dir, 0), eval_row(t_dir, 0), eval_row(t_dir, last)
    rows = [json.loads(x) for x in (t_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    grpo = [r for r in rows if r.get("phase") == "grpo"]

    def stage(name, row, ok, train_s):
        acc = float(np.mean(ok))
        return {"stage": name, "accuracy": acc, "se": accuracy_se(acc, len(ok)), "n": len(ok),
                "train_seconds": train_s, "eval_seconds": row["seconds"]}

    return {
        "model": Path(trained.policy.checkpoint).name,
        "machine": machine_note(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "checkpoint", "reuse_sft")},
        "stages": [stage("zero-shot", z_row, z_ok, 0.0),
                   stage(f"after SFT ({trained.sft.steps} steps × {trained.sft.batch_size})", s_row, s_ok,
                         phase_seconds(t_dir, "sft")),
                   stage(f"after GRPO ({last} steps × {trained.grpo.prompts_per_step} × "
                         f"{trained.grpo.group_size})", g_row, g_ok, phase_seconds(t_dir, "grpo"))],
        "differences": {"sft_vs_zero_shot": paired(z_ok, s_ok), "grpo_vs_sft": paired(s_ok, g_ok)},
        "grpo_steps": [{k: r[k] for k in ("step", "reward_mean", "accuracy", "completion_len_mean",
                                          "entropy", "time_total")} for r in grpo],
        "wall_seconds": wall,
    }


def write_report(out: Path, payload: dict) -> None:
    """summary.json and summary.md in `out`."""
    stages = {f"{s['stage']}": (f"{s['accuracy']:.3f} ± {s['se']:.3f} (n={s['n']}); train "
                                f"{s['train_seconds']:.0f} s, eval {s['eval_seconds']:.0f} s")
              for s in payload["stages"]}
    diffs = {k: f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (fixed {d['fixed']}, broken {d['broken']})"
             for k, d in payload["differences"].items()}
    curve = ["| GRPO step | rollout reward | rollout accuracy | completion tokens | entropy | seconds |",
             "|---|---|---|---|---|---|"]
    curve += [f"| {r['step']} | {r['reward_mean']:.3f} | {r['accuracy']:.3f} | {r['completion_len_mean']:.0f} | "
              f"{r['entropy']:.3f} | {r['time_total']:.1f} |" for r in payload["grpo_steps"]]
    write_summary(out, f"{payload['model']} on the built-in text-to-SQL benchmark", {
        "Held-out execution accuracy (greedy, dev, ± s.e.)": stages,
        "Paired differences, 95% interval (same tasks)": diffs,
        "GRPO reward curve (also trained/reward_accuracy.png)": "\n".join(curve),
        "Wall seconds per run (model load, compilation and export included)": payload["wall_seconds"],
        "Settings": payload["settings"],
        "Machine": payload["machine"],
    })
    (out / "summary.json").write_text(json.dumps(payload, indent=1))
    print(f"report: {out / 'summary.md'}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    zero_shot, trained = run_configs(args)
    task_cfg = Text2SQLConfig(source="builtin", prompt_style="ddl")
    if args.reuse_sft:
        reuse_sft(Path(args.reuse_sft), zero_shot, trained)
    wall = {}
    for name, cfg in (("zero_shot", zero_shot), ("trained", trained)):
        t0 = time.perf_counter()
        run(cfg, task_cfg)
        wall[name] = time.perf_counter() - t0
    payload = report(args, zero_shot, trained, wall)
    write_report(Path(args.out), payload)
    return payload


if __name__ == "__main__":
    main()
