"""Text-to-SQL as a trainer task: splits of the built-in benchmark or a Spider/BIRD folder,
prompts within a token budget (shared part = the database's schema), gold-query checks, the
execution reward, and literal-swapping SFT augmentation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from zorro_jax.rl.task import Example, PromptFit, register_task
from zorro_jax.tasks.text2sql import spider
from zorro_jax.tasks.text2sql.augment import ValuePool, swap_literals
from zorro_jax.tasks.text2sql.prompts import build_prompt, format_answer
from zorro_jax.tasks.text2sql.reward import RewardConfig, RewardFn, Task


@dataclasses.dataclass(frozen=True)
class Text2SQLConfig:
    """Where the questions come from, how prompts are written, and how completions are scored."""

    # "builtin" (the embedded benchmark) or a Spider/BIRD-format folder.
    source: str = "builtin"
    # Layout of a folder source: "auto" (recognised from its files), "spider" or "bird".
    format: str = "auto"
    # Prompt style of zorro_jax.tasks.text2sql.prompts ("compact" suits small models: no system
    # turn).
    prompt_style: str = "compact"
    # Execution reward: comparison rule (auto = the data set's), reward values, sandbox limits.
    reward: RewardConfig = RewardConfig(rule="auto")

    def __post_init__(self):
        if self.format not in ("auto", "spider", "bird"):
            raise ValueError(f"format must be auto, spider or bird, got {self.format!r}")


def load_tasks(cfg: Text2SQLConfig, split: str) -> tuple[list[Task], str]:
    """(tasks, comparison rule) of a split of the configured source; "a+b" concatenates splits
    (e.g. "train+rl"). For a folder, "train" / "dev" / "test" are the data set's splits as shipped
    (Spider's train = train_spider.json + train_others.json), any other name an examples file
    ("x" or "x.json")."""
    if "+" in split:
        parts = [load_tasks(cfg, part) for part in split.split("+")]
        return [t for tasks, _ in parts for t in tasks], parts[0][1]
    if cfg.source == "builtin":
        from zorro_jax.tasks.text2sql.benchmark import load_builtin

        return load_builtin(split), "spider"
    root = Path(cfg.source)
    if not root.is_dir():
        raise FileNotFoundError(f"data source {root.resolve()} is neither 'builtin' nor a folder")
    fmt = None if cfg.format == "auto" else cfg.format
    if split in ("train", "dev", "test"):
        tasks, report = spider.load_split(str(root), split, format=fmt)
    else:
        name = split if split.endswith(".json") else f"{split}.json"
        if not (root / name).is_file():
            raise FileNotFoundError(f"no examples file {name} in {root.resolve()}")
        rule = spider.RULE_OF_FORMAT[fmt or spider.detect_format(str(root))]
        tasks, report = spider.load(str(root), examples_file=name, rule=rule)
    if report is not None:
        print(f"{split}: {report}", flush=True)
    return tasks, report.rule if report is not None else "spider"


class Text2SQLTask:
    """The text-to-SQL task (see `zorro_jax.rl.task.Task`). The sandbox opens on the first
    `check` or `score`: by then the prompts have read their schemas (cached), and DuckDB refuses
    a second connection to a database with another configuration."""

    name = "text2sql"
    metric = "execution accuracy"

    def __init__(self, config: Text2SQLConfig):
        self.config = config
        self.rule = None if config.reward.rule == "auto" else config.reward.rule
        self._reward = None
        self._splits: dict[str, list[Task]] = {}

    def tasks(self, split: str) -> list[Task]:
        """The split's `Task` records (the payloads of its examples), loaded once."""
        if split not in self._splits:
            tasks, rule = load_tasks(self.config, split)
            self.rule = self.rule or rule  # the first split loaded names the data set's rule
            self._splits[split] = tasks
        return self._splits[split]

    def examples(self, split: str, fit: PromptFit | None = None) -> list[Example]:
        """The split's questions as examples: system text (none in the compact style), shared part
        = the database's part of the prompt (its schema), question part the task's, answer the gold SQL in a fenced
        block. With `fit`, a prompt over the budget is shrunk by the token-budgeted builder
        (example values, then the least relevant tables' columns and tables; the question and
        the instructions always stay), so its schema part may then differ from the other
        questions of its database."""
        return [self.example(t, fit) for t in self.tasks(split)]

    def example(self, task: Task, fit: PromptFit | None = None) -> Example:
        """The `Example` of one `Task` (see `examples`)."""
        style = self.config.prompt_style
        prompt = build_prompt(task, style=style)
        # The compact style is for small policies trained from scratch: no system turn.
        system = prompt.system if style != "compact" else ""
        if fit is not None and fit.count(system, prompt.text) > fit.budget:
            prompt = build_prompt(task, style=style, count_tokens=lambda text: fit.count(system, text),
                                  budget=fit.budget)
        return Example(id=task.task_id, shared=prompt.shared, question=prompt.question, system=system,
                       answer=format_answer(task.gold_sql), group_key=task.db_id, payload=task)

    def _reward_fn(self) -> RewardFn:
        if self._reward is None:
            if self.rule is None:
                raise RuntimeError("load a split (examples) before scoring: the rule is the data set's")
            self._reward = RewardFn(dataclasses.replace(self.config.reward, rule=self.rule))
        return self._reward

    def check(self, examples):
        """Keep the examples whose gold query executes (once; the executor caches the result for
        the reward); count the others by failure."""
        executor = self._reward_fn().executor
        kept, reasons = [], {}
        for i, ex in enumerate(examples):
            gold = executor.execute_gold(ex.payload.gold_sql, ex.payload.db_path)
            if gold.ok:
                kept.append(i)
            else:
                why = f"{gold.status}: {gold.message.splitlines()[0][:80] if gold.message else ''}"
                reasons[why] = reasons.get(why, 0) + 1
        return kept, reasons

    def score(self, completions, examples):
        """Execution rewards (1 / 0.1 / 0 by default) and `RewardDetail`s."""
        return self._reward_fn().score(list(completions), [ex.payload for ex in examples])

    def augmenter(self, examples, fit=None):
        """Literal swapping: the values a question and its gold SQL share are replaced by other
        values of the same shape from `examples`, so the policy learns to copy literals."""
        pool = ValuePool.from_pairs((ex.payload.question, ex.payload.gold_sql) for ex in examples)

        def swap(i: int, rng) -> Example:
            task = examples[i].payload
            question, sql = swap_literals(task.question, task.gold_sql, rng, pool)
            return self.example(dataclasses.replace(task, question=question, gold_sql=sql), fit)

        return swap

    def summary(self) -> dict:
        """The comparison rule the reward used."""
        return {"reward comparison rule": self.rule}

    def close(self) -> None:
        """Stop the reward's threads and close its databases."""
        if self._reward is not None:
            self._reward.close()
            self._reward = None


@register_task("text2sql", Text2SQLConfig)
def make_text2sql(cfg: Text2SQLConfig) -> Text2SQLTask:
    """The text-to-SQL task of `cfg`."""
    return Text2SQLTask(cfg)
