"""Text-to-SQL task: DuckDB sandbox, result comparison, execution reward, prompts, data sets."""

from zorro_jax.tasks.text2sql.compare import results_match
from zorro_jax.tasks.text2sql.executor import ExecResult, Executor, ExecutorConfig
from zorro_jax.tasks.text2sql.prompts import Prompt, build_prompt, format_answer
from zorro_jax.tasks.text2sql.reward import (
    RewardConfig,
    RewardDetail,
    RewardFn,
    Task,
    extract_sql,
    score,
)

__all__ = [
    "ExecResult",
    "Executor",
    "ExecutorConfig",
    "Prompt",
    "RewardConfig",
    "RewardDetail",
    "RewardFn",
    "Task",
    "build_prompt",
    "extract_sql",
    "format_answer",
    "load_builtin",
    "results_match",
    "score",
]


def __getattr__(name):
    # Imported lazily so `python -m zorro_jax.tasks.text2sql.benchmark` runs without a warning.
    if name == "load_builtin":
        from zorro_jax.tasks.text2sql.benchmark import load_builtin

        return load_builtin
    raise AttributeError(name)
