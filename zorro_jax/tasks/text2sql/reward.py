"""Execution reward for text-to-SQL completions (the Arctic-Text2SQL-R1 scheme).

reward = 1.0 if the completion's SQL returns the gold result, 0.1 if it executes but differs,
0.0 otherwise (no SQL, parse error, refused by the sandbox, timeout, runtime error). The SQL is
the last fenced ```sql block of the completion, or the whole text when there is none.

`RewardFn.score` scores a batch on a thread pool; DuckDB releases the GIL while it executes, so
threads give real parallelism. Gold results are executed once and cached by the executor.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re

import numpy as np

from zorro_jax.tasks.text2sql import compare
from zorro_jax.tasks.text2sql.executor import ExecResult, Executor, ExecutorConfig

DIFFICULTIES = ("easy", "medium", "hard", "extra", "unknown")

# Matches a fenced block labelled sql (any case); the closing fence is optional so a completion
# cut off by the generation budget still yields its SQL.
_SQL_FENCE = re.compile(r"```[ \t]*sql[^\n]*\n(.*?)(?:```|\Z)", re.IGNORECASE | re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Task:
    """One text-to-SQL question with its database and reference query."""

    task_id: str
    db_id: str
    # Path of the DuckDB file the SQL runs against.
    db_path: str
    question: str
    # Reference query in DuckDB dialect.
    gold_sql: str
    difficulty: str = "unknown"
    # External knowledge shipped with the question (BIRD's "evidence"); empty when none.
    evidence: str = ""
    # Built-in benchmark: the template the question came from; empty for loaded data sets.
    template_id: str = ""

    def __post_init__(self):
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {self.difficulty!r}")
        if not self.gold_sql.strip():
            raise ValueError(f"task {self.task_id}: empty gold SQL")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Reward settings: worker threads, comparison rule, reward values and numeric tolerance,
    sandbox limits.
    """

    # Worker threads that execute SQL (each has its own DuckDB cursor per database).
    threads: int = 2
    # Comparison rule, see compare.py: "spider" (bag, ORDER BY-aware) or "bird" (set); "auto" is
    # the data set's own rule (bird for BIRD folders, spider otherwise), which the training
    # pipeline resolves when it loads the data.
    rule: str = "spider"
    # Reward of a completion whose result matches the gold result.
    match_reward: float = 1.0
    # Reward of a completion that executes but returns another result.
    executes_reward: float = 0.1
    # Relative tolerance when comparing numeric values of two results.
    rel_tol: float = 1e-6
    # Sandbox limits of every query.
    executor: ExecutorConfig = dataclasses.field(default_factory=ExecutorConfig)

    def __post_init__(self):
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.rule not in (*compare.RULES, "auto"):
            raise ValueError(f"rule must be one of {(*compare.RULES, 'auto')}, got {self.rule!r}")
        if not 0.0 <= self.executes_reward <= self.match_reward:
            raise ValueError("need 0 <= executes_reward <= match_reward")
        if not self.rel_tol >= 0:
            raise ValueError(f"rel_tol must be >= 0, got {self.rel_tol}")


@dataclasses.dataclass(frozen=True)
class RewardDetail:
    """Why a completion got its reward.

    reason: match | mismatch | empty | parse_error | multiple_statements |
    disallowed_statement | disallowed_function | unknown_table | timeout | execution_error |
    gold_error (the reference itself failed; scored 0 and worth investigating).
    """

    reward: float
    reason: str
    sql: str
    message: str = ""
    seconds: float = 0.0


def extract_sql(completion: str | bytes) -> str:
    """The SQL of a completion: its last ```sql block, else the text itself, stripped.

    Bytes that are not valid UTF-8 give an empty string (which scores 0).
    """
    if isinstance(completion, (bytes, bytearray)):
        try:
            completion = bytes(completion).decode("utf-8")
        except UnicodeDecodeError:
            return ""
    blocks = _SQL_FENCE.findall(completion)
    sql = blocks[-1] if blocks else completion
    return sql.strip().rstrip(";").strip() if sql.strip() else ""


class RewardFn:
    """Batch execution reward; reuse one instance so connections and gold results are cached."""

    def __init__(self, config: RewardConfig | None = None, executor: Executor | None = None):
        self.config = config or RewardConfig()
        if self.config.rule == "auto":
            raise ValueError("rule 'auto' must be resolved to the data set's rule before scoring")
        self.executor = executor or Executor(self.config.executor)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.threads, thread_name_prefix="t2s-reward"
        )
        self._order_cache: dict[str, bool] = {}

    def _gold_orders(self, gold_sql: str) -> bool:
        cached = self._order_cache.get(gold_sql)
        if cached is None:
            cached = self._order_cache[gold_sql] = compare.gold_orders_rows(gold_sql)
        return cached

    def score_one(self, completion: str | bytes, task: Task) -> RewardDetail:
        """Score one completion against its task (see the module docstring for the scheme)."""
        sql = extract_sql(completion)
        if not sql:
            return RewardDetail(0.0, "empty", sql, "no SQL found")
        gold = self.executor.execute_gold(task.gold_sql, task.db_path)
        if not gold.ok:
            return RewardDetail(0.0, "gold_error", sql, f"{gold.status}: {gold.message}")
        pred = self.executor.execute(sql, task.db_path)
        return self._judge(sql, pred, gold, task)

    def _judge(self, sql: str, pred: ExecResult, gold: ExecResult, task: Task) -> RewardDetail:
        if pred.status == "error":
            return RewardDetail(0.0, "execution_error", sql, pred.message, pred.seconds)
        if not pred.ok:
            return RewardDetail(0.0, pred.status, sql, pred.message, pred.seconds)
        if not pred.truncated and compare.results_match(
            pred.rows,
            gold.rows,
            rule=self.config.rule,
            order_matters=self._gold_orders(task.gold_sql),
            rel_tol=self.config.rel_tol,
        ):
            return RewardDetail(self.config.match_reward, "match", sql, "", pred.seconds)
        note = "result truncated at the row cap" if pred.truncated else ""
        return RewardDetail(self.config.executes_reward, "mismatch", sql, note, pred.seconds)

    def score(
        self, completions: list[str], tasks: list[Task]
    ) -> tuple[np.ndarray, list[RewardDetail]]:
        """Rewards float32 [N] and one RewardDetail per completion (same order as the input)."""
        if len(completions) != len(tasks):
            raise ValueError(f"{len(completions)} completions for {len(tasks)} tasks")
        if self.config.threads == 1:
            details = [self.score_one(c, t) for c, t in zip(completions, tasks)]
        else:
            details = list(self._pool.map(self.score_one, completions, tasks))
        rewards_N = np.asarray([d.reward for d in details], dtype=np.float32)
        return rewards_N, details

    __call__ = score

    def close(self):
        """Stop the worker threads and close the executor's databases."""
        self._pool.shutdown(wait=True)
        self.executor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def score(
    completions: list[str], tasks: list[Task], config: RewardConfig | None = None
) -> tuple[np.ndarray, list[RewardDetail]]:
    """One-shot convenience wrapper; prefer a long-lived RewardFn in training loops."""
    with RewardFn(config) as fn:
        return fn.score(completions, tasks)
