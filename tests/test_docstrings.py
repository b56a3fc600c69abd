"""Every public function, class and method of zorro_jax and pallas_kernels has a docstring.

Public: module-level functions and classes and the methods of public classes whose names do not
start with an underscore, in modules whose names do not start with one. Read with `ast`, so the
check imports nothing.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zorro_jax", "pallas_kernels")


def missing_docstrings() -> list[str]:
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.startswith("_"):
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in tree.body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue
                if node.name.startswith("_"):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                if ast.get_docstring(node) is None:
                    missing.append(where)
                if isinstance(node, ast.ClassDef):
                    for item in node.body:
                        if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                                and not item.name.startswith("_")
                                and not any(isinstance(d, ast.Attribute) and d.attr == "setter"
                                            for d in item.decorator_list)
                                and ast.get_docstring(item) is None):
                            missing.append(f"{path.relative_to(ROOT)}:{item.lineno} {node.name}.{item.name}")
    return missing


def test_public_api_is_documented():
    missing = missing_docstrings()
    assert not missing, f"{len(missing)} public definitions without a docstring:\n" + "\n".join(missing)


def test_every_command_line_option_has_help():
    """`--help` of the training entry points explains every option: each config field has a
    comment in its dataclass."""
    import zorro_jax.tasks  # noqa: F401  (registers the built-in tasks)
    from zorro_jax.cli import _walk
    from zorro_jax.rl.pipeline import RunConfig
    from zorro_jax.rl.task import TASKS

    missing = [path for cls in (RunConfig, *(c for c, _ in TASKS.values()))
               for path, _, _, comment in _walk(cls) if not comment]
    assert not missing, f"config fields without a comment: {missing}"
