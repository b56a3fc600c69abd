"""experiments/device_check.py: the CPU smoke run end to end, and the numerics comparison's power.

The smoke run is the same script a GPU day runs, in interpret mode at tiny shapes; the comparison
tests feed it deliberately wrong tree-attention "kernels" (a reference with noisy outputs, one
with gradients off by 1%) and check that it reports them as failures.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import device_check as dc

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("tree_attention", "shared_prefix_decode")
TREE_GRADS = ("dq", "dk", "dv")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("device_check") / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.device_check", "--cpu-smoke", "--json", str(path)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(path.read_text()), proc.stdout


@pytest.mark.slow  # the smoke run of the device check (~40 s, shared by three tests)
def test_smoke_report_has_environment_and_passing_numerics(smoke):
    report, _ = smoke
    assert report["mode"] == "cpu-smoke" and report["numerics_passed"]
    env = report["sections"]["environment"]
    assert env["status"] == "ok" and env["result"]["jax"] == jax.__version__
    assert env["result"]["backend"] == "cpu" and env["result"]["device_count"] >= 1
    rows = report["sections"]["numerics"]["result"]["rows"]
    assert {(r["kernel"], r["dtype"]) for r in rows} == {
        (k, d) for k in KERNELS for d in ("float32", "bfloat16")}
    assert all(r["passed"] and "error" not in r for r in rows)
    for row in rows:
        expected = ("o", *TREE_GRADS) if row["kernel"] == "tree_attention" else ("o",)
        assert tuple(row["quantities"]) == expected
    # Decode runs T=1 and T=5 for each head layout.
    assert {r["case"].split()[0] for r in rows if r["kernel"] == "shared_prefix_decode"} == {
        "T=1", "T=5"}


@pytest.mark.slow  # the smoke run of the device check (~40 s, shared by three tests)
def test_smoke_runs_every_section(smoke):
    report, _ = smoke
    assert list(report["sections"]) == [name for name, _, _ in dc.SECTIONS]
    failed = {n: s.get("error", s.get("reason")) for n, s in report["sections"].items()
              if s["status"] != "ok"}
    assert not failed
    timing = report["sections"]["tree_attention_timing"]["result"]["rows"]
    assert {(r["variant"].split()[0], r["mode"]) for r in timing} == {
        (v, m) for v in ("pallas", "xla") for m in ("fwd", "fwd+bwd")}
    assert all(r["ms"] > 0 and r["tflops"] > 0 and r["rows"] >= 1 for r in timing)
    # Every forward at full rows is compared with the first one (the Pallas default), so the
    # XLA path's output is checked against the kernel's too.
    assert all(r["max_abs_vs_first"] < 1e-3 for r in timing if r["mode"] == "fwd")
    decode = report["sections"]["decode_timing"]["result"]["rows"]
    assert {(r["T"], r["impl"]) for r in decode} == {
        (t, i) for t in (1, 5) for i in ("pallas", "xla")}
    assert all(r["gbps"] > 0 for r in decode)
    actor = report["sections"]["actor_update"]["result"]
    assert actor["impl"] == "xla" and actor["time_ratio"] > 0 and actor["ideal_token_ratio"] > 1
    assert actor["naive"]["real_tokens"] > actor["prompt_once"]["real_tokens"]
    assert report["sections"]["speculative"]["result"]["acceptance_rate"] is not None


@pytest.mark.slow  # the smoke run of the device check (~40 s, shared by three tests)
def test_smoke_prints_the_table_last(smoke):
    report, stdout = smoke
    lines = stdout.rstrip("\n").splitlines()
    start = lines.index(dc.SUMMARY_HEADER)
    table = lines[start + 2:]
    assert lines[start + 1].split()[:2] == ["section", "item"]
    sections = [name for name, _, _ in dc.SECTIONS]
    assert all(line.split()[0] in sections for line in table[:-1])
    assert table[-1].startswith("overall: numerics PASS")
    numerics_lines = [line for line in table if line.startswith("numerics ")]
    assert len(numerics_lines) == len(report["sections"]["numerics"]["result"]["rows"])


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="with a GPU the full check would run")
def test_refuses_without_gpu_and_without_smoke_flag(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.device_check", "--json", str(tmp_path / "r.json")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "no GPU" in proc.stdout and "--cpu-smoke" in proc.stdout
    assert not (tmp_path / "r.json").exists()


@pytest.fixture(scope="module")
def tree_case():
    return dc.tree_attention_cases(dc.SMOKE_PLAN)[0]


def test_tree_case_covers_depths_and_several_trees_a_row(tree_case):
    end, blocks = tree_case.int_args
    end = np.asarray(end)
    n, t = end.shape
    assert tree_case.dtypes == (jnp.float32,) and blocks.num_blocks == (t // 16, t // 16)
    j = np.arange(t)
    # [N, query i, key j]: j <= i < subtree_end[j].
    visible = (j[None, :] <= j[:, None])[None] & (j[:, None] < end[:, None, :])
    # Depth of a token = distinct subtree ends among the keys it sees: plain sequences (1),
    # prompt + completion (2) and root + question + completion (3) all occur.
    depths = {len(set(end[r][visible[r, i]])) for r in range(n) for i in range(t)}
    assert {1, 2, 3} <= depths
    # Several trees to a row: a tree starts at a token no earlier key sees (singletons aside).
    seen_before = np.maximum.accumulate(np.concatenate([np.zeros((n, 1)), end[:, :-1]], 1), 1)
    starts = (seen_before <= j) & (end > j + 1)
    assert starts.sum(1).max() >= 2


def test_group_rows_visible_pairs():
    end = dc.group_rows(2, 5, 3, 2, 16)
    assert end.shape == (2, 16) and (end[:, 11:] == np.arange(12, 17)).all()
    # Prompt causal 15, each completion 2·5 + 3, padding 5 singletons.
    assert dc.visible_pairs(end) == 2 * (15 + 3 * 13 + 5)


def test_reference_as_kernel_passes(tree_case):
    case = dataclasses.replace(tree_case, kernel_fn=tree_case.reference_fn)
    assert dc.check_case(case, jnp.float32)["passed"]


def test_noisy_outputs_fail(tree_case):
    def noisy(*args):
        outs = tree_case.reference_fn(*args)
        return tuple(o + 1e-2 * jax.random.normal(jax.random.key(i), o.shape, o.dtype)
                     for i, o in enumerate(outs))

    row = dc.check_case(dataclasses.replace(tree_case, kernel_fn=noisy), jnp.float32)
    assert not row["passed"] and row["worst"] == "o"
    assert not row["quantities"]["o"]["passed"]
    assert row["quantities"]["o"]["rel"] > 1e-3
    # The noise is constant, so the gradients still match.
    assert all(row["quantities"][g]["passed"] for g in TREE_GRADS)


def test_gradients_off_by_one_percent_fail(tree_case):
    def wrong_grads(*args):
        # Same forward values; every gradient scaled by 1.01.
        return tuple(o + 0.01 * (o - jax.lax.stop_gradient(o))
                     for o in tree_case.reference_fn(*args))

    row = dc.check_case(dataclasses.replace(tree_case, kernel_fn=wrong_grads), jnp.float32)
    assert not row["passed"] and row["quantities"]["o"]["passed"]
    assert not any(row["quantities"][g]["passed"] for g in TREE_GRADS)
