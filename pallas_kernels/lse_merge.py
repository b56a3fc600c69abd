"""Numerics shared by the attention kernels: exact merge of results over disjoint key sets, and
the precision of the kernels' dots.

Attention over keys K1 ∪ K2 equals a convex combination of the attention over K1 and over K2,
weighted by each part's softmax mass exp(lse_i). Split attention (training) and shared-prefix
decoding (generation) both compute a prompt part and an own-tokens part separately and merge them
with these helpers.
"""

import jax.numpy as jnp
from jax import lax

# A finite stand-in for log(0): a part with no visible keys gets weight exp(-inf)-like zero
# without producing NaNs through inf - inf.
NEG_INF = -1e30

# Kernel dots state their precision, so a global `jax_default_matmul_precision` cannot change a
# kernel. DEFAULT is TF32 on GPU tensor cores for fp32 inputs (IEEE fp32 dots run on FMA units
# and spill registers at our tiles; Mosaic TPU accepts only DEFAULT or HIGHEST, where DEFAULT is
# one bf16 pass). bf16 inputs are unaffected; interpret mode on CPU computes in fp32. fp32
# kernels on an accelerator therefore match the fp32 reference to TF32 accuracy (~1e-3
# relative), not 1e-5: train in bf16 there, or check fp32 exactness on the XLA path.
KERNEL_DOT_PRECISION = lax.Precision.DEFAULT


def merge_attention(o1, lse1, o2, lse2):
    """Merge two normalised partial attention outputs.

    o1, o2: [..., D] outputs, each normalised over its own key set.
    lse1, lse2: [...] log-sum-exp of the scaled scores of each key set (NEG_INF when empty).
    Returns (o, lse) for the union of the key sets; o has the dtype of o1.
    """
    lse1 = lse1.astype(jnp.float32)
    lse2 = lse2.astype(jnp.float32)
    lse = jnp.logaddexp(lse1, lse2)
    w1 = jnp.exp(lse1 - lse)[..., None]
    w2 = jnp.exp(lse2 - lse)[..., None]
    o = w1 * o1.astype(jnp.float32) + w2 * o2.astype(jnp.float32)
    return o.astype(o1.dtype), lse
