"""Arithmetic word problems as a trainer task: generated deterministically from a seed (no
download), solved step by step, rewarded by exact match of the final number.

A problem is a template (addition, subtraction, multiplication, or a two-step mix) filled with a
name, an item and operands in [2, max_operand]. Its reference answer writes each step and ends
with `#### <answer>`; a completion scores `match_reward` when the number after its last `####`
equals the answer. Splits are disjoint by construction: each distinct problem belongs to one
split, chosen by a hash of its content, so a held-out problem never appears in training. The
shared prompt part names the problem's person (the group key), so with
`data.questions_per_database > 1` the questions about one person share it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re

import numpy as np

from zorro_jax.rl.task import Example, PromptFit, register_task

NAMES = ("Ann", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena")
ITEMS = ("apple", "pen", "book", "coin", "shell", "card", "stamp", "marble")
# name: (question template, steps): a step is (left, op, right) over the operands a, b, c and
# "r" (the previous step's result).
TEMPLATES = {
    "add": ("{name} has {a} {item}s and finds {b} more. How many {item}s does {name} have now?",
            (("a", "+", "b"),)),
    "sub": ("{name} has {a} {item}s and gives {b} of them away. How many {item}s are left?",
            (("a", "-", "b"),)),
    "mul": ("{name} buys {a} boxes with {b} {item}s in each box. How many {item}s is that?",
            (("a", "*", "b"),)),
    "mul_add": ("{name} has {a} bags of {b} {item}s and {c} more {item}s. How many {item}s in all?",
                (("a", "*", "b"), ("r", "+", "c"))),
    "add_sub": ("{name} has {a} {item}s, finds {b} more and loses {c}. How many {item}s are left?",
                (("a", "+", "b"), ("r", "-", "c"))),
}
SPLITS = ("train", "dev", "test")
_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
_ANSWER = re.compile(r"####\s*(-?\d+)")


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """How many problems each split holds, how large the numbers are, and the reward."""

    # Problems in the train split (SFT and GRPO draw from it).
    train_size: int = 4000
    # Problems in each of the dev and test splits (held out).
    eval_size: int = 200
    # Operands are drawn from [2, max_operand].
    max_operand: int = 12
    # Templates used (comma-separated names of TEMPLATES).
    templates: tuple[str, ...] = tuple(TEMPLATES)
    # Generation seed: the same seed gives the same problems in every split.
    seed: int = 0
    # Reward of a completion whose final number is the answer.
    match_reward: float = 1.0
    # Reward of a completion that ends with "#### <number>" but the wrong number.
    format_reward: float = 0.0

    def __post_init__(self):
        if self.train_size < 1 or self.eval_size < 1:
            raise ValueError("train_size and eval_size must be >= 1")
        if self.max_operand < 3:
            raise ValueError(f"max_operand must be >= 3, got {self.max_operand}")
        unknown = set(self.templates) - set(TEMPLATES)
        if unknown or not self.templates:
            raise ValueError(f"templates must be a non-empty subset of {tuple(TEMPLATES)}, got {self.templates}")
        if not 0.0 <= self.format_reward <= self.match_reward:
            raise ValueError("need 0 <= format_reward <= match_reward")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One word problem: its text, the reference solution and the answer."""

    key: str
    name: str
    question: str
    solution: str
    answer: int


def make_problem(template: str, name: str, item: str, a: int, b: int, c: int) -> Problem | None:
    """The problem of these choices, or None when a step would go negative (items are counted)."""
    text, steps = TEMPLATES[template]
    values, lines, r = {"a": a, "b": b, "c": c}, [], None
    for left, op, right in steps:
        x, y = (r if left == "r" else values[left]), values[right]
        r = _OPS[op](x, y)
        if r < 0:
            return None
        lines.append(f"{x} {op} {y} = {r}")
    uses_c = any("c" in (left, right) for left, _, right in steps)
    key = f"{template}|{name}|{item}|{a}|{b}|{c if uses_c else ''}"
    return Problem(key=key, name=name, question=text.format(name=name, item=item, a=a, b=b, c=c),
                   solution="\n".join(lines) + f"\n#### {r}", answer=r)


def split_of(key: str) -> str:
    """The split a problem belongs to: 10% dev, 10% test, the rest train, by a hash of its key."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 10
    return "dev" if h == 0 else "test" if h == 1 else "train"


def problems(cfg: ArithmeticConfig, split: str) -> list[Problem]:
    """The split's problems, in a fixed order: a seeded stream of random problems, keeping the
    distinct ones that belong to the split until it holds its size."""
    if split not in SPLITS:
        raise ValueError(f"arithmetic splits are {SPLITS}, got {split!r}")
    size = cfg.train_size if split == "train" else cfg.eval_size
    rng = np.random.default_rng([cfg.seed, 7])
    out, seen = [], set()
    for tries in itertools.count():
        if tries > 200 * size + 10_000:
            raise ValueError(f"only {len(out)} distinct {split} problems within max_operand = "
                             f"{cfg.max_operand}; lower the split size or raise max_operand")
        a, b, c = (int(x) for x in rng.integers(2, cfg.max_operand + 1, size=3))
        p = make_problem(cfg.templates[rng.integers(len(cfg.templates))], NAMES[rng.integers(len(NAMES))],
                         ITEMS[rng.integers(len(ITEMS))], a, b, c)
        if p is None or p.key in seen or split_of(p.key) != split:
            continue
        seen.add(p.key)
        out.append(p)
        if len(out) == size:
            return out


def final_number(completion: str) -> int | None:
    """The number after the completion's last `####`, or None."""
    found = _ANSWER.findall(completion)
    return int(found[-1]) if found else None


class ArithmeticTask:
    """The arithmetic task (see `zorro_jax.rl.task.Task` and the module docstring)."""

    name = "arithmetic"
    metric = "exact-match accuracy"

    def __init__(self, config: ArithmeticConfig):
        self.config = config

    def examples(self, split: str, fit: PromptFit | None = None) -> list[Example]:
        """The split's problems; prompts are short, so `fit` changes nothing."""
        return [Example(id=p.key, shared=f"Solve the problem about {p.name}. Show each step, then the "
                                         f"answer after ####.\n", question=p.question + "\n",
                        answer=p.solution, group_key=p.name, payload=p)
                for p in problems(self.config, split)]

    def check(self, examples):
        """Every generated problem can be scored."""
        return list(range(len(examples))), {}

    def score(self, completions, examples):
        """match_reward when the final number is the answer, format_reward when it is another
        number, 0 without one; details are the numbers read (None when absent)."""
        if len(completions) != len(examples):
            raise ValueError(f"{len(completions)} completions for {len(examples)} examples")
        read = [final_number(c) for c in completions]
        rewards_N = np.asarray([0.0 if got is None else self.config.match_reward if got == ex.payload.answer
                                else self.config.format_reward for got, ex in zip(read, examples)], np.float32)
        return rewards_N, read

    def augmenter(self, examples, fit=None):
        """No augmentation: the generator already varies every value."""
        return

    def summary(self) -> dict:
        """The problem generator's settings."""
        c = self.config
        return {"problems (train / dev / test)": f"{c.train_size} / {c.eval_size} / {c.eval_size}",
                "operands": f"2..{c.max_operand}", "templates": ", ".join(c.templates)}

    def close(self) -> None:
        """Nothing to release."""


@register_task("arithmetic", ArithmeticConfig)
def make_arithmetic(cfg: ArithmeticConfig) -> ArithmeticTask:
    """The arithmetic task of `cfg`."""
    return ArithmeticTask(cfg)
