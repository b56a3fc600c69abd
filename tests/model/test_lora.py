"""LoRA adapters: adapted logits == merged-weights logits; fresh adapters are exactly off; the PEFT
adapter folder and the merged HF folder give our logits in transformers; bad input is refused."""

import jax
import numpy as np
import pytest
from flax import nnx

from zorro_jax.checkpoints.hf import export_hf_model, load_hf_model
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.forward import dense_logits
from zorro_jax.model.lora import (
    PROJECTIONS,
    LoRAConfig,
    add_lora,
    export_peft_adapter,
    has_lora,
    merge_lora,
    projections,
)
from zorro_jax.model.transformer import init_model

VOCAB = 53


def tiny_model(seed=0, **kw):
    cfg = ModelConfig(model_type="qwen2", vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      qkv_bias=True, **kw)
    return init_model(cfg, seed=seed)


def randomise_b(model, seed=1, std=0.05):
    """Give every adapter a random B (a fresh one is zero, which would hide most bugs)."""
    rng = np.random.default_rng(seed)
    for _name, lin in projections(model).values():
        if lin.lora is not None:
            b = lin.lora.lora_b
            b.set_value(jax.numpy.asarray(rng.normal(0, std, b.shape), np.float32))
    return model


def tokens(seed=0, n=3, t=11):
    return np.random.default_rng(seed).integers(0, VOCAB, (n, t)).astype(np.int32)


def max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def test_adapted_logits_equal_merged_weights_logits():
    base = np.asarray(dense_logits(tiny_model(), tokens()))
    model = randomise_b(add_lora(tiny_model(), LoRAConfig(rank=4, alpha=8.0)))
    adapted = np.asarray(dense_logits(model, tokens()))
    merged = merge_lora(model)
    assert not has_lora(nnx.state(merged)) and has_lora(nnx.state(model))  # the model is kept
    assert nnx.graphdef(merged) == nnx.graphdef(tiny_model())  # an ordinary model
    assert max_rel(dense_logits(merged, tokens()), adapted) <= 1e-5
    # The adapters do change the function (so the equality above is not base == base).
    assert max_rel(adapted, base) > 1e-2


def test_fresh_adapters_are_exactly_off_and_only_on_targets():
    cfg = LoRAConfig(rank=3, alpha=5.0, targets=("q_proj", "v_proj", "down_proj"))
    model = add_lora(tiny_model(), cfg)
    np.testing.assert_array_equal(dense_logits(model, tokens()), dense_logits(tiny_model(), tokens()))
    adapted = {path for path, (_n, lin) in projections(model).items() if lin.lora is not None}
    assert adapted == {f"model.layers.{i}.{PROJECTIONS[n]}.{n}" for i in range(2) for n in cfg.targets}
    lin = model.layers[0].mlp.down_proj
    assert lin.lora.lora_a.shape == (48, 3) and lin.lora.lora_b.shape == (3, 32)
    # The adapters carry logical axes for the sharding rules: A's input and B's output side.
    assert lin.lora.lora_a.get_metadata()["out_sharding"] == ("mlp", None)
    assert lin.lora.lora_b.get_metadata()["out_sharding"] == (None, "embed")


def test_bad_lora_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=-1)
    with pytest.raises(ValueError, match="alpha"):
        LoRAConfig(rank=2, alpha=0.0)
    with pytest.raises(ValueError, match="lm_head"):
        LoRAConfig(rank=2, targets=("q_proj", "lm_head"))
    with pytest.raises(ValueError, match="rank >= 1"):
        add_lora(tiny_model(), LoRAConfig(rank=0))
    model = add_lora(tiny_model(), LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="already"):
        add_lora(model, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match="merge_lora"):
        export_hf_model(model, tmp_path / "hf")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        export_peft_adapter(tiny_model(), tmp_path / "none")
    model.layers[1].self_attn.q_proj.lora = None  # layers now differ: PEFT cannot express it
    with pytest.raises(ValueError, match="every layer"):
        export_peft_adapter(model, tmp_path / "ragged")


torch = pytest.importorskip("torch")


def _hf_logits(hf, tokens_NxT):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(tokens_NxT.astype(np.int64))).logits.float().numpy()


@pytest.mark.parametrize("name", [pytest.param("llama3_gqa_untied", marks=pytest.mark.slow), "qwen3_qknorm_gqa4"])
def test_peft_adapter_and_merged_export_give_our_logits(name, tmp_path):
    pytest.importorskip("peft")
    from hf_fixtures import CONFIGS, make_hf_model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    make_hf_model(name, tmp_path / "base")
    model = randomise_b(add_lora(load_hf_model(tmp_path / "base"), LoRAConfig(rank=4, alpha=16.0)))
    toks = np.random.default_rng(0).integers(0, CONFIGS[name]["vocab_size"], (2, 13)).astype(np.int32)
    ours = np.asarray(dense_logits(model, toks))

    export_peft_adapter(model, tmp_path / "adapter", base_model_name_or_path=str(tmp_path / "base"))
    base_hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")).float().eval()
    base_logits = _hf_logits(base_hf, toks)
    peft_model = PeftModel.from_pretrained(base_hf, str(tmp_path / "adapter")).eval()
    peft_logits = _hf_logits(peft_model, toks)
    assert np.abs(peft_logits - ours).max() <= 1e-4
    # The adapters change the function, so the match above is not base == base.
    assert np.abs(peft_logits - base_logits).max() > 1e-2

    export_hf_model(merge_lora(model), tmp_path / "merged")
    merged_hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).float().eval()
    assert np.abs(_hf_logits(merged_hf, toks) - ours).max() <= 1e-4
