"""Quickstart (the main job behind `make run`).

Until the GRPO loop lands this builds a tiny random policy, prefills a prompt batch through the
KV cache, decodes a few greedy tokens, and says plainly what is not built yet.
"""

import time

import jax.numpy as jnp

from zorro_jax.layouts import pack_dense
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.forward import dense_decode, dense_prefill
from zorro_jax.model.transformer import init_model


def main():
    cfg = ModelConfig(model_type="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      qk_norm=True)
    model = init_model(cfg, seed=0)
    t0 = time.perf_counter()
    logits, cache = dense_prefill(model, pack_dense([[1, 5, 9, 13], [1, 7, 3]]), max_len=16)
    out = []
    for _ in range(6):
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        out.append(tok)
        logits, cache = dense_decode(model, cache, tok)
    print(f"tiny random {cfg.model_type} policy: greedy tokens {jnp.stack(out, 1).tolist()} "
          f"in {time.perf_counter() - t0:.2f}s")
    print("Not built yet: the GRPO text-to-SQL training loop (SFT + GRPO, report) — see issue 6.")


if __name__ == "__main__":
    main()
