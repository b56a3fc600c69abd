"""The configurable RL run: a registered task, any Hugging Face checkpoint folder in, HF folder out.

    python -m experiments.train --run_dir runs/my_run \\
        --policy.checkpoint /path/to/hf_model --text2sql.source /path/to/spider \\
        --data.train_split train --data.eval_split dev \\
        --sft.steps 0 --grpo.steps 200 --grpo.group_size 16 --grpo.loss.kl_coef 0.001

`--task NAME` picks the task (text2sql, arithmetic, or one a user module registers); every field
of RunConfig (zorro_jax.rl.pipeline) and of each task's config is an option (`--text2sql.*`,
`--arithmetic.*`); `--help` lists them with their comments and defaults. Re-running the same
command resumes from the newest checkpoint.
"""

from __future__ import annotations

import zorro_jax.tasks  # noqa: F401  (registers the built-in tasks)
from zorro_jax.rl.pipeline import parse_command_line, run


def main(argv=None):
    cfg, task_cfg = parse_command_line(argv, description=__doc__)
    return run(cfg, task_cfg)


if __name__ == "__main__":
    main()
