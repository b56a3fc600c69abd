"""Run reporting: metrics.jsonl (one line per step), PNG plots, summary figures, summary.md and
provenance (commit, package versions, machine, seeds).

On resume, zorro_jax.rl.loop drops rows logged after the restored step so a restarted run's file
reads exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax


class MetricsLog:
    """Append-only JSON-lines log of metric rows (one per step and phase)."""

    def __init__(self, run_dir: str | Path, name: str = "metrics.jsonl"):
        self.path = Path(run_dir) / name
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def rows(self) -> list[dict]:
        """All rows logged so far (empty when the file does not exist)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def append(self, row: dict):
        """Append one row, converting array scalars to floats, and flush."""
        clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()


# Phase timings that are parts of a GRPO step; `time_total` is their sum, and the `_est` figures
# (a speculative rollout's draft / verify split) are estimates inside `time_rollout`.
def phase_parts(rows: list[dict]) -> list[str]:
    """The `time_*` keys of GRPO rows that add up to `time_total`, in a fixed order."""
    order = ("time_rollout", "time_reward", "time_logprobs", "time_update", "time_distill")
    present = {k for r in rows for k in r}
    return [k for k in order if k in present]


def moving_average(values, window: int):
    """(mean, standard error) of the trailing window of each point (shorter at the start)."""
    import numpy as np

    x = np.asarray(values, np.float64)
    mean, se = np.empty_like(x), np.empty_like(x)
    for i in range(len(x)):
        w = x[max(0, i - window + 1): i + 1]
        mean[i] = w.mean()
        se[i] = w.std(ddof=1) / np.sqrt(len(w)) if len(w) > 1 else 0.0
    return mean, se


def accuracy_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n tasks (binomial)."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else math.nan


def _fig():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6.4, 3.8))


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def phase_figure(grpo: list[dict]):
    """Seconds per GRPO step as stacked parts: each bar's top is the step's measured total."""
    plt, fig, ax = _fig()
    steps = [r["step"] for r in grpo]
    bottom = [0.0] * len(grpo)
    for k in phase_parts(grpo):
        vals = [r.get(k, 0.0) for r in grpo]
        ax.bar(steps, vals, bottom=bottom, label=k[5:])
        bottom = [a + b for a, b in zip(bottom, vals)]
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("seconds per step")
    ax.set_title("time per GRPO step, by phase (bar top = measured total)")
    ax.legend(fontsize=8)
    return plt, fig, ax


def plot_metrics(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Reward and accuracy curves (moving averages with a ±1 standard-error band; held-out
    accuracy with its standard error), seconds per phase, and the SFT loss, as PNGs. Returns the
    written paths."""
    import numpy as np

    out_dir = Path(out_dir)
    written = []
    grpo = [r for r in rows if r.get("phase") == "grpo"]
    evals = [r for r in rows if r.get("phase") == "eval"]
    if grpo:
        steps = np.asarray([r["step"] for r in grpo])
        window = max(3, len(grpo) // 6)
        plt, fig, ax = _fig()
        for key, label, color in (("reward_mean", "rollout reward", "C0"),
                                  ("accuracy", "rollout accuracy (reward at the correct threshold)", "C1")):
            vals = [r[key] for r in grpo]
            mean, se = moving_average(vals, window)
            ax.plot(steps, vals, color=color, alpha=0.3, lw=1)
            ax.plot(steps, mean, color=color, label=f"{label} ({window}-step moving average)")
            ax.fill_between(steps, mean - se, mean + se, color=color, alpha=0.2)
        probes = [r for r in rows if r.get("phase") == "probe"]
        if probes:
            ax.plot([r["step"] for r in probes], [r["reward_mean"] for r in probes], "s-", color="C2",
                    label=f"probe reward ({len(probes[0]['prompt_rewards'])} fixed GRPO prompts, "
                          "same random numbers)")
        if evals:
            acc = np.asarray([r["accuracy"] for r in evals])
            err = [accuracy_se(r["accuracy"], r["n"]) for r in evals]
            ax.errorbar([r["step"] for r in evals], acc, yerr=err, color="k", fmt="o", capsize=3,
                        label=f"held-out accuracy, greedy ({evals[0]['n']} tasks, ±1 s.e.)")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("fraction")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"each step: {grpo[0].get('prompts', '?')} prompts × "
                     f"{grpo[0].get('group_size', '?')} rollouts; band ±1 s.e. of the window",
                     fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        written.append(_save(plt, fig, out_dir / "reward_accuracy.png"))
        if phase_parts(grpo):
            plt, fig, _ = phase_figure(grpo)
            written.append(_save(plt, fig, out_dir / "phase_times.png"))
    sft = [r for r in rows if r.get("phase") == "sft"]
    if sft:
        plt, fig, ax = _fig()
        ax.plot([r["step"] for r in sft], [r["loss"] for r in sft])
        ax.set_xlabel("SFT step")
        ax.set_ylabel("answer-token NLL (nats / token)")
        ax.set_title(f"SFT loss, {sft[0].get('examples', '?')} examples per step", fontsize=9)
        ax.grid(alpha=0.3)
        written.append(_save(plt, fig, out_dir / "sft_loss.png"))
    return written


def paired_interval(d) -> str:
    """"mean [low, high]": the mean of paired differences `d` with its normal 95% interval."""
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return f"{d.mean():+.3f} [{d.mean() - 1.96 * se:+.3f}, {d.mean() + 1.96 * se:+.3f}]"


def run_summary(rows: list[dict], before: list[bool], after: list[bool]) -> dict:
    """Figures that do not mislead: held-out accuracy before / after GRPO with standard errors
    and a 95% interval of the paired difference (same tasks), the mean rollout reward of the
    first and last quarter of GRPO steps (not two single steps), the probe's reward at each
    evaluation with a 95% interval of its last - first difference (same prompts and random
    numbers, paired by prompt), the share of groups with no advantage signal, seconds per phase,
    tokens/s, and the acceptance figures of speculative runs."""
    import numpy as np

    out = {}
    n = len(before)
    if n and len(after) == n:
        b, a = np.asarray(before, np.float64), np.asarray(after, np.float64)
        d = a - b
        out["held-out accuracy before GRPO (± s.e.)"] = f"{b.mean():.3f} ± {accuracy_se(b.mean(), n):.3f}"
        out["held-out accuracy after GRPO (± s.e.)"] = f"{a.mean():.3f} ± {accuracy_se(a.mean(), n):.3f}"
        out["difference after - before, 95% interval (paired, same tasks)"] = paired_interval(d)
        out["tasks changed: fixed / broken"] = f"{int((d > 0).sum())} / {int((d < 0).sum())} of {n}"
    probes = sorted((r for r in rows if r.get("phase") == "probe"), key=lambda r: r["step"])
    if len(probes) > 1:
        # The same prompts and random numbers at every probe: paired by prompt.
        b, a = (np.asarray(probes[i]["prompt_rewards"], np.float64) for i in (0, -1))
        d = a - b
        name = f"probe reward ({len(d)} fixed GRPO prompts × G={probes[0]['group_size']}, one key)"
        out[f"{name}, at steps {' / '.join(str(r['step']) for r in probes)}"] = " / ".join(
            f"{r['reward_mean']:.3f}" for r in probes)
        out["probe reward, last - first, 95% interval (paired by prompt)"] = paired_interval(d)
    grpo = [r for r in rows if r.get("phase") == "grpo"]
    if grpo:
        q = max(1, len(grpo) // 4)
        for name, part in (("first", grpo[:q]), ("last", grpo[-q:])):
            rewards = np.asarray([r["reward_mean"] for r in part])
            se = rewards.std(ddof=1) / math.sqrt(len(part)) if len(part) > 1 else math.nan
            out[f"rollout reward, {name} quarter of GRPO steps ({len(part)} steps, ± s.e.)"] = (
                f"{rewards.mean():.3f} ± {se:.3f}")
        if "zero_signal_groups" in grpo[0]:
            share = [np.mean([r["zero_signal_groups"] for r in part]) for part in (grpo[:q], grpo[-q:])]
            out["groups with one reward for all G (no advantage signal), first / last quarter"] = (
                f"{share[0]:.3f} / {share[1]:.3f}")
        for k in phase_parts(grpo) + ["time_total"]:
            out[f"seconds per GRPO step, {k[5:]}"] = float(np.mean([r.get(k, 0.0) for r in grpo]))
        out["generated tokens / s (rollout phase)"] = float(
            sum(r["generated_tokens"] for r in grpo) / max(sum(r["time_rollout"] for r in grpo), 1e-9))
        if "spec_acceptance_rate" in grpo[0]:
            for k in ("spec_acceptance_rate", "spec_tokens_per_forward"):
                first = np.mean([r[k] for r in grpo[:q]])
                last = np.mean([r[k] for r in grpo[-q:]])
                out[f"{k[5:]}, first / last quarter"] = f"{first:.3f} / {last:.3f}"
    return out


def fmt(v) -> str:
    """A value as summary text: floats to 4 significant digits."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_summary(out_dir: str | Path, title: str, sections: dict[str, dict | list | str]) -> Path:
    """summary.md with one table (dict), bullet list (list) or paragraph (str) per section."""
    lines = [f"# {title}", ""]
    for name, body in sections.items():
        lines += [f"## {name}", ""]
        if isinstance(body, dict):
            lines += ["| | |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in body.items()]
        elif isinstance(body, list):
            lines += [f"- {x}" for x in body]
        else:
            lines.append(str(body))
        lines.append("")
    path = Path(out_dir) / "summary.md"
    path.write_text("\n".join(lines))
    return path


# The packages a run's provenance records the versions of.
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


def provenance(seeds: dict) -> dict:
    """What a run's figures depend on: the code's git commit (and whether the tree had local
    changes), package versions, Python and machine, and the run's seeds (name -> seed)."""
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
        "seeds": dict(seeds),
    }
