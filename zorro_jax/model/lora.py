"""LoRA adapters on the attention and MLP projections: attach, split trainable state, merge, and
export as a PEFT adapter folder.

An adapter is flax NNX's `nnx.LoRA` (A [in, r], B [r, out], `nnx.LoRAParam` variables) scaled by
alpha / r as PEFT does, attached to one of our `Linear`s, whose output it adds to. Because the
adapters are their own variable type, `split_trainable` can tell them from the frozen base by
type alone: a model that carries adapters trains only them, and the base arrays pass through
every update untouched (so a reference policy taken from the same state shares them).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from zorro_jax.model.transformer import Linear, Transformer

# Projection name -> the sub-module of a decoder layer that holds it (Hugging Face names, which
# are also PEFT's `target_modules`).
PROJECTIONS = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters: rank, scale numerator and which projections get one (dropout is 0)."""

    # Adapter rank r (0 = no adapters: the whole model trains).
    rank: int = 0
    # The adapter's output is scaled by alpha / rank (PEFT's `lora_alpha`).
    alpha: float = 16.0
    # Projections of every layer that get an adapter.
    targets: tuple[str, ...] = tuple(PROJECTIONS)

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"LoRA rank must be >= 0 (0 = off), got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        unknown = sorted(set(self.targets) - set(PROJECTIONS))
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of {list(PROJECTIONS)}, "
                             f"got {list(self.targets)}")


class Adapter(nnx.LoRA):
    """`nnx.LoRA` without a base module, its output scaled by alpha / rank (PEFT's scaling)."""

    def __init__(self, din: int, rank: int, dout: int, alpha: float, *, axes, dtype, rngs: nnx.Rngs):
        # A keeps nnx's he-uniform init and B starts at zero, so a fresh adapter is exactly off.
        super().__init__(din, rank, dout, dtype=dtype, rngs=rngs,
                         a_metadata={"out_sharding": (axes[0], None), "eager_sharding": False},
                         b_metadata={"out_sharding": (None, axes[1]), "eager_sharding": False})
        self.rank, self.alpha = rank, float(alpha)

    def __call__(self, x):
        return super().__call__(x) * (self.alpha / self.rank)


def projections(model: Transformer) -> dict[str, tuple[str, Linear]]:
    """Hugging Face module path (`model.layers.{i}.self_attn.q_proj`) -> (projection name, Linear)
    for every adaptable projection of the model."""
    out = {}
    for i, layer in enumerate(model.layers):
        for name, sub in PROJECTIONS.items():
            out[f"model.layers.{i}.{sub}.{name}"] = (name, getattr(getattr(layer, sub), name))
    return out


def add_lora(model: Transformer, cfg: LoRAConfig, seed: int = 0) -> Transformer:
    """Attach a fresh adapter (B = 0, so the outputs do not change) to every target projection of
    every layer, in place; returns the model."""
    if cfg.rank < 1:
        raise ValueError(f"add_lora needs rank >= 1, got {cfg.rank}")
    if has_lora(nnx.state(model)):
        raise ValueError("the model already has LoRA adapters (merge_lora them first)")
    rngs = nnx.Rngs(params=seed)
    for name, lin in projections(model).values():
        if name in cfg.targets:
            din, dout = lin.kernel.shape
            # nnx.data: the attribute was a static None when the Linear was built.
            lin.lora = nnx.data(Adapter(din, cfg.rank, dout, cfg.alpha,
                                        axes=lin.kernel.get_metadata()["out_sharding"],
                                        dtype=model.compute_dtype, rngs=rngs))
    return model


def _is_var(x) -> bool:
    return isinstance(x, nnx.Variable)


def has_lora(state) -> bool:
    """Whether a model state (or any pytree of nnx Variables) holds LoRA adapter variables."""
    return any(isinstance(v, nnx.LoRAParam) for v in jax.tree.leaves(state, is_leaf=_is_var))


def split_trainable(state) -> tuple[nnx.State, nnx.State]:
    """(trainable, frozen) parts of a model state: the adapters and everything else when the
    model has adapters, else every parameter and nothing. `nnx.merge_state` joins them again."""
    if has_lora(state):
        return nnx.split_state(state, nnx.LoRAParam, ...)
    return nnx.split_state(state, nnx.Param, ...)


def reference_state(params, adapters=None):
    """A KL reference built on the frozen base arrays of the state `params` (no copy): the base
    alone (for the graph of `base_model`) when `adapters` is None, else the base with `adapters`
    (the trainable part of an earlier state, for the policy's graph)."""
    frozen = split_trainable(params)[1]
    return frozen if adapters is None else nnx.merge_state(adapters, frozen)


def base_model(model: Transformer) -> Transformer:
    """The model with its adapters off: a copy without them that holds the very same base arrays
    (no second copy of the weights), e.g. the KL reference of a LoRA policy."""
    base = nnx.clone(model)
    for _name, lin in projections(base).values():
        _detach(lin)
    return base


def _detach(lin: Linear) -> None:
    # Static, as a Linear built without an adapter holds it: the graph is then a plain model's.
    lin.lora = nnx.static(None)


def merge_lora(model: Transformer) -> Transformer:
    """A copy of the model without adapters whose kernels hold W + (alpha / r) A B: the same
    function as the adapted model, as one ordinary set of weights (the model itself is unchanged)."""
    merged = nnx.clone(model)
    for _name, lin in projections(merged).values():
        if lin.lora is None:
            continue
        ad = lin.lora
        # HIGHEST: a GPU's default fp32 matmul is TF32, which would round the merged update.
        delta = jnp.matmul(ad.lora_a[...], ad.lora_b[...], precision=jax.lax.Precision.HIGHEST)
        kernel = lin.kernel[...]
        lin.kernel.set_value((kernel + (ad.alpha / ad.rank) * delta).astype(kernel.dtype))
        _detach(lin)
    return merged


def export_peft_adapter(model: Transformer, folder: str | Path,
                        base_model_name_or_path: str | None = None) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` that `peft` loads onto the
    transformers model of the base weights (`PeftModel.from_pretrained(base, folder)`).

    PEFT names one rank, alpha and set of target names for the whole model, so every layer must
    carry adapters on the same projections with the same rank and alpha.
    """
    adapted: dict[str, set[str]] = {}
    shapes = set()
    tensors = {}
    for path, (name, lin) in projections(model).items():
        layer = path.split(".")[2]
        adapted.setdefault(layer, set())
        if lin.lora is None:
            continue
        adapted[layer].add(name)
        shapes.add((lin.lora.rank, lin.lora.alpha))
        # PEFT's lora_A / lora_B are torch Linears: weights [r, in] and [out, r].
        for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            arr = np.asarray(jax.device_get(getattr(lin.lora, ours)[...]), dtype=np.float32)
            tensors[f"base_model.model.{path}.{theirs}.weight"] = np.ascontiguousarray(arr.T)
    if not tensors:
        raise ValueError("the model has no LoRA adapters to export")
    targets = {frozenset(v) for v in adapted.values()}
    if len(targets) != 1 or len(shapes) != 1:
        raise ValueError(f"PEFT needs the same adapted projections, rank and alpha in every layer; "
                         f"got projections {sorted(sorted(t) for t in targets)} and (rank, alpha) "
                         f"{sorted(shapes)}")
    [(rank, alpha)] = shapes
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "lora_dropout": 0.0, "target_modules": sorted(next(iter(targets))), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder
