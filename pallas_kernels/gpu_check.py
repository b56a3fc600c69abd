"""Checking Pallas-Triton kernels for a GPU on a machine without one.

Three steps of rising cost (DESIGN.md, "Kernels"):

1. `triton_kernels(lowered)`: lowering a jitted function for CUDA
   (`jax.jit(f).trace(*structs).lower(lowering_platforms=("cuda",))`) emits one
   `__gpu$xla.gpu.triton` custom call per kernel, the Triton module inside its backend config as
   MLIR bytecode.
2. `verify(kernel)`: parses that module back with jaxlib's MLIR context (Triton dialect
   registered); parsing runs the verifier, so this is exactly what XLA meets on a GPU.
3. `compile_sm90(kernel)`: compiles the verified module with the `triton` package for `cuda:90`
   and assembles the PTX with the ptxas that package ships for current PTX
   (`ptxas-blackwell`), reading shared memory from the compile metadata and registers, stack and
   spills from `ptxas -v`. XLA compiles with its own bundled Triton, so these are estimates.

Step 3 needs the optional `triton` package (test extra); steps 1–2 need only jaxlib.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

from jax._src.lib import triton as _jax_triton
from jax._src.lib.mlir import ir

TRITON_TARGET = "__gpu$xla.gpu.triton"
# Hopper's opt-in shared memory per block (227 KB).
SMEM_LIMIT_BYTES = 227 * 1024


class TritonIRError(ValueError):
    """A kernel's Triton module does not parse or verify."""


@dataclasses.dataclass(frozen=True)
class TritonKernel:
    """One Triton custom call of a lowered module."""

    name: str
    num_warps: int
    num_stages: int
    grid: tuple[int, int, int]
    ir_bytecode: bytes


@dataclasses.dataclass(frozen=True)
class CompileStats:
    """What the sm_90 compile of one kernel reports."""

    smem_bytes: int
    registers: int
    stack_bytes: int
    spill_bytes: int  # spill stores + spill loads

    @property
    def problems(self) -> list[str]:
        """Why this kernel would not run well on Hopper (empty when it is fine)."""
        out = []
        if self.spill_bytes:
            out.append(f"spills {self.spill_bytes} bytes")
        if self.smem_bytes > SMEM_LIMIT_BYTES:
            out.append(f"needs {self.smem_bytes} bytes of shared memory > {SMEM_LIMIT_BYTES}")
        return out


def _walk(op, found):
    for region in op.regions:
        for block in region.blocks:
            for child in block.operations:
                if child.operation.name == "stablehlo.custom_call":
                    target = ir.StringAttr(child.attributes["call_target_name"]).value
                    if target == TRITON_TARGET:
                        found.append(child)
                _walk(child.operation, found)


def triton_kernels(lowered) -> list[TritonKernel]:
    """The Triton kernels of a `jax.stages.Lowered` (lowered for "cuda"), in program order."""
    module = lowered.compiler_ir("stablehlo")
    calls = []
    with module.context:
        _walk(module.operation, calls)
        kernels = []
        for call in calls:
            cfg = ir.DictAttr(call.attributes["mhlo.backend_config"])
            ints = {k: ir.IntegerAttr(cfg[k]).value for k in
                    ("num_warps", "num_stages", "grid_x", "grid_y", "grid_z")}
            kernels.append(TritonKernel(
                name=ir.StringAttr(cfg["name"]).value,
                num_warps=ints["num_warps"],
                num_stages=ints["num_stages"],
                grid=(ints["grid_x"], ints["grid_y"], ints["grid_z"]),
                ir_bytecode=bytes(ir.StringAttr(cfg["ir"]).value_bytes),
            ))
    return kernels


def verify(kernel: TritonKernel) -> str:
    """Parse (and so verify) the kernel's Triton module; returns its textual IR.

    Raises TritonIRError with the verifier's message when the module is invalid.
    """
    ctx = ir.Context()
    _jax_triton.dialect.register_dialect(ctx)
    ctx.load_all_available_dialects()
    with ctx:
        try:
            module = ir.Module.parse(kernel.ir_bytecode)
        except Exception as e:  # noqa: BLE001 - the MLIR binding raises a bare Exception
            raise TritonIRError(f"{kernel.name}: {e}") from None
        if not module.operation.verify():
            raise TritonIRError(f"{kernel.name}: module does not verify")
        return module.operation.get_asm()


_REGS = re.compile(r"Used (\d+) registers")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> tuple[int, int, int]:
    """(registers, stack bytes, spill bytes) from `ptxas -v` output (the largest function)."""
    regs = [int(m) for m in _REGS.findall(log)]
    stacks = [tuple(map(int, m)) for m in _STACK.findall(log)]
    if not regs:
        raise ValueError(f"no register count in ptxas output:\n{log}")
    stack = max((s for s, _, _ in stacks), default=0)
    spill = max((st + ld for _, st, ld in stacks), default=0)
    return max(regs), stack, spill


def _ptxas_path() -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path


def compile_sm90(kernel: TritonKernel, ir_text: str | None = None) -> CompileStats:
    """Compile a verified kernel for sm_90 with the `triton` package and assemble it with ptxas."""
    import triton
    from triton.backends.compiler import GPUTarget

    ir_text = ir_text if ir_text is not None else verify(kernel)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, f"{kernel.name}.ttir")
        with open(src, "w") as f:
            f.write(ir_text)
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        compiled = triton.compile(
            src,
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": kernel.num_warps, "num_stages": kernel.num_stages},
        )
        ptx = os.path.join(tmp, f"{kernel.name}.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        run = subprocess.run(
            [_ptxas_path(), "-v", "--gpu-name=sm_90a", ptx, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
            check=False,
        )
    if run.returncode:
        raise RuntimeError(f"ptxas failed on {kernel.name}:\n{run.stderr}")
    registers, stack, spill = parse_ptxas_log(run.stderr + run.stdout)
    return CompileStats(int(compiled.metadata.shared), registers, stack, spill)
