"""Every Pallas kernel, in each configuration the code uses, lowers for CUDA to Triton modules that
parse and verify with jaxlib's MLIR (Triton dialect): exactly what XLA meets on a GPU. The sm_90
compile of the same modules (shared memory, registers, spills) is the slow test below."""

import numpy as np
import pytest

from pallas_kernels import catalog, gpu_check

CASES = catalog.kernel_cases("all")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_triton_ir_verifies(case):
    kernels = gpu_check.triton_kernels(case.lower("cuda"))
    assert kernels, "no Triton kernel in the lowered program"
    for kernel in kernels:
        text = gpu_check.verify(kernel)
        assert "tt.func" in text and kernel.name in text


def test_decode_cases_verify_prefix_and_suffix_kernels():
    """Every decode case lowers the prefix kernel once per prefix level and the suffix kernel
    (`suffix_decode.py`), and both modules parse and verify."""
    decode = [c for c in CASES if c.name.startswith("shared_prefix_decode")]
    assert any("cascade" in c.name for c in decode)
    for case in decode:
        kernels = gpu_check.triton_kernels(case.lower("cuda"))
        names = [k.name for k in kernels]
        levels = len(case.args[1])
        assert names.count("shared_prefix_attention") == levels and "suffix_attention" in names, names
        for kernel in kernels:
            assert kernel.name in gpu_check.verify(kernel)


def test_verify_rejects_a_loop_with_mismatched_bound_types():
    """The bug class behind the split-attention dK/dV failure: jnp.where of two Python ints is
    lowered with the predicate's i1 type, so an scf.for mixes i1 and i32 bounds."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pl_triton

    def kernel(x_ref, o_ref, *, typed):
        zero, three = (jnp.int32(0), jnp.int32(3)) if typed else (0, 3)
        n = jnp.where(pl.program_id(0) < 1, three, zero)
        o_ref[...] = lax.fori_loop(0, n, lambda i, acc: acc + x_ref[...], jnp.zeros_like(x_ref))

    def lowered(typed):
        fn = pl.pallas_call(lambda x, o: kernel(x, o, typed=typed), grid=(2,),
                            out_shape=jax.ShapeDtypeStruct((16,), jnp.float32),
                            compiler_params=pl_triton.CompilerParams(num_warps=1))
        struct = jax.ShapeDtypeStruct((16,), jnp.float32)
        return jax.jit(fn).trace(struct).lower(lowering_platforms=("cuda",))

    [good] = gpu_check.triton_kernels(lowered(typed=True))
    gpu_check.verify(good)
    [bad] = gpu_check.triton_kernels(lowered(typed=False))
    with pytest.raises(gpu_check.TritonIRError, match="same type"):
        gpu_check.verify(bad)


def test_ptxas_log_parsing():
    log = (
        "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
        "ptxas info    : Function properties for k\n"
        "    40 bytes stack frame, 48 bytes spill stores, 24 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 40 bytes cumulative stack size\n"
    )
    assert gpu_check.parse_ptxas_log(log) == (255, 40, 72)
    stats = gpu_check.CompileStats(smem_bytes=300 * 1024, registers=255, stack_bytes=40,
                                   spill_bytes=72)
    assert len(stats.problems) == 2
    assert gpu_check.CompileStats(1024, 128, 0, 0).problems == []


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compiles_for_sm90_without_spills(case):
    pytest.importorskip("triton")
    for kernel in gpu_check.triton_kernels(case.lower("cuda")):
        stats = gpu_check.compile_sm90(kernel)
        assert stats.problems == [], f"{kernel.name}: {stats.problems}"
        assert np.isfinite(stats.registers) and stats.registers > 0


def test_catalog_covers_every_pallas_kernel_of_the_project():
    """Each `pallas_call(..., name=...)` in pallas_kernels/ is among the kernels the catalog lowers,
    so a new or renamed kernel cannot skip the IR verification and the sm_90 compile."""
    import re
    from pathlib import Path

    source = "\n".join(p.read_text() for p in Path(catalog.__file__).parent.glob("*.py"))
    declared = set(re.findall(r'\bname="([a-z0-9_]+)"', source))
    lowered = {k.name for case in CASES for k in gpu_check.triton_kernels(case.lower("cuda"))}
    assert declared and declared <= lowered, declared - lowered
