"""Regenerate the README's results tables from one command (`make results`).

Each figure below runs its benchmark (or the quickstart) in a subprocess at the preset the README
quotes, stores the JSON it writes under results/, and renders a Markdown table from that JSON into
README.md between the marker comments `<!-- results:NAME -->` and `<!-- /results:NAME -->`, with
the commit, date and machine beside it. A figure in the README is then always the output of the
code at that commit.

    python -m experiments.results [--only NAME ...] [--render-only] [--list]

`--render-only` re-renders the tables from the JSON already in results/ without running anything.
Times depend on the machine (and on what else runs on it); token, pair, FLOP and byte counts,
held-out accuracies and kernel compile figures do not: a second run on the same machine changes
only the timings and the ratios of timings.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
README = ROOT / "README.md"


@dataclasses.dataclass(frozen=True)
class Figure:
    """One README table: the command that measures it and the renderer of its JSON."""

    name: str
    # argv after `python -m`; "{json}" is replaced by the JSON path, "{run_dir}" by a fresh folder.
    argv: tuple[str, ...]
    render: Callable[[dict], list[str]]
    about: str
    # For runs that write a folder rather than a JSON file: the file in it that holds the figures.
    run_json: str = ""


def _f(x, digits=2, missing="—"):
    return missing if x is None else f"{x:.{digits}f}"


def render_actor_update(payload: dict) -> list[str]:
    """The actor-update tables: times, memory, and every ratio next to its bound; the first
    against packed naive, the second (schema prompts) three- against two-level sharing. A run of
    the multi-level comparison alone (`--variants`) has the second only."""
    model = f"{payload['model']} (real weights), " if payload.get("model") else ""
    lines = [(f"Model {model}d={payload.get('hidden_size', 256)}, {payload.get('layers', 4)} layers, fp32, "
              f"XLA attention; {payload['machine']}.")]
    against_naive = [r for r in payload["rows"] if "time_ratio_vs_packed_naive" in r]
    if against_naive:
        lines += ["", ("| distribution (B × G) | ideal token ratio | attention-pair ratio | model-FLOP ratio | "
                       "packed naive | packed prompt-once | **time ×** packed naive (× ideal, × FLOP ratio) | "
                       "XLA temp-memory × | time × padded naive |"),
                  "|---|---|---|---|---|---|---|---|---|"]
    for r in against_naive:
        naive, once = r["packed_naive"], r["packed_prompt_once"]
        t = r["time_ratio_vs_packed_naive"]
        micro = f" ({naive['micro_batches']} micro-batches)" if naive["micro_batches"] > 1 else ""
        mem = r["memory_ratio_vs_packed_naive"]
        lines.append(
            f"| `{r['distribution']}` ({r['groups']} × {r['samples']}) | {r['ideal_token_ratio']:.2f} | "
            f"{r['attention_pair_ratio']:.2f} | {r['flop_ratio']:.2f} | "
            f"{naive['time_s']:.2f} s, {naive['temp_bytes'] / 2**20:.0f} MiB{micro} | "
            f"{once['time_s']:.2f} s, {once['temp_bytes'] / 2**20:.0f} MiB | "
            f"**{t:.2f}×** ({t / r['ideal_token_ratio']:.2f}, {t / r['flop_ratio']:.2f}) | "
            f"{_f(mem)}{'' if mem is None else '×'} | {_f(r['time_ratio_vs_padded_naive'], missing='out of memory')} |")
    three = [r for r in payload["rows"] if "three_vs_two_level_ratio" in r]
    if three:
        lines += ["", ("| distribution | three-level vs two-level: ideal token ratio | pair ratio | "
                       "FLOP ratio | time ratio (× ideal, × FLOP ratio) | XLA temp-memory ratio | "
                       "two-level time, memory | three-level time, memory |"), "|---|---|---|---|---|---|---|---|"]
    for r in three:
        t, once, lvl = r["three_vs_two_level_ratio"], r["packed_prompt_once"], r["packed_three_level"]
        micro = lambda v: f" ({v['micro_batches']} micro-batches)" if v["micro_batches"] > 1 else ""
        lines.append(
            f"| `{r['distribution']}` | {r['three_vs_two_level_ideal_token_ratio']:.2f} | "
            f"{r['three_vs_two_level_attention_pair_ratio']:.2f} | "
            f"{r['three_vs_two_level_flop_ratio']:.2f} | **{t:.2f}×** "
            f"({t / r['three_vs_two_level_ideal_token_ratio']:.2f}, "
            f"{t / r['three_vs_two_level_flop_ratio']:.2f}) | "
            f"{_f(r['three_vs_two_level_memory_ratio'])} | "
            f"{once['time_s']:.2f} s, {once['temp_bytes'] / 2**20:.0f} MiB{micro(once)} | "
            f"{lvl['time_s']:.2f} s, {lvl['temp_bytes'] / 2**20:.0f} MiB{micro(lvl)} |")
    return lines


def render_kernels(rows: list) -> list[str]:
    """The sm_90 compile table of every Pallas kernel case."""
    lines = ["| case | kernel | warps | stages | smem KB | registers | spill bytes | status |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        status = "ok" if r["compiled"] and not r["problems"] else "; ".join(r["problems"])
        smem = "—" if r["smem_bytes"] is None else f"{r['smem_bytes'] / 1024:.0f}"
        lines.append(f"| {r['case']} | `{r['kernel']}` | {r['num_warps']} | {r['num_stages']} | {smem} | "
                     f"{r['registers'] if r['registers'] is not None else '—'} | "
                     f"{r['spill_bytes'] if r['spill_bytes'] is not None else '—'} | {status} |")
    ok = sum(1 for r in rows if r["compiled"] and not r["problems"])
    return [f"{ok} / {len(rows)} kernels verify and compile for sm_90 with no spill.", "", *lines]


def render_memory(payload: dict) -> list[str]:
    """Per-device memory and collective bytes of the sharded steps (`experiments.memory_table`)."""
    gib = lambda x: f"{x / 2**30:.2f}"
    b, p, g, r = payload["train_shape_BPGR"]
    about = (f"{payload['model']} ({payload['params'] / 1e9:.2f}B parameters, {payload['layers']} layers, "
             f"fp32 weights and AdamW, {payload['compute_dtype']} compute); training: one GRPO train step "
             f"on B={b} groups of P={p} + G={g} × R={r} tokens; GiB per device, compile only "
             f"({payload['machine']}).")
    header = ("| preset | layers | mesh (data, fsdp, tensor) | params | optimiser | XLA temporaries | "
              "collective results (loop bodies once) | compile s |")
    lines = [about, "", header, "|---|---|---|---|---|---|---|---|"]
    for row in payload["rows"]:
        lines.append(f"| {row['preset']} | {row.get('layer_loop', '—')} | {tuple(row['mesh'])} | "
                     f"{gib(row['params_bytes'])} | "
                     f"{gib(row['opt_state_bytes'])} | **{gib(row['temp_bytes'])}** | "
                     f"{gib(row['collective_bytes'])} | {row['compile_s']:.0f} |")
    return lines


def render_quickstart(summary: dict) -> list[str]:
    """The quickstart's summary figures (accuracies with standard errors, reward quarters, time)."""
    lines = ["| quickstart (`make run`) | |", "|---|---|"]
    for k, v in summary.items():
        # The plain held-out accuracies come again below, with their standard errors.
        if not (k.startswith("held-out ") and k.endswith((" after SFT", " after GRPO"))):
            lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return lines


def render_real_model(payload: dict) -> list[str]:
    """The real-model experiment (experiments.real_model): held-out accuracy per stage with its
    standard error and seconds, the paired differences, and the GRPO reward per step."""
    st = payload["settings"]
    tuned = f"LoRA rank {st['lora_rank']}" if st.get("lora_rank") else "full fine-tuning"
    lines = [(f"{payload['model']}, {tuned}, {st['compute_dtype']}; greedy execution accuracy on "
              f"the first {payload['stages'][0]['n']} dev tasks, prompts in the `ddl` style through the "
              f"chat template; {payload['machine']}. SFT lr {st['sft_lr']:g}; GRPO lr {st['grpo_lr']:g}, "
              f"rollout temperature {st['temperature']:g}, at most {st['max_new_tokens']} new tokens."), "",
             "| stage | held-out accuracy ± s.e. | training s | eval s |", "|---|---|---|---|"]
    for s in payload["stages"]:
        lines.append(f"| {s['stage']} | {s['accuracy']:.3f} ± {s['se']:.3f} | {s['train_seconds']:.0f} | "
                     f"{s['eval_seconds']:.0f} |")
    names = {"sft_vs_zero_shot": "SFT − zero-shot", "grpo_vs_sft": "GRPO − SFT"}
    lines.append("")
    lines.append("Paired differences (same tasks, 95% interval): " + "; ".join(
        f"{names.get(k, k)} {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] ({d['fixed']} fixed, "
        f"{d['broken']} broken)" for k, d in payload["differences"].items()) + ".")
    if payload["grpo_steps"]:
        lines.append("GRPO rollout reward per step: " + ", ".join(
            f"{r['reward_mean']:.2f}" for r in payload["grpo_steps"]) + ".")
    return lines


def render_iteration(payload: dict) -> list[str]:
    """One GRPO iteration, prompt-once vs naive, per phase, with the perceived FLOP/s."""
    phases = ("time_rollout", "time_reward", "time_logprobs", "time_update", "time_total")
    naive, once = payload["phases"]["naive"], payload["phases"]["prompt_once"]
    lines = [(f"P={payload['P']} G={payload['G']} R={payload['R']} B={payload['B']}, "
              f"d={payload['hidden_size']} L={payload['layers']}, synthetic reward; {payload['machine']}."), "",
             "| | " + " | ".join(p[5:] for p in phases) + " |", "|---" * (len(phases) + 1) + "|"]
    for name, row in (("naive (replicated prompts), s", naive), ("prompt-once, s", once)):
        lines.append(f"| {name} | " + " | ".join(f"{row[p]:.2f}" for p in phases) + " |")
    lines.append("| **ratio** | " + " | ".join(f"{naive[p] / max(once[p], 1e-9):.2f}×" for p in phases) + " |")
    lines += ["", (f"Perceived throughput (the naive computation's FLOPs / prompt-once time): "
                   f"{payload['perceived_flops_per_s'] / 1e9:.0f} GFLOP/s against a measured fp32 matmul "
                   f"peak of {payload['matmul_peak_flops_per_s'] / 1e9:.0f} GFLOP/s "
                   f"({payload['perceived_flops_per_s'] / payload['matmul_peak_flops_per_s']:.2f}× peak); "
                   f"the naive run itself reaches {payload['naive_achieved_flops_per_s'] / 1e9:.0f} GFLOP/s.")]
    return lines


def render_iteration_schema(payload: dict) -> list[str]:
    """One GRPO iteration, three-level vs two-level sharing, per phase."""
    phases = ("time_rollout", "time_reward", "time_logprobs", "time_update", "time_total")
    two, three = payload["phases"]["two_level"], payload["phases"]["three_level"]
    lines = [(f"Schema {payload['schema']} + question {payload['P']} tokens, {payload['questions']} "
             f"questions × G={payload['G']}, R={payload['R']}, d={payload['hidden_size']}; "
             f"{payload['machine']}."), "",
             "| | " + " | ".join(p[5:] for p in phases) + " |", "|---" * (len(phases) + 1) + "|"]
    for name, row in (("two-level (questions_per_database 1), s", two),
                      ("three-level (questions_per_database 8), s", three)):
        lines.append(f"| {name} | " + " | ".join(f"{row[p]:.2f}" for p in phases) + " |")
    lines.append("| **ratio** | " + " | ".join(f"{two[p] / max(three[p], 1e-9):.2f}×" for p in phases) + " |")
    return lines


def render_rollout(payload: dict) -> list[str]:
    """Rollout tokens/s (prefill included) and KV-cache bytes: shared-prefix vs naive on fixed
    shapes, and three- vs two-level sharing on schema-shaped prompts."""
    lines = []
    fixed = [r for r in payload["rows"] if "P" in r]
    if fixed:
        lines += [("| (P, G, R) × B | tok/s naive | tok/s shared | **speed-up** (decode alone) | "
                  "KV bytes naive / shared (ideal) |"), "|---|---|---|---|---|"]
        for r in fixed:
            lines.append(f"| ({r['P']}, {r['G']}, {r['R']}) × {r['B']} | {r['tok_s_naive']:.0f} | "
                         f"{r['tok_s_shared']:.0f} | **{r['speedup']:.2f}×** ({r['decode_speedup']:.2f}×) | "
                         f"{r['kv_ratio']:.2f}× ({r['ideal_ratio']:.2f}) |")
    for r in (r for r in payload["rows"] if r.get("distribution") == "schema"):
        lines += ["", (f"Schema-shaped prompts: {r['D']} database(s) (schema {r['root_lengths']} tokens) × "
                      f"k={r['k']} questions (mean {sum(r['question_lengths']) / len(r['question_lengths']):.0f} "
                      f"tokens) × G={r['G']}, R={r['R']}:"), "",
                  "| variant | tok/s (prefill included) | seconds (prefill) | KV MiB |", "|---|---|---|---|"]
        for v in ("naive", "two_level", "three_level"):
            lines.append(f"| {v.replace('_', '-')} | {r[f'tok_s_{v}']:.0f} | {r[f's_{v}']:.2f} "
                         f"({r[f'prefill_s_{v}']:.2f}) | {r[f'kv_bytes_{v}'] / 2**20:.0f} |")
        lines += ["", (f"Three-level vs two-level: **{r['three_vs_two_level_ratio']:.2f}×** tokens/s, KV bytes "
                      f"{r['kv_bytes_ratio']:.2f}× (ideal {r['ideal_kv_ratio']:.2f}, "
                      f"{r['kv_bytes_ratio'] / r['ideal_kv_ratio']:.2f} of it); vs naive "
                      f"{r['three_vs_naive_ratio']:.1f}× tokens/s, KV {r['kv_bytes_ratio_vs_naive']:.1f}× "
                      f"(ideal {r['ideal_kv_ratio_vs_naive']:.1f}).")]
    for r in (r for r in payload["rows"] if r.get("distribution") == "sql"):
        lines += [(f"`sql` prompts on {r['model']}: B={r['B']} prompts of {r['prompt_lengths']} tokens × "
                   f"G={r['G']} samples of R={r['R']} tokens:"), "",
                  "| variant | tok/s (prefill included) | seconds (prefill) | KV MiB |", "|---|---|---|---|"]
        for v in ("naive", "shared"):
            lines.append(f"| {v} | {r[f'tok_s_{v}']:.0f} | {r[f's_{v}']:.2f} ({r[f'prefill_s_{v}']:.2f}) | "
                         f"{r[f'kv_bytes_{v}'] / 2**20:.0f} |")
        lines += ["", (f"Shared vs naive: **{r['speedup']:.2f}×** tokens/s ({r['decode_speedup']:.2f}× "
                       f"decode alone), KV bytes {r['kv_ratio']:.2f}× (ideal {r['ideal_ratio']:.2f}).")]
    return lines


FIGURES = [
    Figure("actor_update", ("experiments.bench_actor_update", "--json", "{json}"), render_actor_update,
           "bench_actor_update, all distributions, d=256 (about 20 minutes)"),
    Figure("actor_update_wide", ("experiments.bench_actor_update", "--hidden-size", "512", "--repeats", "2",
                                 "--distributions", "sql", "reasoning", "uniform",
                                 "--json", "{json}"), render_actor_update,
           "bench_actor_update at d=512, the three distributions that fit one step (about 12 minutes)"),
    Figure("actor_update_schema_wide", ("experiments.bench_actor_update", "--hidden-size", "512",
                                        "--distributions", "schema", "--variants", "packed_prompt_once",
                                        "packed_three_level", "--repeats", "2", "--json", "{json}"),
           render_actor_update,
           "three- vs two-level actor update on schema prompts at d=512 (the naive layouts left out: "
           "they do not fit one step at this width; about 10 minutes)"),
    Figure("actor_update_smollm2", ("experiments.bench_actor_update", "--model", "smollm2-135m",
                                    "--distributions", "sql", "--groups", "1", "--samples", "4",
                                    "--repeats", "1", "--json", "{json}"), render_actor_update,
           "bench_actor_update on SmolLM2-135M's real weights, one sql group of 4 (the most that fits "
           "24 GB replicated; about 6 minutes)"),
    Figure("iteration", ("experiments.bench_iteration", "--json", "{json}"), render_iteration,
           "one GRPO iteration, prompt-once vs naive, P=1024 G=8 R=128 (about 5 minutes)"),
    Figure("iteration_schema", ("experiments.bench_iteration", "--schema", "1536", "--questions", "8",
                                "--P", "48", "--G", "8", "--R", "96", "--repeats", "2", "--json", "{json}"),
           render_iteration_schema, "one GRPO iteration, three- vs two-level (a few minutes)"),
    Figure("rollout", ("experiments.bench_rollout", "--distributions", "fixed", "schema", "--json", "{json}"),
           render_rollout, "rollout tokens/s and KV bytes, fixed shapes and schema prompts (about 10 minutes)"),
    Figure("rollout_smollm2", ("experiments.bench_rollout", "--model", "smollm2-135m", "--distributions",
                               "sql", "--repeats", "1", "--json", "{json}"), render_rollout,
           "rollout tokens/s and KV bytes on SmolLM2-135M's real weights, sql prompts, shared vs "
           "naive (about 10 minutes; needs `python -m experiments.fetch_model smollm2-135m` first)"),
    Figure("memory_fsdp", ("experiments.memory_table", "--model", "qwen2.5-1.5b", "--train-meshes", "1,8,1",
                           "--sample-meshes", "--layer-loops", "scan", "unrolled", "--json", "{json}"),
           render_memory,
           "per-device memory of a 1.5B GRPO train step on an 8-way fsdp mesh (compile only, a few "
           "minutes)"),
    Figure("kernels", ("experiments.kernel_report", "--json", "{json}"), render_kernels,
           "sm_90 compile of every Pallas kernel (about a minute)"),
    Figure("quickstart", ("experiments.quickstart", "--run_dir", "{run_dir}"), render_quickstart,
           "the quickstart run (about 5 minutes)", run_json="summary.json"),
    Figure("quickstart_schema", ("experiments.quickstart", "--run_dir", "{run_dir}",
                                 "--data.questions_per_database", "4"), render_quickstart,
           "the quickstart with 4 questions per database: schemas shared three levels deep "
           "(about 6 minutes)", run_json="summary.json"),
    Figure("real_model", ("experiments.real_model", "--out", "{run_dir}"), render_real_model,
           "SmolLM2-135M-Instruct zero-shot / SFT / GRPO (about 35 minutes; needs "
           "`python -m experiments.fetch_model smollm2-135m` first)", run_json="summary.json"),
    Figure("quickstart_arithmetic", ("experiments.quickstart", "--task", "arithmetic", "--run_dir", "{run_dir}"),
           render_quickstart, "the arithmetic task's quickstart (about 10 minutes)", run_json="summary.json"),
]
BY_NAME = {f.name: f for f in FIGURES}


def git_commit() -> str:
    """Short HEAD commit, marked when code (not the README or results/) has local changes."""
    from zorro_jax.rl.report import git_state

    commit, dirty = git_state()
    return (commit[:7] if commit else "unknown") + ("+local changes" if dirty else "")


def measure(fig: Figure) -> dict:
    """Run a figure's command; returns {'commit', 'date', 'seconds', 'data'} (also saved)."""
    RESULTS.mkdir(exist_ok=True)
    json_path = RESULTS / f"{fig.name}.raw.json"
    run_dir = RESULTS / "runs" / fig.name
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run, never a resumed one
    argv = [a.replace("{json}", str(json_path)).replace("{run_dir}", str(run_dir)) for a in fig.argv]
    print(f"[{fig.name}] python -m {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, check=True)
    source = run_dir / fig.run_json if fig.run_json else json_path
    record = {"figure": fig.name, "command": "python -m " + " ".join(fig.argv), "commit": git_commit(),
              "date": datetime.date.today().isoformat(), "seconds": time.perf_counter() - t0,
              "data": json.loads(source.read_text())}
    (RESULTS / f"{fig.name}.json").write_text(json.dumps(record, indent=1))
    json_path.unlink(missing_ok=True)
    return record


def render_into(text: str, record: dict) -> str:
    """README text with the figure's marked block replaced by its rendered table."""
    fig = BY_NAME[record["figure"]]
    begin, end = f"<!-- results:{fig.name} -->", f"<!-- /results:{fig.name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {begin} ... {end} block")
    command = record["command"].replace("{json}", "PATH").replace("{run_dir}", "DIR")
    # A record written by hand (the figure's command run directly) says so instead.
    how = "Measured by running" if record.get("by_hand") else "Generated by `make results`"
    body = [begin, f"_{how} (`{command}`) at commit {record['commit']} on {record['date']}._", "",
            *fig.render(record["data"]), end]
    return pattern.sub(lambda _: "\n".join(body), text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(BY_NAME), help="regenerate these figures only")
    ap.add_argument("--render-only", action="store_true", help="re-render README from results/*.json")
    ap.add_argument("--list", action="store_true", help="list the figures and exit")
    args = ap.parse_args(argv)
    if args.list:
        for f in FIGURES:
            print(f"{f.name:18s} {f.about}")
        return
    figs = [BY_NAME[n] for n in args.only] if args.only else FIGURES
    text = README.read_text()
    failed = []
    for fig in figs:
        path = RESULTS / f"{fig.name}.json"
        if args.render_only:
            if not path.is_file():
                raise SystemExit(f"no {path}: run without --render-only first")
            record = json.loads(path.read_text())
        else:
            try:
                record = measure(fig)
            except subprocess.CalledProcessError as e:  # the others still run; the table stays
                print(f"[{fig.name}] FAILED ({e}); its README table is left as it was", flush=True)
                failed.append(fig.name)
                continue
        text = render_into(text, record)
        README.write_text(text)  # after every figure: a long run that stops keeps what it has
        print(f"[{fig.name}] README table updated", flush=True)
    if failed:
        raise SystemExit(f"figures that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
