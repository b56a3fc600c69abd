"""Logits parity with transformers for Llama (llama3 rope), Qwen2 and Qwen3; export round trip."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hf_fixtures import CONFIGS, make_hf_model

from zorro_jax.checkpoints.hf import export_hf_model, load_hf_model
from zorro_jax.model.forward import dense_logits


def _batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.array([19, 7, 12])
    tokens = rng.integers(3, vocab, size=(3, 19)).astype(np.int64)
    for i, n in enumerate(lengths):
        tokens[i, n:] = 0
    return tokens, lengths


def _hf_logits(model, tokens, lengths):
    mask = (np.arange(tokens.shape[1])[None] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask))
    return out.logits.float().numpy()


def _assert_close_valid(ours, ref, lengths):
    for i, n in enumerate(lengths):
        a, b = np.asarray(ours[i, :n]), ref[i, :n]
        tol = 1e-4 * np.abs(b).max()
        assert np.abs(a - b).max() <= tol, (i, np.abs(a - b).max(), tol)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_and_export_roundtrip(name, tmp_path):
    from transformers import AutoModelForCausalLM

    hf = make_hf_model(name, tmp_path / "hf")
    tokens, lengths = _batch(CONFIGS[name]["vocab_size"])
    ref = _hf_logits(hf, tokens, lengths)

    ours = load_hf_model(tmp_path / "hf")
    _assert_close_valid(dense_logits(ours, tokens.astype(np.int32)), ref, lengths)

    export_hf_model(ours, tmp_path / "exported")
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported")).float().eval()
    _assert_close_valid(_hf_logits(back, tokens, lengths), ref, lengths)
    reloaded = load_hf_model(tmp_path / "exported")
    _assert_close_valid(dense_logits(reloaded, tokens.astype(np.int32)), ref, lengths)


def test_bad_checkpoints_name_the_problem(tmp_path):
    import json

    from safetensors.numpy import load_file, save_file

    make_hf_model("qwen2_bias_tied", tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(3, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        load_hf_model(tmp_path)
    assert "model.layers.1.mlp.up_proj.weight" in str(e.value)
    assert "model.layers.0.self_attn.q_proj.bias" in str(e.value)

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="llama, qwen2, qwen3"):
        load_hf_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hf_model(tmp_path / "nowhere")
