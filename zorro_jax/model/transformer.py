"""Decoder-only transformer (Llama / Qwen2 / Qwen3) in Flax NNX, layout-agnostic.

The model never knows which token layout it runs on: position-wise layers are mapped over a
pytree of token blocks (one array of rows for `Dense` and `PackedTree`, prompt and suffix blocks
in the sampler's caches) and attention is delegated to an `attend(layer, q, k, v)` callback built
by the layout code in
`zorro_jax.model.forward`. Parameters carry logical axis names for the sharding rules.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from zorro_jax.model.config import REMAT_POLICIES, ModelConfig

_INIT_STD = 0.02


def _bcast(w, x):
    """Reshape a trailing-axis vector so it broadcasts against x without rank promotion."""
    return w.reshape((1,) * (x.ndim - w.ndim) + w.shape).astype(x.dtype)


def _param(rngs: nnx.Rngs, shape, axes, dtype, *, std=_INIT_STD, ones=False,
           zeros=False) -> nnx.Param:
    if ones:
        value = jnp.ones(shape, dtype)
    elif zeros:
        value = jnp.zeros(shape, dtype)
    else:
        # Drawn in float32 and rounded, so a bf16 model is the rounded fp32 model of the same seed.
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    # eager_sharding=False: modules build without a mesh; shardings are derived from the
    # logical names by zorro_jax.parallel when a mesh is in use.
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Linear(nnx.Module):
    """y = x @ kernel (+ bias) (+ a LoRA adapter's term); kernel [in, out] stored in `dtype`,
    computed in the input's dtype."""

    def __init__(self, din: int, dout: int, axes, *, bias: bool, rngs: nnx.Rngs,
                 dtype="float32"):
        self.kernel = _param(rngs, (din, dout), axes, dtype)
        self.bias = _param(rngs, (dout,), axes[1:], dtype, zeros=True) if bias else None
        # A low-rank adapter (zorro_jax.model.lora.Adapter) added to the output when attached.
        self.lora = None

    def __call__(self, x):
        y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + _bcast(self.bias[...], y)
        if self.lora is not None:
            y = y + self.lora(x)
        return y


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm with a learned scale, computed in float32."""

    def __init__(self, dim: int, eps: float, axis_name: str | None, *, rngs: nnx.Rngs,
                 dtype="float32"):
        self.weight = _param(rngs, (dim,), (axis_name,), dtype, ones=True)
        self.eps = eps

    def __call__(self, x):
        # Scaled in float32 and rounded once to x's dtype (XLA fuses it: no float32 copy is stored).
        x32 = x.astype(jnp.float32)
        var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        return (_bcast(self.weight[...].astype(jnp.float32), y) * y).astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jnp.ndarray:
    """Inverse frequencies [head_dim // 2], with llama3 wavelength-dependent scaling if set."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if cfg.rope_type == "llama3":
        # Llama 3.1 scaling: long wavelengths divided by `factor`, short ones kept, a linear blend
        # in between (by old_context / wavelength).
        old_ctx = cfg.rope_original_max_position
        low_wl = old_ctx / cfg.rope_low_freq_factor
        high_wl = old_ctx / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > low_wl, inv / cfg.rope_factor, inv)
        smooth = (old_ctx / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor
        )
        blended = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = (wavelen >= high_wl) & (wavelen <= low_wl)
        inv = jnp.where(medium, blended, scaled)
    return inv


def apply_rope(x_xTxHxD, pos_xT, inv_freq):
    """Rotate-half RoPE; x [..., T, H, D], positions [..., T] (true positions, not padded ones).
    Rotated in float32 and rounded once to x's dtype."""
    ang = pos_xT.astype(jnp.float32)[..., None] * _bcast(inv_freq, pos_xT[..., None].astype(jnp.float32))
    ang = jnp.concatenate([ang, ang], axis=-1)[..., None, :]  # [..., T, 1, D]
    x32 = x_xTxHxD.astype(jnp.float32)
    half = x32.shape[-1] // 2
    rot = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(ang) + rot * jnp.sin(ang)).astype(x_xTxHxD.dtype)


class Attention(nnx.Module):
    """Q/K/V/O projections (GQA, optional bias and q/k norm); the attention itself is the `attend`
    callback of the layout.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        h, k, d, e = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        pd = cfg.param_dtype
        self.q_proj = Linear(e, h * d, ("embed", "heads"), bias=cfg.qkv_bias, rngs=rngs, dtype=pd)
        kv_axes = ("embed", "kv_heads")
        self.k_proj = Linear(e, k * d, kv_axes, bias=cfg.qkv_bias, rngs=rngs, dtype=pd)
        self.v_proj = Linear(e, k * d, kv_axes, bias=cfg.qkv_bias, rngs=rngs, dtype=pd)
        self.o_proj = Linear(h * d, e, ("heads", "embed"), bias=cfg.o_bias, rngs=rngs, dtype=pd)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, None, rngs=rngs, dtype=pd)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, None, rngs=rngs, dtype=pd)
        else:
            self.q_norm = self.k_norm = None
        self.heads, self.kv_heads, self.head_dim = h, k, d

    def project(self, x, pos, inv_freq):
        """Position-wise part for one block: x [..., T, E] -> q [..., T, H, D], k/v [..., T, K, D]."""
        lead = x.shape[:-1]
        q = self.q_proj(x).reshape(*lead, self.heads, self.head_dim)
        k = self.k_proj(x).reshape(*lead, self.kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(*lead, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, pos, inv_freq), apply_rope(k, pos, inv_freq), v

    def output(self, o):
        """Merge heads [..., H, D] and apply the output projection."""
        return self.o_proj(o.reshape(*o.shape[:-2], self.heads * self.head_dim))


class MLP(nnx.Module):
    """The gated SiLU feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, f, b, pd = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, cfg.param_dtype
        self.gate_proj = Linear(e, f, ("embed", "mlp"), bias=b, rngs=rngs, dtype=pd)
        self.up_proj = Linear(e, f, ("embed", "mlp"), bias=b, rngs=rngs, dtype=pd)
        self.down_proj = Linear(f, e, ("mlp", "embed"), bias=b, rngs=rngs, dtype=pd)

    def __call__(self, x):
        # The gate computed in float32 and rounded once (a fused elementwise op).
        g32, u32 = self.gate_proj(x).astype(jnp.float32), self.up_proj(x).astype(jnp.float32)
        return self.down_proj((jax.nn.silu(g32) * u32).astype(x.dtype))


class Block(nnx.Module):
    """One pre-norm decoder layer: attention and MLP with residuals, mapped over the layout's blocks
    of tokens.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, eps, pd = cfg.hidden_size, cfg.rms_norm_eps, cfg.param_dtype
        self.input_layernorm = RMSNorm(e, eps, "embed", rngs=rngs, dtype=pd)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(e, eps, "embed", rngs=rngs, dtype=pd)
        self.mlp = MLP(cfg, rngs=rngs)
        self.compute_dtype = jnp.dtype(cfg.compute_dtype)

    def __call__(self, x_tree, pos_tree, inv_freq, attend):
        """x_tree: the float32 residual stream; the norms' outputs enter the matmuls in the compute
        dtype and the sublayers' outputs are added back in float32."""
        cd = self.compute_dtype
        h_tree = jax.tree.map(lambda x: self.input_layernorm(x).astype(cd), x_tree)
        qkv = jax.tree.map(lambda h, p: self.self_attn.project(h, p, inv_freq), h_tree, pos_tree)
        is_triple = lambda t: isinstance(t, tuple) and len(t) == 3 and hasattr(t[0], "shape")
        q_tree = jax.tree.map(lambda t: t[0], qkv, is_leaf=is_triple)
        k_tree = jax.tree.map(lambda t: t[1], qkv, is_leaf=is_triple)
        v_tree = jax.tree.map(lambda t: t[2], qkv, is_leaf=is_triple)
        o_tree = attend(q_tree, k_tree, v_tree)
        # o in the compute dtype (what every layout's attention returns; a no-op then): every
        # Linear's input is, which lets a scan round their weights before stacking them.
        attn_out = lambda x, o: x + self.self_attn.output(o.astype(cd)).astype(x.dtype)
        x_tree = jax.tree.map(attn_out, x_tree, o_tree)
        mlp = lambda x: self.mlp(self.post_attention_layernorm(x).astype(cd)).astype(x.dtype)
        return jax.tree.map(lambda x: x + mlp(x), x_tree)


def _layer_fn(inv_freq, attend):
    """layer(x, pos) with the RoPE table and attention callback closed over (what nnx.remat
    traces: its arguments must all be arrays or modules)."""
    return lambda layer, x_tree, pos_tree: layer(x_tree, pos_tree, inv_freq, attend)


def _layer_state(layer, compute_dtype):
    """(graphdef, state) of one layer, each `Linear`'s kernel and bias rounded to the compute dtype.

    A Linear only ever uses its weights rounded to its input's dtype, and `Block` feeds every
    Linear (adapters included) in the compute dtype, so rounding before the stack is exact
    (forward and gradient: the rounding's transpose casts the gradient back). With bf16 compute
    on float32 master weights it halves the stacked copy and spares the scan saving each layer's
    rounded weights for the backward: 200 MiB less temp at SmolLM2-135M's shape on XLA:CPU
    (which keeps the stacked gradient accumulators in float32 all the same).
    """
    linears = {path for path, m in nnx.iter_modules(layer) if isinstance(m, Linear)}
    rounded = lambda path, _: path[:-1] in linears and path[-1] in ("kernel", "bias")
    graphdef, weights, rest = nnx.split(layer, rounded, ...)
    weights = jax.tree.map(lambda w: w.astype(compute_dtype), weights)
    return graphdef, nnx.merge_state(weights, rest)


def stack_layers(layers, compute_dtype):
    """(graphdef, state with a leading [L] axis on every leaf) of identically structured layers.

    The stored model keeps one module per layer (the parameter paths HF loading, LoRA, the
    sharding rules and checkpoints rely on); the stack is a copy made inside the traced forward,
    so its gradient is unstacked back onto the per-layer parameters by `jnp.stack`'s transpose.
    """
    graphdef, first = _layer_state(layers[0], compute_dtype)
    states = [first]
    for i, layer in enumerate(layers[1:], start=1):
        gd, state = _layer_state(layer, compute_dtype)
        if gd != graphdef:
            # e.g. LoRA adapters on some layers only: one scan body cannot run both structures.
            raise ValueError(f"scan_layers needs identically structured layers; layer {i} differs "
                             "from layer 0")
        states.append(state)
    return graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states)


class Transformer(nnx.Module):
    """The decoder. `hidden(tokens_tree, pos_tree, attend)` -> final-normed hidden states."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        pd = cfg.param_dtype
        self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pd)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, "embed", rngs=rngs, dtype=pd)
        if cfg.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), pd)

    @property
    def compute_dtype(self):
        """The dtype activations are computed in."""
        return jnp.dtype(self.config.compute_dtype)

    def embed(self, tokens):
        """Token ids [...] -> embeddings [..., E]: the residual stream, float32 in every compute
        dtype. Rounding it to bf16 at each residual add costs 2^-9 of its scale, which every
        RMSNorm scales back up to unit size: on a tiny model that alone moved log-probs by
        ~1.4e-3 (the fp32 residual brings bf16 compute to ~5e-4 of fp32)."""
        return jnp.take(self.embed_tokens[...], tokens, axis=0).astype(jnp.float32)

    def unembedding(self):
        """The output projection as [E, V] (transposed embedding when tied)."""
        w = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
        return w.astype(self.compute_dtype)

    def hidden(self, tokens_tree, pos_tree, attend, remat: str = "none", scan: bool = False):
        """attend(layer_index, q_tree, k_tree, v_tree) -> o_tree, implemented per layout."""
        return self.hidden_from_embeddings(jax.tree.map(self.embed, tokens_tree), pos_tree, attend,
                                           remat, scan)

    def hidden_from_embeddings(self, x_tree, pos_tree, attend, remat: str = "none",
                               scan: bool = False):
        """Run every layer on a pytree of embeddings with matching position pytree; `attend(layer,
        q, k, v)` does the attention for the layout. Returns final-normed hidden states in the
        compute dtype.

        remat (see ModelConfig.remat) and scan (ModelConfig.scan_layers) apply only to a pure
        `attend`: the training layouts pass the config's settings; cache-writing steps (prefill,
        decode) keep "none" and the Python loop. Under scan, `attend` gets the layer index as a
        traced int32 scalar instead of a Python int.
        """
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")
        inv_freq = rope_inv_freq(self.config)
        if scan:
            x_tree = self._scan(x_tree, pos_tree, inv_freq, attend, remat)
        else:
            for i, layer in enumerate(self.layers):
                attend_i = lambda q, k, v, i=i: attend(i, q, k, v)
                if remat == "attention":
                    attend_i = jax.checkpoint(attend_i)
                if remat == "block":
                    x_tree = nnx.remat(_layer_fn(inv_freq, attend_i))(layer, x_tree, pos_tree)
                else:
                    x_tree = layer(x_tree, pos_tree, inv_freq, attend_i)
        return jax.tree.map(lambda x: self.norm(x).astype(self.compute_dtype), x_tree)

    def _scan(self, x_tree, pos_tree, inv_freq, attend, remat):
        """The layers as one `lax.scan` over their stacked states: one layer is traced and compiled
        once whatever the depth, and the loop carries only the residual stream."""
        graphdef, stacked = stack_layers(self.layers, self.compute_dtype)

        def body(x_tree, xs):
            i, state = xs
            attend_i = lambda q, k, v: attend(i, q, k, v)
            if remat == "attention":
                attend_i = jax.checkpoint(attend_i)
            return nnx.merge(graphdef, state)(x_tree, pos_tree, inv_freq, attend_i), None

        if remat == "block":
            # The body's inputs are the carry and this layer's slice of the stacked state (already
            # stored): only the residual stream entering each layer is saved for the backward.
            policy = None
        else:
            # A scan saves its body's residuals as JAX names them: every float32 upcast and
            # elementwise intermediate (1.27x the loop's temp bytes at SmolLM2's shape), where
            # the unrolled loop's XLA fusions recompute them from the matmul outputs. Saving the
            # matmul outputs only does the same explicitly (0.83x the loop's there).
            policy = jax.checkpoint_policies.dots_saveable
        # prevent_cse=False: the scan already keeps the recomputation from being merged away.
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
        index_L = jnp.arange(len(self.layers), dtype=jnp.int32)
        x_tree, _ = jax.lax.scan(body, x_tree, (index_L, stacked))
        return x_tree

    def logits(self, h):
        """Hidden states [..., E] -> float32 logits [..., V] (accumulated in float32: a bf16 logit
        of magnitude 40 would be off by up to 0.08)."""
        return jnp.einsum("...e,ev->...v", h, self.unembedding(), preferred_element_type=jnp.float32)


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model (normal(0, 0.02) weights, unit norms)."""
    return Transformer(cfg, rngs=nnx.Rngs(params=seed))
