"""Run reporting: metrics.jsonl (one line per step), PNG plots, and summary.md.

On resume, zorro_jax.rl.loop drops rows logged after the restored step so a restarted run's file
reads exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


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


def plot_metrics(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """reward/accuracy curves and per-phase seconds, as PNGs. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    grpo = [r for r in rows if r.get("phase") == "grpo"]
    if grpo:
        steps = [r["step"] for r in grpo]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, [r["reward_mean"] for r in grpo], label="reward mean")
        ax.plot(steps, [r["exec_accuracy"] for r in grpo], label="execution accuracy (rollouts)")
        evals = [r for r in rows if r.get("phase") == "eval"]
        if evals:
            ax.scatter([r["step"] for r in evals], [r["exec_accuracy"] for r in evals],
                       color="k", marker="x", label="held-out accuracy (greedy)")
        ax.set_xlabel("GRPO step")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "reward_accuracy.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / "reward_accuracy.png")

        phases = sorted({k for r in grpo for k in r if k.startswith("time_")})
        if phases:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            bottom = [0.0] * len(grpo)
            for k in phases:
                vals = [r.get(k, 0.0) for r in grpo]
                ax.bar(steps, vals, bottom=bottom, label=k[5:])
                bottom = [a + b for a, b in zip(bottom, vals)]
            ax.set_xlabel("GRPO step")
            ax.set_ylabel("seconds")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out_dir / "phase_times.png", dpi=100)
            plt.close(fig)
            written.append(out_dir / "phase_times.png")
    sft = [r for r in rows if r.get("phase") == "sft"]
    if sft:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in sft], [r["loss"] for r in sft])
        ax.set_xlabel("SFT step")
        ax.set_ylabel("token NLL")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "sft_loss.png", dpi=100)
        plt.close(fig)
        written.append(out_dir / "sft_loss.png")
    return written


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
