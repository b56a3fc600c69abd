"""Tasks as plug-ins: the registry, the command line built from it, and the layering rule that
the trainer (zorro_jax.rl) never imports the built-in tasks."""

import ast
import dataclasses
from pathlib import Path

import pytest

import zorro_jax.tasks  # noqa: F401  (registers the built-in tasks)
from zorro_jax.rl.pipeline import RunConfig, parse_command_line
from zorro_jax.rl.task import TASKS, make_task, register_task
from zorro_jax.tasks.arithmetic.task import ArithmeticConfig
from zorro_jax.tasks.text2sql.task import Text2SQLConfig

RL = Path(__file__).resolve().parents[2] / "zorro_jax" / "rl"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_trainer_does_not_import_tasks():
    offenders = {p.name: sorted(m for m in imported_modules(p) if m.startswith("zorro_jax.tasks"))
                 for p in RL.glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}
    # The scan sees both import forms (the package's own registering imports).
    assert {"zorro_jax.tasks.text2sql.task", "zorro_jax.tasks.arithmetic.task"} <= imported_modules(
        RL.parent / "tasks" / "__init__.py")


def test_builtin_tasks_are_registered_and_built_by_name():
    assert {"text2sql", "arithmetic"} <= set(TASKS)
    task = make_task("arithmetic", ArithmeticConfig(train_size=5, eval_size=3))
    assert task.name == "arithmetic" and len(task.examples("dev")) == 3
    with pytest.raises(ValueError, match="unknown task 'nope'.*registered"):
        make_task("nope")
    with pytest.raises(TypeError, match="ArithmeticConfig"):
        make_task("arithmetic", Text2SQLConfig())


def test_a_user_task_registers_and_gets_its_own_options():
    @dataclasses.dataclass(frozen=True)
    class EchoConfig:
        # Word the completion must repeat.
        word: str = "hello"

    @register_task("echo_test", EchoConfig)
    def make_echo(cfg):
        return cfg

    try:
        cfg, task_cfg = parse_command_line(["--task", "echo_test", "--echo_test.word", "bye", "--grpo.steps", "3"])
        assert cfg.task == "echo_test" and cfg.grpo.steps == 3 and task_cfg == EchoConfig("bye")
    finally:
        del TASKS["echo_test"]


def test_command_line_picks_the_task_config():
    cfg, task_cfg = parse_command_line(["--task", "arithmetic", "--arithmetic.max_operand", "20",
                                        "--text2sql.source", "ignored"])
    assert cfg == RunConfig(task="arithmetic") and task_cfg == ArithmeticConfig(max_operand=20)
    defaults = {"text2sql": Text2SQLConfig(prompt_style="ddl")}
    _, t2s = parse_command_line(["--text2sql.format", "bird"], task_defaults=defaults)
    assert t2s == Text2SQLConfig(prompt_style="ddl", format="bird")
    with pytest.raises(ValueError, match="format must be"):
        parse_command_line(["--text2sql.format", "csv"])
