"""Layers under `lax.scan` (ModelConfig.scan_layers) compute what the Python loop computes: the
same log-probs and parameter gradients on the Dense and PackedTree layouts, for every remat
policy, with LoRA adapters attached, and in bf16 compute; layers of different structure are
refused rather than run with layer 0's structure.

The model has three layers of distinct random weights (and adapters with random B), so a scan
that ran the layers out of order, ran one layer's weights everywhere, or dropped an adapter would
be off by far more than the tolerance. The scanned and looped programs fuse differently, which
reassociates a few float32 sums (measured with LoRA: log-probs ≤ 1.1e-7 and gradients ≤ 1.7e-6
relative; bf16 log-probs bitwise equal).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model.test_lora import randomise_b
from tests.model.test_packed_model import rel
from tests.tree_fixtures import VOCAB, random_packed
from zorro_jax.layouts import pack_dense
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.forward import dense_logprobs, packed_logprobs
from zorro_jax.model.lora import LoRAConfig, add_lora
from zorro_jax.model.transformer import RMSNorm, init_model


def _model(dtype="float32", remat="none", lora=False):
    cfg = ModelConfig(model_type="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, qk_norm=True, compute_dtype=dtype, remat=remat)
    model = init_model(cfg, seed=0)
    # Norm scales away from 1 (which bf16 holds exactly), so rounding one would show.
    rng = np.random.default_rng(2)
    for _, norm in nnx.iter_modules(model):
        if isinstance(norm, RMSNorm):
            w = norm.weight
            w.set_value(jnp.asarray(1 + rng.normal(0, 0.2, w.shape), w.dtype))
    if lora:
        randomise_b(add_lora(model, LoRAConfig(rank=2, alpha=4.0), seed=1))
    return model


def _batch(layout):
    """(batch, logprobs function, weights over its loss view)."""
    rng = np.random.default_rng(5)
    if layout == "dense":
        batch = pack_dense([list(rng.integers(3, VOCAB, n)) for n in (7, 12, 4)])
        fn = lambda m, b: dense_logprobs(m, b, impl="xla", with_entropy=False)
        shape = (3, batch.tokens_NxT.shape[1] - 1)
    else:
        _, batch = random_packed(rng, n_groups=2, g=3, block=16, trees_per_row=2, depths=(2, 3))
        fn = lambda m, b: packed_logprobs(m, b, impl="xla", with_entropy=False)
        shape = batch.sample_mask().shape
    return batch, fn, jnp.asarray(rng.normal(size=shape), jnp.float32)


def _logps_and_grads(model, scan, layout):
    """Log-probs and the gradient of Σ w·log p of `model` with the layers looped or scanned."""
    model.config = model.config.replace(scan_layers=scan)
    graphdef, params = nnx.split(model)
    batch, fn, weights = _batch(layout)

    def loss(p):
        lp, _, mask = fn(nnx.merge(graphdef, p), batch)
        return jnp.sum(jnp.where(mask, lp * weights, 0.0)), jnp.where(mask, lp, 0.0)

    (_, lp), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return lp, grads


# layout, remat, LoRA: the default tier runs the training case (packed, block remat, LoRA), the
# slow tier every combination.
CASES = [
    pytest.param(layout, remat, lora,
                 marks=[] if (layout, remat, lora) == ("packed", "block", True) else pytest.mark.slow)
    for layout in ("dense", "packed") for remat in ("none", "block", "attention")
    for lora in (False, True)
]


@pytest.mark.parametrize("layout,remat,lora", CASES)
def test_scan_equals_loop_fp32(layout, remat, lora):
    model = _model(remat=remat, lora=lora)
    lp0, g0 = _logps_and_grads(model, False, layout)
    lp1, g1 = _logps_and_grads(model, True, layout)
    assert rel(lp1, lp0) <= 1e-5
    leaves0, leaves1 = jax.tree.leaves(g0), jax.tree.leaves(g1)
    assert len(leaves0) == len(leaves1)
    for a, b in zip(leaves1, leaves0):
        assert rel(a, b) <= 1e-5
    if lora:  # the adapters are really trained through the scan (B's gradient is not zero)
        adapters = jax.tree.leaves(nnx.split_state(g1, nnx.LoRAParam, ...)[0])
        assert len(adapters) == 3 * 7 * 2
        assert all(np.abs(np.asarray(x)).max() > 0 for x in adapters)


@pytest.mark.parametrize("layout", ["dense", pytest.param("packed", marks=pytest.mark.slow)])
def test_scan_equals_loop_bf16_logprobs(layout):
    # Jitted both ways, as training runs it (eagerly each op rounds to bf16 on its own, which
    # alone moves log-probs by ~1e-3 from the compiled program).
    model = _model(dtype="bfloat16", lora=True)
    model.config = model.config.replace(scan_layers=False)  # whatever the default
    batch, fn, _ = _batch(layout)
    run = lambda gd, p: fn(nnx.merge(gd, p), batch)
    looped = jax.jit(run, static_argnums=0)(*nnx.split(model))[0]
    model.config = model.config.replace(scan_layers=True)
    scanned, _, mask = jax.jit(run, static_argnums=0)(*nnx.split(model))
    mask = np.asarray(mask)
    diff = np.abs(np.asarray(scanned, np.float64) - np.asarray(looped, np.float64))[mask]
    assert diff.max() <= 1e-3


def test_layers_of_different_structure_are_refused():
    model = _model()
    add_lora(model, LoRAConfig(rank=2))
    model.layers[1].mlp.up_proj.lora = None  # one layer without one of the adapters
    model.config = model.config.replace(scan_layers=True)
    batch, fn, _ = _batch("dense")
    with pytest.raises(ValueError, match="layer 1 differs"):
        fn(model, batch)
