"""Hugging Face checkpoint import/export: config.json + *.safetensors <-> our NNX model.

Loading checks every expected tensor is present with the right shape from the safetensors headers
alone (all problems are listed by name in one error), then streams the tensors one at a time
(`safe_open`, memory-mapped) into the parameter dtype, optionally placing each with a sharding
chosen by the caller. Export writes a float32 folder that `transformers` loads; `export_policy`
writes a trained policy (with LoRA adapters: a PEFT adapter folder and/or the merged weights).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from zorro_jax.model.config import ModelConfig
from zorro_jax.model.lora import base_model, export_peft_adapter, has_lora, merge_lora
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


def _tensor_files(folder: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (the index's map, or every file's keys)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        where = {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        for path in sorted(set(where.values())):
            if not path.is_file():
                raise FileNotFoundError(f"safetensors shard {path} listed in the index is missing")
        return where
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {folder.resolve()}")
    where = {}
    for path in files:
        with safe_open(str(path), framework="numpy") as f:
            where.update(dict.fromkeys(f.keys(), path))
    return where


class _Shards:
    """Open safetensors files, read one tensor at a time (memory-mapped; never a whole shard)."""

    def __init__(self):
        self._open: dict[tuple[Path, str], object] = {}
        self._stack = contextlib.ExitStack()

    def _handle(self, path: Path, framework: str):
        key = (path, framework)
        if key not in self._open:
            self._open[key] = self._stack.enter_context(safe_open(str(path), framework=framework))
        return self._open[key]

    def shape(self, path: Path, name: str) -> tuple[int, ...]:
        """The stored shape, read from the header without touching the data."""
        return tuple(self._handle(path, "numpy").get_slice(name).get_shape())

    def read(self, path: Path, name: str) -> np.ndarray:
        """One tensor as a host array; bfloat16 ones through JAX's reader (NumPy has no bf16)."""
        if self._handle(path, "numpy").get_slice(name).get_dtype() != "BF16":
            return self._handle(path, "numpy").get_tensor(name)
        with jax.default_device(jax.devices("cpu")[0]):
            return np.asarray(self._handle(path, "flax").get_tensor(name))

    def close(self):
        """Close every open file."""
        self._stack.close()


def load_hf_model(
    folder: str | Path,
    *,
    compute_dtype: str | None = None,
    param_dtype: str | None = None,
    sharding_for: Callable[[str, tuple[int, ...]], jax.sharding.Sharding] | None = None,
) -> Transformer:
    """Load a Hugging Face folder into a new model, streaming one tensor at a time.

    compute_dtype / param_dtype override the config's (both default to float32; see ModelConfig).
    sharding_for(hf_name, shape) -> Sharding places each tensor as it is loaded (for meshes), so
    no host or device ever holds more than its shards plus one tensor in flight.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder.resolve()} does not exist")
    overrides = {k: v for k, v in (("compute_dtype", compute_dtype), ("param_dtype", param_dtype))
                 if v is not None}
    cfg = ModelConfig.from_pretrained(folder, **overrides)
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    where = _tensor_files(folder)
    targets = _param_map(model)
    shards = _Shards()
    try:
        problems = []
        for name, (param, transpose) in targets.items():
            if name not in where:
                problems.append(f"missing tensor {name}")
                continue
            stored = shards.shape(where[name], name)
            if (stored[::-1] if transpose else stored) != param.shape:
                problems.append(f"tensor {name} has shape {stored}, expected "
                                f"{param.shape[::-1] if transpose else param.shape}")
        if problems:
            raise ValueError(f"checkpoint {folder} does not fit the config:\n  " + "\n  ".join(problems))
        # Tied models may still carry lm_head.weight; anything else unknown is reported, not ignored.
        unexpected = sorted(set(where) - set(targets) - {"lm_head.weight"})
        unexpected = [n for n in unexpected if not n.endswith("rotary_emb.inv_freq")]
        if unexpected:
            raise ValueError(f"checkpoint {folder} has tensors the model does not use: {unexpected[:10]}")
        dtype = jnp.dtype(cfg.param_dtype)
        for name, (param, transpose) in targets.items():
            arr = shards.read(where[name], name)
            arr = np.ascontiguousarray(arr.T if transpose else arr).astype(dtype)
            value = jax.device_put(arr, sharding_for(name, arr.shape)) if sharding_for else jnp.asarray(arr)
            param.set_value(value)
            del arr
    finally:
        shards.close()
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


LORA_EXPORTS = ("adapter", "merged", "both")


def export_policy(model: Transformer, run_dir: str | Path, tokenizer=None, *, lora_export: str = "both",
                  base_checkpoint: str | None = None) -> list[str]:
    """Write a trained policy under `run_dir` and return the report's lines for what was written.

    A plain model goes to policy/. A model with LoRA adapters is written as `lora_export` says:
    "adapter" (adapter/, a PEFT folder for the base `base_checkpoint`; without one, i.e. a new
    model, the base itself is written to base/ beside it), "merged" (policy/, base + adapters as
    an ordinary Hugging Face folder) or "both".
    """
    run_dir = Path(run_dir)
    if not has_lora(nnx.state(model)):
        export_hf_model(model, run_dir / "policy", tokenizer=tokenizer)
        return ["policy/ (Hugging Face folder)"]
    if lora_export not in LORA_EXPORTS:
        raise ValueError(f"lora_export must be one of {LORA_EXPORTS}, got {lora_export!r}")
    out = []
    if lora_export in ("adapter", "both"):
        base = base_checkpoint
        if not base:
            base = str(export_hf_model(base_model(model), run_dir / "base", tokenizer=tokenizer))
            out.append("base/ (Hugging Face folder: the frozen base of the adapter)")
        export_peft_adapter(model, run_dir / "adapter", base_model_name_or_path=base)
        out.append(f"adapter/ (PEFT LoRA adapter for {base})")
    if lora_export in ("merged", "both"):
        export_hf_model(merge_lora(model), run_dir / "policy", tokenizer=tokenizer)
        out.append("policy/ (Hugging Face folder, adapters merged)")
    return out
