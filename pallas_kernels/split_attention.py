"""Prompt-once split attention for training: a dense reference, an XLA path and fused Pallas kernels.

A group is one prompt (P tokens, true length plen[b] ≥ 1) and G completions (R tokens each, true
length clen[b, g] in [0, R]). Prompt queries attend causally to the prompt; completion query (g, r)
attends to every real prompt key (shared, non-causal) and causally to its own sample's keys. This
is exactly dense causal attention over each replicated sequence prompt[:plen] ++ completion_g, but
the prompt's keys, values and their gradients are computed once per group instead of G times.

All three functions share one signature:

    fn(q_p, k_p, v_p, q_c, k_c, v_c, prompt_len, comp_len, *, sm_scale=None, ...) -> (o_p, o_c)

with q_p [B,P,H,D], k_p/v_p [B,P,K,D], q_c [B,G,R,H,D], k_c/v_c [B,G,R,K,D], prompt_len [B],
comp_len [B,G]; query head h reads kv head h // (H // K). Every query row sees at least prompt
key 0, so outputs are finite everywhere, padded rows included.

The Pallas kernels fold the H // K query heads that share a kv head into the query rows (row =
token * (H // K) + head), so each K/V tile is read once for all of them. Masks come from iota
positions and the lengths; key blocks that are causally or length-masked for a whole query block
are skipped. The same kernel bodies lower through Triton (GPU) and Mosaic (TPU); the backward
kernels live in `split_attention_bwd.py`.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels import lse_merge
from pallas_kernels.lse_merge import KERNEL_DOT_PRECISION, NEG_INF


def _default_scale(head_dim, sm_scale):
    return 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)


@functools.partial(jax.jit, static_argnames=("sm_scale",))
def split_attention_reference(q_p, k_p, v_p, q_c, k_c, v_c, prompt_len, comp_len, *, sm_scale=None):
    """Ground truth: one dense masked softmax over [prompt ++ all G completions], in fp32."""
    B, P, H, D = q_p.shape
    _, G, R, _, _ = q_c.shape
    K = k_p.shape[2]
    scale = _default_scale(D, sm_scale)
    f32 = jnp.float32
    q_BxTxHxD = jnp.concatenate([q_p, q_c.reshape(B, G * R, H, D)], axis=1).astype(f32)
    k_BxTxKxD = jnp.concatenate([k_p, k_c.reshape(B, G * R, K, D)], axis=1).astype(f32)
    v_BxTxKxD = jnp.concatenate([v_p, v_c.reshape(B, G * R, K, D)], axis=1).astype(f32)
    k_BxTxHxD = jnp.repeat(k_BxTxKxD, H // K, axis=2)
    v_BxTxHxD = jnp.repeat(v_BxTxKxD, H // K, axis=2)

    # Per token: segment (-1 = prompt, g = completion g) and position inside its segment.
    seg_T = jnp.concatenate([jnp.full((P,), -1), jnp.repeat(jnp.arange(G), R)])
    pos_T = jnp.concatenate([jnp.arange(P), jnp.tile(jnp.arange(R), G)])
    plen_Bx1x1 = prompt_len.astype(jnp.int32)[:, None, None]
    clen_BxT = jnp.take_along_axis(
        comp_len.astype(jnp.int32),
        jnp.broadcast_to(jnp.maximum(seg_T, 0)[None, :], (B, P + G * R)),
        axis=1,
    )
    sq, sk = seg_T[None, :, None], seg_T[None, None, :]
    pq, pk = pos_T[None, :, None], pos_T[None, None, :]
    key_is_prompt = sk == -1
    prompt_key_ok = key_is_prompt & (pk < plen_Bx1x1) & ((sq != -1) | (pk <= pq))
    own_key_ok = (~key_is_prompt) & (sq == sk) & (pk <= pq) & (pk < clen_BxT[:, None, :])
    mask_BxTxT = prompt_key_ok | own_key_ok

    s_BxHxTxT = jnp.einsum("bqhd,bkhd->bhqk", q_BxTxHxD, k_BxTxHxD) * scale
    s_BxHxTxT = jnp.where(mask_BxTxT[:, None], s_BxHxTxT, -jnp.inf)
    p_BxHxTxT = jax.nn.softmax(s_BxHxTxT, axis=-1)
    o_BxTxHxD = jnp.einsum("bhqk,bkhd->bqhd", p_BxHxTxT, v_BxTxHxD).astype(q_p.dtype)
    return o_BxTxHxD[:, :P], o_BxTxHxD[:, P:].reshape(B, G, R, H, D)


def _masked_softmax(s, mask):
    """Softmax over the last axis with a boolean mask; returns (probabilities, log-sum-exp)."""
    s = jnp.where(mask, s, NEG_INF)
    m = lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    e = jnp.exp(s - m)
    l = jnp.sum(e, axis=-1, keepdims=True)
    return e / l, (m + jnp.log(l))[..., 0]


@functools.partial(jax.jit, static_argnames=("sm_scale",))
def split_attention_xla(q_p, k_p, v_p, q_c, k_c, v_c, prompt_len, comp_len, *, sm_scale=None):
    """Efficient XLA path: prompt K/V read once per group, GQA without repeating K/V, LSE merge."""
    B, P, H, D = q_p.shape
    _, G, R, _, _ = q_c.shape
    K = k_p.shape[2]
    hg = H // K
    scale = _default_scale(D, sm_scale)
    f32 = jnp.float32
    plen_B = prompt_len.astype(jnp.int32)
    clen_BxG = comp_len.astype(jnp.int32)
    q_BxPxKxJxD = q_p.reshape(B, P, K, hg, D)
    q_BxGxRxKxJxD = q_c.reshape(B, G, R, K, hg, D)

    # Probabilities stay fp32 in the PV products (v is upcast): with bf16 inputs, rounding p to
    # bf16 would dominate the log-prob error against the replicated baseline.
    # Prompt queries: causal over the prompt, masked by its true length.
    i_P = jnp.arange(P)
    s_BxKxJxPxP = jnp.einsum("bikjd,bpkd->bkjip", q_BxPxKxJxD, k_p, preferred_element_type=f32)
    mask_BxPxP = (i_P[None, None, :] <= i_P[None, :, None]) & (
        i_P[None, None, :] < plen_B[:, None, None]
    )
    p_pp, _ = _masked_softmax(s_BxKxJxPxP * scale, mask_BxPxP[:, None, None])
    o_p = jnp.einsum("bkjip,bpkd->bikjd", p_pp, v_p.astype(f32), preferred_element_type=f32)
    o_p = o_p.reshape(B, P, H, D).astype(q_p.dtype)

    # Completion queries of the whole group against the shared prompt K/V in one contraction.
    s_BxGxRxKxJxP = jnp.einsum(
        "bgrkjd,bpkd->bgrkjp", q_BxGxRxKxJxD, k_p, preferred_element_type=f32
    )
    mask_Bx1x1x1x1xP = (i_P[None, :] < plen_B[:, None])[:, None, None, None, None, :]
    p_cp, lse_cp = _masked_softmax(s_BxGxRxKxJxP * scale, mask_Bx1x1x1x1xP)
    o_cp = jnp.einsum(
        "bgrkjp,bpkd->bgrkjd", p_cp, v_p.astype(f32), preferred_element_type=f32
    )

    # Completion queries against their own sample's keys, causal and masked by clen.
    i_R = jnp.arange(R)
    s_BxGxRxKxJxR = jnp.einsum(
        "bgrkjd,bgskd->bgrkjs", q_BxGxRxKxJxD, k_c, preferred_element_type=f32
    )
    causal_RxR = i_R[None, :] <= i_R[:, None]
    mask_BxGxRxR = causal_RxR[None, None] & (i_R[None, None, None, :] < clen_BxG[:, :, None, None])
    p_cc, lse_cc = _masked_softmax(s_BxGxRxKxJxR * scale, mask_BxGxRxR[:, :, :, None, None, :])
    o_cc = jnp.einsum(
        "bgrkjs,bgskd->bgrkjd", p_cc, v_c.astype(f32), preferred_element_type=f32
    )

    o_c, _ = lse_merge.merge_attention(o_cp, lse_cp, o_cc, lse_cc)
    return o_p, o_c.reshape(B, G, R, H, D).astype(q_c.dtype)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the Pallas kernels (powers of two ≥ 16).

    Query blocks count rows of one kv head, i.e. tokens × (H // K) query heads; key blocks count
    tokens.
    """

    # Forward: query rows per program and keys per inner-loop step.
    block_q: int = 64
    block_k: int = 64
    # Backward dQ kernels.
    block_q_dq: int = 64
    block_k_dq: int = 64
    # Backward dK/dV kernels: keys per program and query rows per inner-loop step.
    block_q_dkv: int = 64
    block_k_dkv: int = 64
    # Triton launch parameters (warps, pipeline stages) per kernel kind; ignored elsewhere. The
    # dK/dV kernels hold two fp32 accumulators per key block: at 4 warps they spill on sm_90.
    launch_fwd: tuple[int, int] = (4, 2)
    launch_dq: tuple[int, int] = (4, 2)
    launch_dkv: tuple[int, int] = (8, 2)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("launch_"):
                warps, stages = value
                if warps not in (1, 2, 4, 8, 16) or stages < 1:
                    raise ValueError(f"{field.name}={value}: warps must be a power of two ≤ 16 "
                                     "and stages ≥ 1")
            elif value < 16 or value & (value - 1):
                raise ValueError(f"{field.name}={value} must be a power of two ≥ 16")

    @classmethod
    def for_inputs(cls, dtype, head_dim: int) -> "BlockSizes":
        """Defaults that compile on sm_90 without spills: 64-token tiles, or 32-token tiles for
        fp32 inputs whose padded head dim is ≥ 128 (their fp32 tiles exhaust the registers)."""
        padded = max(16, pl.next_power_of_2(head_dim))
        if jnp.dtype(dtype).itemsize >= 4 and padded >= 128:
            return cls(32, 32, 32, 32, 32, 32)
        return cls()

    @property
    def query_blocks(self):
        """Query block sizes of the forward, dQ and dK/dV kernels."""
        return (self.block_q, self.block_q_dq, self.block_q_dkv)

    @property
    def key_blocks(self):
        """Key block sizes of the forward, dQ and dK/dV kernels."""
        return (self.block_k, self.block_k_dq, self.block_k_dkv)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static facts every kernel of one call needs (hashable, passed as a nondiff argument)."""

    sm_scale: float
    block_sizes: BlockSizes
    interpret: bool
    heads_per_kv: int  # H // K, folded into the query rows
    num_samples: int  # G
    prompt_tokens: int  # true (unpadded) P; rows beyond it carry zero cotangents
    comp_tokens: int  # true (unpadded) R
    padded_prompt: int
    padded_comp: int


def _cdiv(a, b):
    return lax.div(a + b - 1, b)


def _dot(a, b, dims):
    return lax.dot_general(a, b, (dims, ((), ())), precision=KERNEL_DOT_PRECISION,
                           preferred_element_type=jnp.float32)


def _dot_nt(a, b):
    """a [m, d] · b [n, d]ᵀ in fp32."""
    return _dot(a, b, ((1,), (1,)))


def _dot_nn(a, b):
    """a [m, n] · b [n, d] in fp32."""
    return _dot(a, b, ((1,), (0,)))


def _dot_tn(a, b):
    """a [m, n]ᵀ · b [m, d] in fp32."""
    return _dot(a, b, ((0,), (0,)))


def _pallas_call(kernel, *, cfg, launch, **kwargs):
    """pl.pallas_call with per-backend compiler parameters (Triton on GPU, Mosaic on TPU).

    The kernels are backend-neutral; only the compiler parameters differ, so the backend is
    picked at lowering time. `launch` is the kernel's (num_warps, num_stages) for Triton.
    """
    if cfg.interpret:
        return pl.pallas_call(kernel, interpret=True, **kwargs)
    from jax.experimental.pallas import tpu as pltpu
    from jax.experimental.pallas import triton as plgpu

    num_warps, num_stages = launch
    gpu_call = pl.pallas_call(
        kernel,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        **kwargs,
    )
    tpu_call = pl.pallas_call(
        kernel,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * 3),
        **kwargs,
    )
    return lambda *args: lax.platform_dependent(*args, tpu=tpu_call, default=gpu_call)


def _row_positions(row_start, block_rows, heads_per_kv):
    """Token position of each query row in a block (rows interleave the query heads of a kv head)."""
    return lax.div(row_start + jnp.arange(block_rows, dtype=jnp.int32), heads_per_kv)


def _stream_keys(carry, q, k_ref, v_ref, num_blocks, block_k, visible, sm_scale):
    """Online-softmax accumulation of q over key blocks [0, num_blocks) of k_ref/v_ref.

    visible(key_pos [1, block_k]) -> bool mask [block_q, block_k].
    """

    def body(j, carry):
        acc, m, l = carry
        k = k_ref[pl.ds(j * block_k, block_k), :]
        v = v_ref[pl.ds(j * block_k, block_k), :]
        key_pos = j * block_k + jnp.arange(block_k, dtype=jnp.int32)[None, :]
        s = jnp.where(visible(key_pos), _dot_nt(q, k) * sm_scale, NEG_INF)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[:, None])
        l_new = alpha * l + jnp.sum(p, axis=1)
        acc_new = alpha[:, None] * acc + _dot_nn(p.astype(v.dtype), v)
        return acc_new, m_new, l_new

    return lax.fori_loop(0, num_blocks, body, carry)


def _lengths_spec(lengths):
    """The whole (tiny) length array for every program; kernels index it with their program ids.

    Scalar memory on TPU (scalar reads from vector memory do not lower); Triton ignores it.
    """
    from jax.experimental.pallas import tpu as pltpu

    return pl.BlockSpec(lengths.shape, lambda *_: (0,) * lengths.ndim, memory_space=pltpu.SMEM)


def _prompt_len(plen_ref):
    return plen_ref[pl.program_id(0)]


def _comp_len(clen_ref, blocks_per_sample):
    """Length of the completion that grid axis 2 (blocks_per_sample blocks per sample) is in."""
    return clen_ref[pl.program_id(0), lax.div(pl.program_id(2), blocks_per_sample)]


def _init_state(block_rows, head_dim):
    return (
        jnp.zeros((block_rows, head_dim), jnp.float32),
        jnp.full((block_rows,), NEG_INF, jnp.float32),
        jnp.zeros((block_rows,), jnp.float32),
    )


def _fwd_prompt_kernel(plen_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, cfg):
    block_q, head_dim = q_ref.shape
    block_k = cfg.block_sizes.block_k
    row_start = pl.program_id(2) * block_q
    plen = _prompt_len(plen_ref)
    q_pos = _row_positions(row_start, block_q, cfg.heads_per_kv)[:, None]
    last_pos = lax.div(row_start + block_q - 1, cfg.heads_per_kv)
    # Key blocks past the block's last causal position or past the prompt length are all masked.
    num_blocks = jnp.minimum(_cdiv(last_pos + 1, block_k), _cdiv(plen, block_k))
    acc, m, l = _stream_keys(
        _init_state(block_q, head_dim),
        q_ref[...],
        k_ref,
        v_ref,
        num_blocks,
        block_k,
        lambda key_pos: (key_pos <= q_pos) & (key_pos < plen),
        cfg.sm_scale,
    )
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[0, :] = m + jnp.log(l)


def _fwd_comp_kernel(
    plen_ref, clen_ref, q_ref, kp_ref, vp_ref, kc_ref, vc_ref, o_ref, lse_ref, *, cfg
):
    block_q, head_dim = q_ref.shape
    block_k = cfg.block_sizes.block_k
    rows_per_sample = cfg.padded_comp * cfg.heads_per_kv
    # Row offset inside this block's completion sample.
    row_start = lax.rem(pl.program_id(2) * block_q, rows_per_sample)
    plen = _prompt_len(plen_ref)
    clen = _comp_len(clen_ref, rows_per_sample // block_q)
    q = q_ref[...]
    carry = _init_state(block_q, head_dim)
    carry = _stream_keys(
        carry,
        q,
        kp_ref,
        vp_ref,
        _cdiv(plen, block_k),
        block_k,
        lambda key_pos: jnp.broadcast_to(key_pos < plen, (block_q, block_k)),
        cfg.sm_scale,
    )
    r_pos = _row_positions(row_start, block_q, cfg.heads_per_kv)[:, None]
    last_pos = lax.div(row_start + block_q - 1, cfg.heads_per_kv)
    num_own = jnp.minimum(_cdiv(last_pos + 1, block_k), _cdiv(clen, block_k))
    acc, m, l = _stream_keys(
        carry,
        q,
        kc_ref,
        vc_ref,
        num_own,
        block_k,
        lambda key_pos: (key_pos <= r_pos) & (key_pos < clen),
        cfg.sm_scale,
    )
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[0, :] = m + jnp.log(l)


def _forward(qp, kp, vp, qc, kc, vc, plen, clen, cfg):
    """Kernel-layout forward: q [B,K,rows,D], k/v [B,K,tokens,D]; returns (o_p, o_c, lse_p, lse_c)."""
    B, K, Np, Dp = qp.shape
    Nc = qc.shape[2]
    Pp, Rp = cfg.padded_prompt, cfg.padded_comp
    bq = cfg.block_sizes.block_q
    blocks_per_sample = Rp * cfg.heads_per_kv // bq
    f32 = jnp.float32
    q_block = pl.BlockSpec((None, None, bq, Dp), lambda b, k, i: (b, k, i, 0))
    lse_block = pl.BlockSpec((None, None, 1, bq), lambda b, k, i: (b, k, 0, i))
    prompt_kv = pl.BlockSpec((None, None, Pp, Dp), lambda b, k, i: (b, k, 0, 0))

    o_p, lse_p = _pallas_call(
        functools.partial(_fwd_prompt_kernel, cfg=cfg),
        cfg=cfg,
        launch=cfg.block_sizes.launch_fwd,
        grid=(B, K, Np // bq),
        in_specs=[_lengths_spec(plen), q_block, prompt_kv, prompt_kv],
        out_specs=[q_block, lse_block],
        out_shape=[
            jax.ShapeDtypeStruct(qp.shape, qp.dtype),
            jax.ShapeDtypeStruct((B, K, 1, Np), f32),
        ],
        name="split_attention_fwd_prompt",
    )(plen, qp, kp, vp)

    own_kv = pl.BlockSpec(
        (None, None, Rp, Dp), lambda b, k, i: (b, k, lax.div(i, blocks_per_sample), 0)
    )
    o_c, lse_c = _pallas_call(
        functools.partial(_fwd_comp_kernel, cfg=cfg),
        cfg=cfg,
        launch=cfg.block_sizes.launch_fwd,
        grid=(B, K, Nc // bq),
        in_specs=[
            _lengths_spec(plen),
            _lengths_spec(clen),
            q_block,
            prompt_kv,
            prompt_kv,
            own_kv,
            own_kv,
        ],
        out_specs=[q_block, lse_block],
        out_shape=[
            jax.ShapeDtypeStruct(qc.shape, qc.dtype),
            jax.ShapeDtypeStruct((B, K, 1, Nc), f32),
        ],
        name="split_attention_fwd_completion",
    )(plen, clen, qc, kp, vp, kc, vc)
    return o_p, o_c, lse_p, lse_c


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _fused(qp, kp, vp, qc, kc, vc, plen, clen, cfg):
    o_p, o_c, _, _ = _forward(qp, kp, vp, qc, kc, vc, plen, clen, cfg)
    return o_p, o_c


def _fused_fwd(qp, kp, vp, qc, kc, vc, plen, clen, cfg):
    o_p, o_c, lse_p, lse_c = _forward(qp, kp, vp, qc, kc, vc, plen, clen, cfg)
    return (o_p, o_c), (qp, kp, vp, qc, kc, vc, plen, clen, o_p, o_c, lse_p, lse_c)


def _fused_bwd(cfg, residuals, cotangents):
    # Imported late: the backward module builds on this module's kernel helpers.
    from pallas_kernels import split_attention_bwd

    return split_attention_bwd.backward(cfg, residuals, cotangents)


_fused.defvjp(_fused_fwd, _fused_bwd)


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _padded_tokens(n, block_sizes, heads_per_kv):
    """Smallest length ≥ n whose token count divides into key blocks and whose rows divide into
    query blocks."""
    multiple = max(
        max(block_sizes.key_blocks),
        max(bq // math.gcd(bq, heads_per_kv) for bq in block_sizes.query_blocks),
    )
    return _round_up(n, multiple)


@functools.partial(jax.jit, static_argnames=("sm_scale", "block_sizes", "interpret"))
def split_attention(
    q_p,
    k_p,
    v_p,
    q_c,
    k_c,
    v_c,
    prompt_len,
    comp_len,
    *,
    sm_scale=None,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
):
    """Fused Pallas split attention: flash-style forward and backward kernels under `jax.custom_vjp`.

    P and R need not be multiples of the block sizes and D need not be a power of two: inputs
    are zero-padded here and outputs sliced back. Lengths are clamped to [.., P] and [0, R] so
    the kernels never read past the padded arrays. block_sizes None picks
    `BlockSizes.for_inputs(q dtype, D)`. `interpret=True` runs the kernels on CPU;
    otherwise they lower through Triton (GPU) or Mosaic (TPU; use 128-row query blocks there).
    """
    B, P, H, D = q_p.shape
    _, G, R, _, _ = q_c.shape
    K = k_p.shape[2]
    if H % K:
        raise ValueError(f"query heads {H} must be a multiple of kv heads {K}")
    hg = H // K
    if block_sizes is None:
        block_sizes = BlockSizes.for_inputs(q_p.dtype, D)
    Pp = _padded_tokens(P, block_sizes, hg)
    Rp = _padded_tokens(R, block_sizes, hg)
    # Triton dots need power-of-two tiles of at least 16; zero padding leaves scores unchanged.
    Dp = max(16, pl.next_power_of_2(D))
    cfg = KernelConfig(
        sm_scale=_default_scale(D, sm_scale),
        block_sizes=block_sizes,
        interpret=interpret,
        heads_per_kv=hg,
        num_samples=G,
        prompt_tokens=P,
        comp_tokens=R,
        padded_prompt=Pp,
        padded_comp=Rp,
    )

    def pad(x, axis, new):
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, new - x.shape[axis])
        widths[-1] = (0, Dp - D)
        return jnp.pad(x, widths)

    # Kernel layout: [B, K, tokens × (H // K), D] queries, [B, K, tokens, D] keys and values.
    qp = (
        pad(q_p, 1, Pp)
        .reshape(B, Pp, K, hg, Dp)
        .transpose(0, 2, 1, 3, 4)
        .reshape(B, K, Pp * hg, Dp)
    )
    kp, vp = (pad(x, 1, Pp).transpose(0, 2, 1, 3) for x in (k_p, v_p))
    qc = pad(q_c, 2, Rp).reshape(B, G, Rp, K, hg, Dp).transpose(0, 3, 1, 2, 4, 5)
    qc = qc.reshape(B, K, G * Rp * hg, Dp)
    kc, vc = (pad(x, 2, Rp).transpose(0, 3, 1, 2, 4).reshape(B, K, G * Rp, Dp) for x in (k_c, v_c))

    plen = jnp.minimum(prompt_len.astype(jnp.int32), P)
    clen = jnp.clip(comp_len.astype(jnp.int32), 0, R)
    o_p, o_c = _fused(qp, kp, vp, qc, kc, vc, plen, clen, cfg)
    o_p = o_p.reshape(B, K, Pp, hg, Dp).transpose(0, 2, 1, 3, 4).reshape(B, Pp, H, Dp)[:, :P, :, :D]
    o_c = o_c.reshape(B, K, G, Rp, hg, Dp).transpose(0, 2, 3, 1, 4, 5).reshape(B, G, Rp, H, Dp)
    return o_p, o_c[:, :, :R, :, :D]
