"""Shared pytest setup: strict rank promotion and fp32 matmuls so numeric checks are meaningful."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The tests compile hundreds of small programs and run each a few times: XLA's CPU compile is
# most of the tier's time (a warm compilation cache runs a third of it in a quarter of the time),
# and LLVM optimisation level 0 compiles ~1.5x faster. Codegen level only; IEEE semantics stay.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
