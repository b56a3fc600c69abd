"""Backend choice: interpret mode only on CPU, and on an accelerator a Pallas kernel that fails its
first-use self-check (does not compile, or disagrees with the XLA path) falls back to 'xla' with
a warning instead of running."""

import pytest

from zorro_jax import attention


@pytest.fixture
def accelerator(monkeypatch):
    """Pretend the kernels compile (no interpret mode), with fresh check and warning caches."""
    monkeypatch.setattr(attention, "interpret_mode", lambda: False)
    attention.pallas_self_check.cache_clear()
    attention._warn_once.cache_clear()
    yield monkeypatch
    attention.pallas_self_check.cache_clear()
    attention._warn_once.cache_clear()


def _fail():
    raise RuntimeError("Triton compilation failed")


@pytest.mark.parametrize(
    "check, expected",
    [(lambda: 0.0, "pallas"), (lambda: 1.0, "xla"), (lambda: float("nan"), "xla"), (_fail, "xla")],
    ids=["agrees", "disagrees", "nan", "fails"],
)
def test_self_check_decides_the_backend(accelerator, check, expected):
    accelerator.setitem(attention.SELF_CHECKS, "Toy", lambda interpret=False: check())
    if expected == "xla":
        with pytest.warns(UserWarning, match="Toy"):
            assert attention.resolve_impl("pallas", "Toy") == "xla"
    else:
        assert attention.resolve_impl("pallas", "Toy") == "pallas"
    # Decided once per process: the check does not run again.
    accelerator.setitem(attention.SELF_CHECKS, "Toy", lambda interpret=False: _fail())
    assert attention.resolve_impl("pallas", "Toy") == expected


def test_interpret_only_on_cpu():
    assert attention.interpret_mode()  # this machine is a CPU


@pytest.mark.parametrize("layout", sorted(attention.SELF_CHECKS))
def test_self_checks_pass_in_interpret_mode(layout):
    """The real checks, run here in interpret mode, so they cannot rot."""
    assert attention.SELF_CHECKS[layout](interpret=True) <= attention.SELF_CHECK_TOLERANCE


def test_lower_layers_do_not_import_the_parallel_layer():
    """The mesh reaches attention as an argument (`MeshKernels`), never by importing parallel/."""
    from pathlib import Path

    from tests.tasks.test_task_plugins import imported_modules

    root = Path(attention.__file__).parent
    files = [root / "attention.py", root / "layouts.py", *sorted((root / "model").glob("*.py")),
             *sorted((root / "sampling").glob("*.py"))]
    offenders = {p.name: sorted(m for m in imported_modules(p) if m.startswith("zorro_jax.parallel"))
                 for p in files}
    assert not {k: v for k, v in offenders.items() if v}
    assert "zorro_jax.attention" in imported_modules(root / "parallel" / "kernels.py")


def test_mesh_impl_wraps_pallas_once_per_mesh():
    """One `MeshKernels` per mesh (it keys compiled programs); other backends, no mesh and a mesh
    of one device pass through. The kernels themselves run in tests/parallel (8 devices)."""
    import dataclasses

    from zorro_jax.parallel.kernels import mesh_impl

    @dataclasses.dataclass(frozen=True)
    class Mesh:  # what mesh_impl reads of a mesh: its size, and that it hashes
        size: int
        shape: tuple

    mesh, other = Mesh(8, (2, 2, 2)), Mesh(8, (1, 2, 4))
    assert mesh_impl("pallas", None) == "pallas" and mesh_impl("pallas", Mesh(1, (1, 1, 1))) == "pallas"
    kernels = mesh_impl("pallas", mesh)
    assert isinstance(kernels, attention.MeshKernels) and kernels.mesh is mesh
    assert mesh_impl("pallas", mesh) is kernels and mesh_impl(kernels, mesh) is kernels
    assert mesh_impl("pallas", other) is not kernels and mesh_impl("pallas", other) != kernels
    assert mesh_impl("xla", mesh) == "xla" and mesh_impl("reference", mesh) == "reference"
    assert attention.impl_name(kernels) == "pallas" and attention.impl_name("xla") == "xla"
