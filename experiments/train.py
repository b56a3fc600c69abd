"""The configurable text-to-SQL RL run: any Hugging Face checkpoint folder in, HF folder out.

    python -m experiments.train --run_dir runs/my_run \\
        --policy.checkpoint /path/to/hf_model --data.source /path/to/spider \\
        --data.train_split train_spider --data.eval_split dev \\
        --sft.steps 0 --grpo.steps 200 --grpo.group_size 16 --grpo.loss.kl_coef 0.001

Every field of RunConfig (zorro_jax.rl.pipeline) and its nested configs is an option; `--help`
lists them with their defaults. Re-running the same command resumes from the newest checkpoint.
"""

from __future__ import annotations

import argparse

from zorro_jax.cli import add_config_args, config_from_args
from zorro_jax.rl.pipeline import RunConfig, run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap, RunConfig)
    cfg = config_from_args(RunConfig, ap.parse_args(argv))
    return run(cfg)


if __name__ == "__main__":
    main()
