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
