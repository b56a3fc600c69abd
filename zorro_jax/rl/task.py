"""What the trainer needs of a task, and the registry that names tasks.

A task turns a split name into `Example`s (prompt in two text parts — the part shared by every
example of its group key, and the example's own — plus a reference answer for SFT), scores
completions, and may drop examples whose reference cannot be scored or augment SFT examples.
The trainer (`zorro_jax.rl`) sees tasks only through this protocol; the built-in ones
(`zorro_jax.tasks`) register themselves by name like the losses do, and so can a user's:

    @register_task("mytask", MyTaskConfig)
    def make_my_task(cfg: MyTaskConfig) -> Task: ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class Example:
    """One task instance as the trainer sees it.

    The prompt is `shared + question` (the user turn, after the `system` text or message),
    tokenised part by part; examples with the same `group_key` have the same `system` and
    `shared` text (a database's schema), which multi-level prefix sharing processes once for all
    of them."""

    id: str
    shared: str
    question: str
    # Reference completion (SFT target), without the end-of-sequence token.
    answer: str
    group_key: str = ""
    # Instructions for the system turn of chat models (glued before the shared part otherwise).
    system: str = ""
    # The task's own record of the instance, handed back to `Task.score`.
    payload: Any = None


@dataclasses.dataclass(frozen=True)
class PromptFit:
    """A prompt budget: `count(system, shared + question)` tokens (what the trainer will feed,
    special tokens and chat frame included) must not exceed `budget`."""

    count: Callable[[str, str], int]
    budget: int


class Task(Protocol):
    """The protocol every task implements (see the module docstring)."""

    # Registered name.
    name: str
    # The task's config (an instance of the class it was registered with).
    config: Any
    # What the held-out metric (share of greedy completions scoring >= the correct threshold)
    # is called in reports, e.g. "execution accuracy".
    metric: str

    def examples(self, split: str, fit: PromptFit | None = None) -> list[Example]:
        """The examples of `split`; with `fit`, prompts are written within its budget where the
        task can shorten them (an example that still does not fit is the trainer's to skip)."""

    def check(self, examples: Sequence[Example]) -> tuple[list[int], dict[str, int]]:
        """(indices of the examples fit to train and evaluate on, {reason: count} of the others),
        e.g. a reference query that fails to execute would make its whole group's reward noise."""

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> tuple[np.ndarray, list]:
        """(rewards float32 [N], one detail per completion) of completions[i] for examples[i]."""

    def augmenter(self, examples: Sequence[Example],
                  fit: PromptFit | None = None) -> Callable[[int, np.random.Generator], Example] | None:
        """For SFT augmentation: f(i, rng) -> a variant of examples[i] (its prompt within `fit`);
        None when the task has none."""

    def summary(self) -> dict:
        """Task-specific rows of the run's report (e.g. the comparison rule used)."""

    def close(self) -> None:
        """Release what scoring holds (threads, database connections)."""


TASKS: dict[str, tuple[type, Callable[[Any], Task]]] = {}


def register_task(name: str, config_cls: type):
    """Decorator registering `factory(config: config_cls) -> Task` under `name`; `config_cls` is
    a frozen dataclass whose fields become the `--<name>.*` command-line options."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"task {name!r}: config class {config_cls!r} is not a dataclass")

    def deco(factory):
        TASKS[name] = (config_cls, factory)
        return factory

    return deco


def task_config_class(name: str) -> type:
    """The config dataclass of the registered task `name`."""
    return _entry(name)[0]


def make_task(name: str, config=None) -> Task:
    """The registered task `name` built from `config` (its config class's defaults when None)."""
    config_cls, factory = _entry(name)
    config = config_cls() if config is None else config
    if not isinstance(config, config_cls):
        raise TypeError(f"task {name!r} takes a {config_cls.__name__}, got {type(config).__name__}")
    return factory(config)


def _entry(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {sorted(TASKS)} (a task registers "
                         "when its module is imported: `import zorro_jax.tasks` for the built-in ones)")
    return TASKS[name]
