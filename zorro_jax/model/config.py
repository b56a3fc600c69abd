"""Model configuration for the decoder-only families we support, built from Hugging Face config.json.

Covers Llama (incl. llama3 rope scaling), Qwen2 (QKV bias) and Qwen3 (q/k RMSNorm, explicit
head_dim). Both the older `rope_theta` + `rope_scaling` keys and the newer `rope_parameters`
dict are understood, and exported in the newer form.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
REMAT_POLICIES = ("none", "block", "attention")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama / Qwen2 / Qwen3 decoder, readable from and writable to a Hugging Face
    config.json.
    """

    # Family name as in Hugging Face's `model_type`.
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    # Per-head width; Qwen3 sets it explicitly, others derive hidden_size // heads.
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # "default" or "llama3"; the llama3 fields below are used only for "llama3".
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    # Bias on q/k/v projections (Qwen2 always; Llama/Qwen3 via `attention_bias`).
    qkv_bias: bool = False
    # Bias on the output projection (Llama's `attention_bias` covers o_proj too).
    o_bias: bool = False
    mlp_bias: bool = False
    # Qwen3: RMSNorm over head_dim on queries and keys before RoPE.
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # dtype of the matmuls and their activations; the residual stream, norms, attention softmax,
    # logits and log-probs are float32 whatever it is.
    compute_dtype: str = "float32"
    # dtype the parameters are stored in. Trained models keep float32 (fp32 master weights, cast
    # to compute_dtype at each matmul); bfloat16 halves the weights of models that are only run
    # (reference policy, evaluation, rollouts), and the optimiser refuses to train them.
    param_dtype: str = "float32"
    # Rematerialisation in the training forward (not exported): "none" keeps every activation for
    # the backward; "block" keeps only each layer's input and recomputes the layer; "attention"
    # recomputes the attention core only (its score tiles are the largest activations of the XLA
    # path; the Pallas kernels save only the log-sum-exp anyway).
    remat: str = "none"
    # Run the layers of the training forward (Dense / PackedTree log-probs and their gradients)
    # as one `lax.scan` over their stacked parameters instead of a Python loop (not exported).
    # At SmolLM2-135M's shape (30 layers, bf16 compute) it compiles in 0.78x the loop's time and
    # takes 0.83x its XLA temp bytes without remat; with remat "block", 0.58x and 0.26x of the
    # looped forward with block remat (experiments/bench_memory_real.py). The stored parameters
    # stay one module per layer; the stack is a copy made inside the step. Cache-writing steps
    # (prefill, decode) always loop. Off by default: on shallow models (the tests' and the
    # quickstart's, 1-4 layers) the scan made the GRPO micro-batch test 1.6x slower on CPU
    # (44 s vs 28 s), and it pays off with depth; turn it on for real models.
    scan_layers: bool = False

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"unsupported rope type {self.rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"compute_dtype must be float32, bfloat16 or float16, got {self.compute_dtype}")
        if self.param_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"param_dtype must be float32 or bfloat16, got {self.param_dtype}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")

    @property
    def q_per_kv(self) -> int:
        """Query heads per key/value head (the GQA group size)."""
        return self.num_attention_heads // self.num_key_value_heads

    def replace(self, **kw) -> ModelConfig:
        """A copy with the given fields changed."""
        return dataclasses.replace(self, **kw)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> ModelConfig:
        """Build from the dict of a Hugging Face config.json."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"only hidden_act='silu' is supported, got {d.get('hidden_act')!r}")
        if d.get("use_sliding_window"):
            raise ValueError("sliding-window attention (use_sliding_window=true) is not supported")
        rope = dict(d.get("rope_parameters") or {})
        legacy = d.get("rope_scaling") or {}
        for k, v in legacy.items():
            rope.setdefault(k, v)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        heads = d["num_attention_heads"]
        attention_bias = bool(d.get("attention_bias", False))
        eos = d.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        kw = dict(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_position=int(rope.get("original_max_position_embeddings", 8192)),
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=attention_bias if model_type == "llama" else False,
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=d.get("pad_token_id"),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides) -> ModelConfig:
        """Read `config.json` of a Hugging Face folder; `overrides` replace fields after parsing."""
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in {Path(folder).resolve()}")
        return cls.from_hf_dict(json.loads(path.read_text()), **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face config.json dict that `transformers` loads into the same model."""
        rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "llama3":
            rope.update(
                factor=self.rope_factor,
                low_freq_factor=self.rope_low_freq_factor,
                high_freq_factor=self.rope_high_freq_factor,
                original_max_position_embeddings=self.rope_original_max_position,
            )
        d: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        }
        if self.rope_type != "default":
            d["rope_scaling"] = rope
        if self.model_type == "llama":
            if self.qkv_bias != self.o_bias:
                raise ValueError("llama ties q/k/v and o biases (attention_bias); cannot export")
            d["attention_bias"] = self.qkv_bias
            d["mlp_bias"] = self.mlp_bias
        elif self.model_type == "qwen3":
            d["attention_bias"] = self.qkv_bias
        return d
