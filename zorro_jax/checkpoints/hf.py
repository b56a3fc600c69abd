"""Hugging Face checkpoint import/export: config.json + *.safetensors <-> our NNX model.

Loading reads tensors with `safetensors` (numpy), checks every expected tensor is present with the
right shape (all problems are listed by name in one error), and optionally places each tensor with
a sharding chosen by the caller. Export writes a folder that `transformers` loads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from zorro_jax.model.config import ModelConfig
from zorro_jax.model.lora import has_lora
from zorro_jax.model.transformer import Transformer

# Our parameter path -> (HF tensor name, transpose?). Linear kernels are [in, out]; HF is [out, in].
_LAYER_LINEARS = [
    ("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
    ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"),
]


def _param_map(model: Transformer) -> dict[str, tuple[nnx.Param, bool]]:
    """HF tensor name -> (our Param, transpose between layouts)."""
    out: dict[str, tuple[nnx.Param, bool]] = {"model.embed_tokens.weight": (model.embed_tokens, False)}
    for i, layer in enumerate(model.layers):
        pre = f"model.layers.{i}."
        out[pre + "input_layernorm.weight"] = (layer.input_layernorm.weight, False)
        out[pre + "post_attention_layernorm.weight"] = (layer.post_attention_layernorm.weight, False)
        for sub, name in _LAYER_LINEARS:
            lin = getattr(getattr(layer, sub), name)
            out[f"{pre}{sub}.{name}.weight"] = (lin.kernel, True)
            if lin.bias is not None:
                out[f"{pre}{sub}.{name}.bias"] = (lin.bias, False)
        if layer.self_attn.q_norm is not None:
            out[pre + "self_attn.q_norm.weight"] = (layer.self_attn.q_norm.weight, False)
            out[pre + "self_attn.k_norm.weight"] = (layer.self_attn.k_norm.weight, False)
    out["model.norm.weight"] = (model.norm.weight, False)
    if model.lm_head is not None:
        out["lm_head.weight"] = (model.lm_head, True)
    return out


def _read_tensors(folder: Path) -> dict[str, np.ndarray]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {folder.resolve()}")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        path = folder / f
        if not path.is_file():
            raise FileNotFoundError(f"safetensors shard {path} listed in the index is missing")
        tensors.update(load_file(str(path)))
    return tensors


def load_hf_model(
    folder: str | Path,
    *,
    compute_dtype: str | None = None,
    sharding_for: Callable[[str, tuple[int, ...]], jax.sharding.Sharding] | None = None,
) -> Transformer:
    """Load a Hugging Face folder into a new model.

    sharding_for(hf_name, shape) -> Sharding places each tensor as it is loaded (for meshes).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder.resolve()} does not exist")
    overrides = {"compute_dtype": compute_dtype} if compute_dtype else {}
    cfg = ModelConfig.from_pretrained(folder, **overrides)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    tensors = _read_tensors(folder)
    targets = _param_map(model)
    problems = []
    for name, (param, transpose) in targets.items():
        if name not in tensors:
            problems.append(f"missing tensor {name}")
            continue
        arr = tensors[name].T if transpose else tensors[name]
        if arr.shape != param.shape:
            problems.append(f"tensor {name} has shape {tensors[name].shape}, expected "
                            f"{param.shape[::-1] if transpose else param.shape}")
    if problems:
        raise ValueError(f"checkpoint {folder} does not fit the config:\n  " + "\n  ".join(problems))
    # Tied models may still carry lm_head.weight; anything else unknown is reported, not ignored.
    unexpected = sorted(set(tensors) - set(targets) - {"lm_head.weight"})
    unexpected = [n for n in unexpected if not n.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise ValueError(f"checkpoint {folder} has tensors the model does not use: {unexpected[:10]}")
    for name, (param, transpose) in targets.items():
        arr = np.ascontiguousarray(tensors[name].T if transpose else tensors[name]).astype(np.float32)
        value = jax.device_put(arr, sharding_for(name, arr.shape)) if sharding_for else jnp.asarray(arr)
        param.set_value(value)
    return model


def export_hf_model(model: Transformer, folder: str | Path, tokenizer=None) -> Path:
    """Write config.json + model.safetensors (+ the tokenizer if given) to `folder`."""
    if has_lora(nnx.state(model)):
        # Writing only the base kernels would silently drop what the adapters learned.
        raise ValueError("the model carries LoRA adapters: export lora.merge_lora(model) here, or "
                         "the adapters alone with lora.export_peft_adapter")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (param, transpose) in _param_map(model).items():
        arr = np.asarray(jax.device_get(param[...]), dtype=np.float32)
        tensors[name] = np.ascontiguousarray(arr.T if transpose else arr)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
