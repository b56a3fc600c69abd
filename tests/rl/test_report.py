"""Run reports that do not mislead: phase bars whose tops are the measured totals, moving
averages, and summary figures with standard errors and a paired interval."""

import json
import math

import numpy as np
import pytest

from zorro_jax.rl.report import (
    MetricsLog,
    accuracy_se,
    moving_average,
    phase_figure,
    phase_parts,
    plot_metrics,
    run_summary,
)


def synthetic_rows(steps=12, speculative=False):
    rng = np.random.default_rng(0)
    rows = [{"phase": "sft", "step": s, "loss": 3.0 / s, "examples": 16} for s in range(1, 6)]
    rows.append({"phase": "eval", "step": 0, "accuracy": 0.3, "n": 100})
    for s in range(1, steps + 1):
        parts = {k: float(rng.uniform(0.1, 2.0)) for k in
                 ("time_rollout", "time_reward", "time_logprobs", "time_update")}
        row = {"phase": "grpo", "step": s, "prompts": 8, "group_size": 16,
               "reward_mean": float(rng.uniform(0.2, 0.6)), "accuracy": float(rng.uniform(0.1, 0.5)),
               "generated_tokens": 1000, "zero_signal_groups": 0.5 if s <= 3 else 0.25, **parts,
               "time_total": sum(parts.values())}
        if speculative:
            row.update(time_draft_est=0.3 * parts["time_rollout"], time_verify_est=0.6 * parts["time_rollout"],
                       spec_acceptance_rate=0.5, spec_tokens_per_forward=2.5)
        rows.append(row)
    rows.append({"phase": "eval", "step": steps, "accuracy": 0.35, "n": 100})
    return rows


@pytest.mark.parametrize("speculative", [False, True])
def test_phase_bars_top_out_at_the_measured_total(tmp_path, speculative):
    log = MetricsLog(tmp_path)
    for r in synthetic_rows(speculative=speculative):
        log.append(r)
    grpo = [r for r in log.rows() if r["phase"] == "grpo"]
    # Neither the total nor the estimated split of the rollout is stacked on top of the parts.
    assert "time_total" not in phase_parts(grpo) and not any("_est" in k for k in phase_parts(grpo))
    _, _, ax = phase_figure(grpo)
    tops = {}
    for bar in ax.patches:
        x = round(bar.get_x() + bar.get_width() / 2)
        tops[x] = max(tops.get(x, 0.0), bar.get_y() + bar.get_height())
    for r in grpo:
        assert tops[r["step"]] == pytest.approx(r["time_total"], rel=1e-9)
    names = {p.name for p in plot_metrics(log.rows(), tmp_path)}
    assert names == {"reward_accuracy.png", "phase_times.png", "sft_loss.png"}


def test_moving_average_and_standard_errors():
    mean, se = moving_average([1.0, 3.0, 5.0, 7.0], window=2)
    np.testing.assert_allclose(mean, [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(se, [0.0, 1.0, 1.0, 1.0])
    assert accuracy_se(0.3, 100) == pytest.approx(math.sqrt(0.21 / 100))


def test_summary_reports_quarters_and_a_paired_interval():
    rows = synthetic_rows(steps=12)
    before = [True] * 30 + [False] * 70
    after = [True] * 28 + [False] * 2 + [True] * 7 + [False] * 63  # 7 fixed, 2 broken
    out = run_summary(rows, before, after)
    assert out["tasks changed: fixed / broken"] == "7 / 2 of 100"
    d = np.asarray(after, float) - np.asarray(before, float)
    se = d.std(ddof=1) / 10
    key = "difference after - before, 95% interval (paired, same tasks)"
    assert out[key] == f"{d.mean():+.3f} [{d.mean() - 1.96 * se:+.3f}, {d.mean() + 1.96 * se:+.3f}]"
    grpo = [r for r in rows if r["phase"] == "grpo"]
    first = np.mean([r["reward_mean"] for r in grpo[:3]])
    assert out["rollout reward, first quarter of GRPO steps (3 steps, ± s.e.)"].startswith(f"{first:.3f} ±")
    assert out["groups with one reward for all G (no advantage signal), first / last quarter"] == (
        "0.500 / 0.250")
    assert out["seconds per GRPO step, total"] == pytest.approx(np.mean([r["time_total"] for r in grpo]))
    json.dumps(out)  # the summary is plain data


def test_summary_pairs_the_probe_by_prompt(tmp_path):
    rows = synthetic_rows(steps=12)
    first, mid, last = [0.25, 0.5, 0.0, 1.0], [0.25, 0.5, 0.25, 1.0], [0.5, 0.75, 0.25, 1.0]
    rows += [{"phase": "probe", "step": s, "reward_mean": float(np.mean(r)), "prompt_rewards": r,
              "group_size": 4} for s, r in ((12, last), (0, first), (6, mid))]  # any log order
    out = run_summary(rows, [True] * 10, [True] * 10)
    assert out["probe reward (4 fixed GRPO prompts × G=4, one key), at steps 0 / 6 / 12"] == (
        "0.438 / 0.500 / 0.625")
    d = np.asarray(last) - np.asarray(first)
    lo, hi = d.mean() - 1.96 * d.std(ddof=1) / 2, d.mean() + 1.96 * d.std(ddof=1) / 2
    assert out["probe reward, last - first, 95% interval (paired by prompt)"] == (
        f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
    assert "reward_accuracy.png" in {p.name for p in plot_metrics(rows, tmp_path)}


def test_provenance_names_the_commit_packages_and_seeds():
    from zorro_jax.rl.report import provenance

    p = provenance({"policy": 0, "sft": 1, "grpo": 2, "speculative": 3})
    assert p["git_commit"] is None or len(p["git_commit"]) == 40
    assert p["packages"]["jax"] and p["packages"]["flax"]
    assert set(p["seeds"]) == {"policy", "sft", "grpo", "speculative"}
    json.dumps(p)
