"""Precision policy on a tiny model: bf16 compute on fp32 master weights stays within 1e-3 of fp32
log-probs on the packed training layout; bf16 parameters are the rounded fp32 ones and are refused
by the optimiser; bf16 and sharded checkpoints stream in tensor by tensor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.model.test_packed_model import tiny_model
from tests.tree_fixtures import random_packed
from zorro_jax.checkpoints.hf import _param_map, export_hf_model, load_hf_model
from zorro_jax.model.forward import packed_logprobs
from zorro_jax.model.transformer import Transformer
from zorro_jax.rl.optim import OptimConfig, make_optimizer


def _packed():
    _, packed = random_packed(np.random.default_rng(7), n_groups=3, g=4, block=16, trees_per_row=2,
                              depths=(1, 2, 3))
    return packed


def _max_diff(model, reference, packed, impl):
    lp, _, mask = packed_logprobs(model, packed, impl=impl, with_entropy=False)
    want, _, _ = packed_logprobs(reference, packed, impl="xla", with_entropy=False)
    m = np.asarray(mask)
    return float(np.abs(np.where(m, np.asarray(lp) - np.asarray(want), 0)).max())


@pytest.mark.parametrize("impl, seed", [("xla", 0), ("xla", 1), ("pallas", 0)])
def test_bf16_compute_on_fp32_weights_within_1e3_of_fp32(impl, seed):
    # Measured ~8e-4 / 9.6e-4; with a bf16 residual stream it was 1.4e-3 (see Transformer.embed).
    packed = _packed()
    fp32 = tiny_model(seed=seed)
    assert _max_diff(tiny_model("bfloat16", seed=seed), fp32, packed, impl) <= 1e-3


def test_bf16_params_are_the_rounded_fp32_params():
    cfg = tiny_model().config
    fp32 = nnx.state(tiny_model(), nnx.Param)
    low = Transformer(cfg.replace(param_dtype="bfloat16"), rngs=nnx.Rngs(params=0))
    for a, b in zip(jax.tree.leaves(nnx.state(low, nnx.Param)), jax.tree.leaves(fp32)):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))
    # The compute path alone (the same bf16-representable weights in fp32 compute) is within 1e-3;
    # against the fp32 weights it is not: rounding them moves this model's log-probs by 1.1e-3.
    bf16_all = Transformer(cfg.replace(param_dtype="bfloat16", compute_dtype="bfloat16"),
                           rngs=nnx.Rngs(params=0))
    assert _max_diff(bf16_all, low, _packed(), "xla") <= 1e-3


def test_optimizer_refuses_bf16_params():
    cfg = tiny_model().config.replace(param_dtype="bfloat16")
    params = nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=0)), nnx.Param)
    with pytest.raises(ValueError, match="fp32 master weights"):
        make_optimizer(OptimConfig()).init(params)
    make_optimizer(OptimConfig()).init(nnx.state(tiny_model(), nnx.Param))
    with pytest.raises(ValueError, match="param_dtype must be float32 or bfloat16"):
        tiny_model().config.replace(param_dtype="float16")


def test_bf16_sharded_checkpoint_streams_into_any_param_dtype(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    export_hf_model(tiny_model(seed=2), tmp_path / "fp32")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fp32"), dtype=torch.bfloat16)
    hf.save_pretrained(str(tmp_path / "bf16"), max_shard_size="20KB")
    assert (tmp_path / "bf16" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "bf16").glob("*.safetensors"))) > 2
    want = {k: v.float().numpy() for k, v in hf.state_dict().items()}
    for param_dtype in ("float32", "bfloat16"):
        model = load_hf_model(tmp_path / "bf16", param_dtype=param_dtype)
        for name, (param, transpose) in _param_map(model).items():
            assert param[...].dtype == jnp.dtype(param_dtype), name
            got = np.asarray(param[...], np.float32)
            np.testing.assert_array_equal(got.T if transpose else got, want[name])
