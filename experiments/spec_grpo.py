"""How speculative acceptance evolves over a GRPO run, with and without online draft distillation.

Runs the quickstart configuration with speculative rollouts twice: once refreshing the draft
every `--refresh-every` iterations on that iteration's rollouts, once never refreshing it (the
draft stays as warmed up on the SFT policy). The second run reuses the first one's tokenizer,
SFT checkpoint and draft warm-up (identical by construction), so only GRPO runs twice. Prints
acceptance and tokens per policy forward per step for both, and writes `spec_grpo.json` and
`spec_grpo.png` into --out.

    python -m experiments.spec_grpo [--out runs/spec_grpo] [--steps 20] [--refresh-every 1] [--gamma 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from experiments.quickstart import PRESETS, QUICKSTART
from zorro_jax.rl.grpo import SpeculativeRolloutConfig
from zorro_jax.rl.pipeline import run

SHARED = ("tokenizer", "ckpt_sft", "ckpt_distill")


def config(run_dir: Path, steps: int, refresh_every: int, gamma: int, lr: float):
    spec = SpeculativeRolloutConfig(enabled=True, gamma=gamma, refresh_every=refresh_every)
    grpo = dataclasses.replace(QUICKSTART.grpo, steps=steps, speculative=spec,
                               optim=dataclasses.replace(QUICKSTART.grpo.optim, lr=lr, decay_steps=steps))
    return dataclasses.replace(QUICKSTART, run_dir=str(run_dir), grpo=grpo)


def seed_from(src: Path, dst: Path):
    """Copy the phases both runs share (tokenizer, SFT, draft warm-up) and their metric rows."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        if (src / name).exists() and not (dst / name).exists():
            shutil.copytree(src / name, dst / name)
    rows = [json.loads(x) for x in (src / "metrics.jsonl").read_text().splitlines() if x.strip()]
    keep = [r for r in rows if r["phase"] in ("sft", "distill") or (r["phase"] == "eval" and r["step"] == 0)]
    if not (dst / "metrics.jsonl").exists():
        (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))


def grpo_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if r["phase"] == "grpo"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/spec_grpo")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--refresh-every", type=int, default=1)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--lr", type=float, default=QUICKSTART.grpo.optim.lr, help="GRPO learning rate")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.refresh_every < 1:
        ap.error("--steps and --refresh-every must be >= 1")
    out = Path(args.out)
    online, frozen = out / "online", out / "frozen"
    task_cfg = PRESETS["text2sql"][1]
    run(config(online, args.steps, args.refresh_every, args.gamma, args.lr), task_cfg)
    seed_from(online, frozen)
    run(config(frozen, args.steps, 0, args.gamma, args.lr), task_cfg)

    series = {}
    for name, folder in (("online", online), ("frozen", frozen)):
        rows = grpo_rows(folder)
        series[name] = {k: [r[k] for r in rows] for k in ("step", "spec_acceptance_rate", "spec_tokens_per_forward",
                                                          "time_draft_est", "time_verify_est", "reward_mean")}
    print(f"{'step':>4} | {'accept online':>13} {'frozen':>7} | {'tok/fwd online':>14} {'frozen':>7}")
    for i, step in enumerate(series["online"]["step"]):
        print(f"{step:>4} | {series['online']['spec_acceptance_rate'][i]:>13.3f} "
              f"{series['frozen']['spec_acceptance_rate'][i]:>7.3f} | "
              f"{series['online']['spec_tokens_per_forward'][i]:>14.2f} "
              f"{series['frozen']['spec_tokens_per_forward'][i]:>7.2f}")
    payload = {"args": vars(args), "series": series}
    (out / "spec_grpo.json").write_text(json.dumps(payload, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, st in series.items():
        axes[0].plot(st["step"], st["spec_acceptance_rate"], marker="o", label=name)
        axes[1].plot(st["step"], st["spec_tokens_per_forward"], marker="o", label=name)
    axes[0].set(xlabel="GRPO step", ylabel="acceptance rate", title=f"γ={args.gamma}")
    axes[1].set(xlabel="GRPO step", ylabel="tokens per policy forward")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "spec_grpo.png", dpi=100)
    print(f"wrote {out / 'spec_grpo.json'} and {out / 'spec_grpo.png'}")
    return payload


if __name__ == "__main__":
    main()
