"""The exploration notebooks: they execute (notebook tier, CI) and are committed without outputs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Per-notebook budget in SMALL mode; all of them together should stay under ~5 minutes.
TIMEOUT_S = 300


def test_notebooks_present():
    names = {p.name for p in NOTEBOOKS}
    for name in ("01_tree_attention.ipynb", "02_shared_prefix_generation.ipynb", "03_grpo_text2sql.ipynb"):
        assert name in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs (run notebooks/strip_outputs.py)"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


def _kernel_name(tmp_path, monkeypatch) -> str:
    """A kernel running this interpreter: the installed "python3" spec if it resolves to it, else a
    spec installed into a temporary JUPYTER_PATH."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    python_names = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    try:
        argv0 = KernelSpecManager().get_kernel_spec("python3").argv[0]
        # jupyter_client substitutes sys.executable for a bare "python" argv[0].
        if argv0 in python_names or os.path.realpath(argv0) == os.path.realpath(sys.executable):
            return "python3"
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter"
    install(prefix=str(prefix), kernel_name="zorro-notebook-test")
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    return "zorro-notebook-test"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    monkeypatch.setenv("ZORRO_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    kernel = _kernel_name(tmp_path, monkeypatch)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name=kernel,
                            resources={"metadata": {"path": str(REPO)}})
    t0 = time.perf_counter()
    client.execute()
    print(f"{path.name}: executed in {time.perf_counter() - t0:.1f} s")
