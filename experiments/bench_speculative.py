"""Speculative sampling vs the plain shared-prefix sampler: tokens per policy forward and tokens/s.

The policy and draft are Hugging Face folders (--policy, --draft), or by default a random policy
and a small draft distilled on the policy's own samples for a few steps in-process (a random
policy is nearly uniform, so its acceptance numbers say little about a trained one: pass folders
for real figures). With folders, the prompts are the built-in benchmark's dev questions (compact
style, the folder's tokenizer) and samples stop at EOS as in training (tokens/s counts the tokens
each variant generated); with the random policy every sample generates exactly R tokens
(`ignore_eos`). Each variant runs once to compile, then is timed (median of --repeats). The
draft/verify split of the speculative time is estimated from the two models' per-round costs
measured at the same shapes (`speculative.measure_round_costs`).

    python -m experiments.bench_speculative [--preset ci] [--policy DIR --draft DIR] [--B 8 --G 8 --R 80]
                                            [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time

import jax
import numpy as np

from experiments.common import bench_model_config
from zorro_jax.checkpoints.hf import load_hf_model
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.distill import distill_on_rollouts
from zorro_jax.sampling.sampler import SamplerConfig, generate
from zorro_jax.sampling.speculative import (
    draft_config,
    generate_speculative,
    measure_round_costs,
    split_time,
)

# (B prompts, P prompt tokens, G samples, R new tokens, distillation steps, policy overrides)
PRESETS = {
    "full": {"b": 2, "p": 128, "g": 8, "r": 64, "distill_steps": 40, "gammas": (2, 4, 6), "policy": {}},
    "ci": {"b": 1, "p": 32, "g": 4, "r": 24, "distill_steps": 6, "gammas": (2, 4, 6),
           "policy": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 512}},
}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    preset: str = "full"
    # Hugging Face folders; both or neither.
    policy: str | None = None
    draft: str | None = None
    temperature: float = 1.0
    repeats: int = 1
    json_path: str | None = None
    # Shape overrides (0 = the preset's).
    B: int = 0
    G: int = 0
    R: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if (self.policy is None) != (self.draft is None):
            raise ValueError("give both --policy and --draft, or neither")


def _timed(fn, repeats):
    fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def models(cfg: BenchConfig, preset: dict, sampler: SamplerConfig, prompts):
    if cfg.policy is not None:
        return load_hf_model(cfg.policy), load_hf_model(cfg.draft), []
    policy = init_model(bench_model_config(**preset["policy"]), seed=0)
    draft = init_model(draft_config(policy.config, hidden_size=64, num_layers=1), seed=1)
    distill_cfg = dataclasses.replace(sampler, max_new_tokens=preset["r"])
    draft, history = distill_on_rollouts(policy, draft, prompts, steps=preset["distill_steps"],
                                         group_size=preset["g"], sampler_cfg=distill_cfg,
                                         rng=jax.random.key(1), prompts_per_step=len(prompts))
    return policy, draft, history


def builtin_prompts(policy_dir: str, b: int, r: int, temperature: float):
    """The first `b` dev questions of the built-in benchmark, tokenised with the policy's tokenizer."""
    from zorro_jax.rl.pipeline import encode_example
    from zorro_jax.tasks.text2sql.task import Text2SQLConfig, Text2SQLTask
    from zorro_jax.tokenizer import PromptEncoder, load_tokenizer

    tok = load_tokenizer(policy_dir)
    examples = Text2SQLTask(Text2SQLConfig()).examples("dev")[:b]
    sampler = SamplerConfig(max_new_tokens=r, temperature=temperature, eos_token_ids=(tok.eos_token_id,),
                            pad_token_id=tok.pad_token_id)
    enc = PromptEncoder(tok)
    return sampler, [encode_example(enc, e)[0] for e in examples]


def run(cfg: BenchConfig) -> dict:
    preset = PRESETS[cfg.preset]
    b, p, g, r = cfg.B or preset["b"], preset["p"], cfg.G or preset["g"], cfg.R or preset["r"]
    if cfg.policy is None:
        sampler = SamplerConfig(max_new_tokens=r, temperature=cfg.temperature, ignore_eos=True)
        vocab = bench_model_config(**preset["policy"]).vocab_size
        prompts = np.random.default_rng(0).integers(1, vocab, (b, p)).tolist()
    else:
        sampler, prompts = builtin_prompts(cfg.policy, b, r, cfg.temperature)
        p = max(len(x) for x in prompts)
    policy, draft, history = models(cfg, preset, sampler, prompts)
    if history:
        print(f"distilled draft: KL {history[0]['kl']:.4f} -> {history[-1]['kl']:.4f}, expected "
              f"acceptance {history[0]['expected_acceptance']:.3f} -> "
              f"{history[-1]['expected_acceptance']:.3f}")
    key = jax.random.key(0)
    plain, plain_s = _timed(lambda: generate(policy, prompts, g, sampler, key), cfg.repeats)
    n_tokens = int(plain.lengths_BxG.sum())
    plain_rate = n_tokens / plain_s
    # One prefill + one decode step per token of the longest sample (the loop stops when all are done).
    plain_forwards = int(plain.lengths_BxG.max())
    rows = [{"variant": "plain", "gamma": 0, "seconds": plain_s, "tokens_per_s": n_tokens / plain_s,
             "tokens_per_policy_forward": 1.0, "policy_forwards": plain_forwards, "acceptance_rate": None}]
    print(f"{'variant':>8} {'γ':>2} | {'accept':>6} {'tok/fwd':>7} {'fwds':>5} | {'s':>7} "
          f"{'tok/s':>8} {'speedup':>7}")
    print(f"{'plain':>8} {'-':>2} | {'-':>6} {1.0:>7.2f} {plain_forwards:>5} | {plain_s:>7.3f} "
          f"{n_tokens / plain_s:>8.1f} {1.0:>6.2f}x")
    for gamma in preset["gammas"]:
        (out, st), s = _timed(functools.partial(generate_speculative, policy, draft, prompts, g,
                                                sampler, key, gamma), cfg.repeats)
        n_spec = int(out.lengths_BxG.sum())
        if sampler.ignore_eos:
            assert n_spec == n_tokens
        split = split_time(s, measure_round_costs(policy, draft, prompts, g, sampler, gamma))
        rows.append({"variant": "speculative", "gamma": gamma, "seconds": s,
                     "tokens_per_s": n_spec / s, "generated_tokens": n_spec, **split, **{k: st[k] for k in (
                         "tokens_per_policy_forward", "policy_forwards", "draft_forwards",
                         "acceptance_rate")}})
        print(f"{'spec':>8} {gamma:>2} | {st['acceptance_rate']:>6.3f} "
              f"{st['tokens_per_policy_forward']:>7.2f} {st['policy_forwards']:>5} | {s:>7.3f} "
              f"{n_spec / s:>8.1f} {n_spec / s / plain_rate:>6.2f}x  (est. draft {split['time_draft_est']:.3f}s"
              f" / verify {split['time_verify_est']:.3f}s)", flush=True)
    return {"config": dataclasses.asdict(cfg), "shape": {"B": b, "P": p, "G": g, "R": r},
            "policy": dataclasses.asdict(policy.config), "draft": dataclasses.asdict(draft.config),
            "distill": history, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--policy", default=None)
    ap.add_argument("--draft", default=None)
    ap.add_argument("--temperature", type=float, default=BenchConfig.temperature)
    ap.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--B", type=int, default=0, help="prompts (groups) per batch; 0 = the preset's")
    ap.add_argument("--G", type=int, default=0, help="samples per prompt; 0 = the preset's")
    ap.add_argument("--R", type=int, default=0, help="max new tokens; 0 = the preset's")
    cfg = BenchConfig(**vars(ap.parse_args(argv)))
    print(f"bench_speculative on {jax.default_backend()}, preset {cfg.preset}")
    result = run(cfg)
    if cfg.json_path:
        with open(cfg.json_path, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
