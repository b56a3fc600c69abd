"""`make results`: README blocks between markers are replaced by tables rendered from JSON, and
nothing else in the README changes."""

import pytest

from experiments import results


def actor_payload():
    variant = lambda t, mib, mb=1: {"time_s": t, "temp_bytes": mib * 2**20, "micro_batches": mb}
    row = {"distribution": "sql", "groups": 4, "samples": 8, "packed_naive": variant(12.0, 8000),
           "packed_prompt_once": variant(3.0, 2000), "ideal_token_ratio": 4.64,
           "attention_pair_ratio": 3.37, "flop_ratio": 4.18, "time_ratio_vs_packed_naive": 4.0,
           "memory_ratio_vs_packed_naive": 4.0, "time_ratio_vs_padded_naive": None}
    three = dict(row, distribution="schema", packed_three_level=variant(1.5, 1000),
                 three_vs_two_level_ratio=2.0, three_vs_two_level_ideal_token_ratio=2.16,
                 three_vs_two_level_attention_pair_ratio=1.59, three_vs_two_level_flop_ratio=1.86,
                 three_vs_two_level_memory_ratio=2.0)
    return {"machine": "test machine", "hidden_size": 256, "rows": [row, three]}


def test_render_into_replaces_only_the_marked_block():
    record = {"figure": "actor_update", "command": "python -m experiments.bench_actor_update --json {json}",
              "commit": "abc1234", "date": "2026-12-01", "data": actor_payload()}
    text = "intro\n<!-- results:actor_update -->\nold table\n<!-- /results:actor_update -->\noutro\n"
    out = results.render_into(text, record)
    assert out.startswith("intro\n<!-- results:actor_update -->\n") and out.endswith(
        "<!-- /results:actor_update -->\noutro\n")
    assert "old table" not in out and "at commit abc1234 on 2026-12-01" in out
    assert "**4.00×** (0.86, 0.96)" in out  # time ratio with its fraction of ideal and FLOP bound
    assert "| `schema` | 2.16 | 1.59 | 1.86 | **2.00×** (0.93, 1.08)" in out
    assert "out of memory" in out
    assert results.render_into(out, record) == out  # idempotent
    with pytest.raises(SystemExit, match="no <!-- results:actor_update -->"):
        results.render_into("no markers", record)


def test_other_renderers():
    kernels = results.render_kernels([{"case": "c", "kernel": "k", "num_warps": 4, "num_stages": 2,
                                       "smem_bytes": 2048, "registers": 100, "spill_bytes": 0,
                                       "compiled": True, "problems": []}])
    assert kernels[0].startswith("1 / 1 kernels") and "| c | `k` | 4 | 2 | 2 | 100 | 0 | ok |" in kernels
    quick = results.render_quickstart({"held-out execution accuracy after SFT": 0.3,
                                       "difference": "+0.01 [-0.02, +0.04]", "wall": 273.123})
    assert "| difference | +0.01 [-0.02, +0.04] |" in quick and "| wall | 273.1 |" in quick
    phases = {k: 1.0 for k in ("time_rollout", "time_reward", "time_logprobs", "time_update", "time_total")}
    it = results.render_iteration_schema({"schema": 1536, "P": 48, "questions": 8, "G": 8, "R": 96,
                                          "hidden_size": 256, "machine": "m",
                                          "phases": {"two_level": phases, "three_level": phases}})
    assert it[-1].startswith("| **ratio** | 1.00×")
    # Every figure renders into a README block that exists.
    readme = results.README.read_text()
    for fig in results.FIGURES:
        assert f"<!-- results:{fig.name} -->" in readme, fig.name


def _write_run(run_dir, evals: dict, grpo_rewards=()):
    """A run folder as the pipeline leaves it: metrics.jsonl and one eval_step<N>.jsonl per eval."""
    import json

    run_dir.mkdir(parents=True)
    rows = [{"phase": "sft", "step": 1, "loss": 1.0, "seconds": 30.0}] if grpo_rewards else []
    rows += [{"phase": "grpo", "step": i + 1, "reward_mean": r, "accuracy": r, "completion_len_mean": 40.0,
              "entropy": 0.5, "time_total": 60.0, "seconds": 61.0} for i, r in enumerate(grpo_rewards)]
    for step, correct in evals.items():
        rows.append({"phase": "eval", "step": step, "accuracy": sum(correct) / len(correct), "n": len(correct),
                     "seconds": 20.0})
        (run_dir / f"eval_step{step}.jsonl").write_text(
            "".join(json.dumps({"task_id": str(i), "correct": c}) + "\n" for i, c in enumerate(correct)))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_real_model_report_renders(tmp_path):
    from experiments import real_model
    from zorro_jax.checkpoints.pretrained import STAMP

    model = tmp_path / "smollm2"
    model.mkdir()
    (model / STAMP).write_text("{}")
    args = real_model.parse_args(["--out", str(tmp_path / "out"), "--checkpoint", str(model),
                                  "--sft-steps", "1", "--grpo-steps", "2"])
    zero, trained = real_model.run_configs(args)
    assert (zero.sft.steps, zero.grpo.steps, trained.grpo.eval_every) == (0, 0, 2)
    _write_run(tmp_path / "out" / "zero_shot", {0: [False, False, False, False]})
    _write_run(tmp_path / "out" / "trained", {0: [True, False, False, False], 2: [True, True, False, False]},
               grpo_rewards=(0.1, 0.3))
    payload = real_model.report(args, zero, trained, {"zero_shot": 30.0, "trained": 300.0})
    lines = results.render_real_model(payload)
    assert "| zero-shot | 0.000 ± 0.000 | 0 | 20 |" in lines and ", full fine-tuning, float32;" in lines[0]
    lora = results.render_real_model({**payload, "settings": {**payload["settings"], "lora_rank": 8}})
    assert ", LoRA rank 8, float32;" in lora[0]
    assert "| after GRPO (2 steps × 4 × 6) | 0.500 ± 0.250 | 122 | 20 |" in lines
    # Paired on the same tasks: one task fixed, none broken, s.e. 0.25 (unpaired would be 0.33).
    assert "GRPO − SFT +0.250 [-0.240, +0.740] (1 fixed, 0 broken)" in lines[-2]
    assert lines[-1] == "GRPO rollout reward per step: 0.10, 0.30."
    real_model.write_report(tmp_path / "out", payload)
    assert "| 2 | 0.300 | 0.300 | 40 | 0.500 | 60.0 |" in (tmp_path / "out" / "summary.md").read_text()


def test_real_model_reuses_only_a_matching_sft_phase(tmp_path):
    import dataclasses
    import json

    from experiments import real_model
    from zorro_jax.checkpoints.pretrained import STAMP

    model = tmp_path / "smollm2"
    model.mkdir()
    (model / STAMP).write_text("{}")
    parse = lambda out, *extra: real_model.parse_args(["--out", str(tmp_path / out), "--checkpoint", str(model),
                                                       "--sft-steps", "1", "--grpo-steps", "2", *extra])
    _, trained = real_model.run_configs(parse("a"))
    _write_run(tmp_path / "a" / "zero_shot", {0: [False, False]})
    _write_run(tmp_path / "a" / "trained", {0: [True, False], 2: [True, True]}, grpo_rewards=(0.1, 0.3))
    # Written before policy.lora_rank existed: a field it lacks counts as the default it ran with.
    config = json.loads(json.dumps(dataclasses.asdict(trained), default=str))
    del config["policy"]["lora_rank"]
    (tmp_path / "a" / "trained" / "config.json").write_text(json.dumps(config))
    (tmp_path / "a" / "trained" / "ckpt_sft" / "1").mkdir(parents=True)
    with pytest.raises(SystemExit, match="sft settings differ"):
        real_model.reuse_sft(tmp_path / "a", *real_model.run_configs(parse("b", "--sft-lr", "1e-4")))
    # Other GRPO settings are what a variant changes: the SFT phase and its evaluation carry over.
    real_model.reuse_sft(tmp_path / "a", *real_model.run_configs(parse("c", "--grpo-lr", "3e-5")))
    rows = [json.loads(x) for x in (tmp_path / "c" / "trained" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [("sft", 1), ("eval", 0)]
    assert (tmp_path / "c" / "trained" / "ckpt_sft" / "1").is_dir()
    assert not (tmp_path / "c" / "zero_shot" / "ckpt_sft").exists()
