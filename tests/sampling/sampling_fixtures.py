"""Tiny model and ragged prompts shared by the sampling tests."""

import numpy as np

from zorro_jax.model.config import ModelConfig
from zorro_jax.model.transformer import init_model

VOCAB = 97


def tiny_model(seed=0):
    cfg = ModelConfig(model_type="qwen3", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      qk_norm=True)
    return init_model(cfg, seed)


def ragged_prompts(lengths=(5, 2, 13), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, n).tolist() for n in lengths]


def rel_err(actual, expected):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
