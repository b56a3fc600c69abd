"""Tiny random Hugging Face models built locally (no hub), for parity tests."""

from __future__ import annotations

from pathlib import Path

CONFIGS = {
    "llama3_gqa_untied": dict(
        model_type="llama", vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
        max_position_embeddings=128,
    ),
    "qwen2_bias_tied": dict(
        model_type="qwen2", vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, rope_theta=10000.0,
    ),
    "qwen3_qknorm_gqa4": dict(
        model_type="qwen3", vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=24, tie_word_embeddings=False,
        rope_theta=1000000.0,
    ),
}


def make_hf_model(name: str, folder: Path, seed: int = 0):
    """Build, randomise (incl. norms and biases) and save a tiny transformers model; return it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(CONFIGS[name])
    model_type = kw.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model
