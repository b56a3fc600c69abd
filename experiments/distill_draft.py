"""Distil a small draft model for speculative sampling from a policy, on the policy's own samples.

Prompts are the built-in text-to-SQL benchmark's train split (compact schema style). Each step
samples G completions of a few prompts from the policy and takes one step of forward
KL(p_policy || q_draft) on them (`zorro_jax.rl.distill`). The draft is saved as a Hugging
Face folder (with the tokenizer) that `experiments.bench_speculative --draft` can load.

    python -m experiments.distill_draft --policy DIR --out DIR [--steps 200] [--hidden-size 128]
"""

from __future__ import annotations

import argparse

import jax

from zorro_jax.checkpoints.hf import export_hf_model, load_hf_model
from zorro_jax.model.transformer import init_model
from zorro_jax.rl.distill import distill_on_rollouts
from zorro_jax.rl.pipeline import encode_example, prompt_fit
from zorro_jax.sampling.sampler import SamplerConfig
from zorro_jax.sampling.speculative import draft_config
from zorro_jax.tasks.text2sql.task import Text2SQLConfig, Text2SQLTask
from zorro_jax.tokenizer import PromptEncoder, load_tokenizer


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True, help="policy Hugging Face folder")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the policy's)")
    ap.add_argument("--out", required=True, help="folder to write the draft to")
    ap.add_argument("--init-draft", default=None, help="start from this draft folder")
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--num-prompts", type=int, default=256, help="train prompts to cycle through")
    ap.add_argument("--max-prompt-tokens", type=int, default=1024)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    tok = load_tokenizer(args.tokenizer or args.policy)
    policy = load_hf_model(args.policy)
    task = Text2SQLTask(Text2SQLConfig(prompt_style="compact"))
    enc = PromptEncoder(tok)
    fit = prompt_fit(enc, args.max_prompt_tokens)  # schemas trimmed to the budget
    encoded = (encode_example(enc, e)[0] for e in task.examples("train", fit)[: args.num_prompts])
    prompts = [ids for ids in encoded if len(ids) <= args.max_prompt_tokens]
    if args.init_draft:
        draft = load_hf_model(args.init_draft)
    else:
        draft = init_model(draft_config(policy.config, hidden_size=args.hidden_size,
                                        num_layers=args.layers), seed=args.seed)
    sampler = SamplerConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            eos_token_ids=(tok.eos_token_id,), pad_token_id=tok.pad_token_id or 0)

    def log(step, m):
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  KL {m['kl']:.4f}  expected acceptance {m['expected_acceptance']:.3f}",
                  flush=True)

    print(f"policy {policy.config.num_hidden_layers}x{policy.config.hidden_size}, draft "
          f"{draft.config.num_hidden_layers}x{draft.config.hidden_size}, {len(prompts)} prompts")
    draft, _ = distill_on_rollouts(policy, draft, prompts, steps=args.steps, group_size=args.group_size,
                                   sampler_cfg=sampler, rng=jax.random.key(args.seed), lr=args.lr,
                                   prompts_per_step=args.prompts_per_step, log=log)
    print(f"draft written to {export_hf_model(draft, args.out, tokenizer=tok)}")


if __name__ == "__main__":
    main()
