"""Per-device memory of the sharded steps for a 1.1B- or 1.5B-parameter model on a simulated
8-device mesh.

    python -m experiments.memory_table [--model llama-1.1b | qwen2.5-1.5b] [--preset ci]
        [--train-meshes D,F,T ...] [--sample-meshes D,F,T ...] [--layer-loops scan unrolled]
        [--json PATH]

Compile only: parameters, optimizer state and batch are abstract (jax.ShapeDtypeStruct with
shardings), nothing is allocated. Figures are XLA's `compiled.memory_analysis()` per device:
arguments, outputs, temporaries, and the bytes of outputs aliased to donated arguments; beside
them the bytes the compiled program's collectives produce per device (all-gather, all-reduce,
reduce-scatter, all-to-all, collective-permute; a loop body counted once, as XLA's own cost
analysis does, so under `scan_layers` one layer's collectives stand for all of them). Rows: the training preset (one GRPO train step, grad + AdamW apply, with XLA tree
attention on a prompt-once `PackedTree` batch) on several (data, fsdp, tensor) meshes, and the
sampling preset (one shared-prefix decode step).

The training batch holds B groups of a P-token prompt and G completions of R tokens, one group per
packed row: N rows (B rounded up to a multiple of data × fsdp, so every batch array splits evenly)
of T = P + G·R tokens (rounded up to the attention tiles), the loss view [B, G, R]. Its block-list
widths M, pair-list length and loss-token list lengths are upper bounds for such rows (any
completion lengths up to R), so the figures bound a real micro-batch of this shape.

Models: "llama-1.1b" (vocab 32000, d_model 2048, 16 layers, 16 heads × 128, 8 kv heads, MLP
8192, untied embeddings: 1.14B parameters, 4.6 GB fp32; AdamW adds 9.1 GB) and "qwen2.5-1.5b"
(Qwen2.5-1.5B's architecture: vocab 151936, d_model 1536, 28 layers, 12 heads × 128, 2 kv heads,
MLP 8960, QKV bias, tied embeddings: 1.54B parameters).
"""

from __future__ import annotations

import os

# The simulated devices must exist before jax initialises.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

import argparse
import math
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.common import machine_note, write_json
from pallas_kernels.tree_blocks import TreeBlocks, coarse_bucket
from zorro_jax.attention import XLA_TREE_TILES
from zorro_jax.layouts import PackedTree
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.transformer import init_model
from zorro_jax.parallel import rules, steps
from zorro_jax.parallel.mesh import MeshConfig, batch_shards, check_batch, check_model
from zorro_jax.rl.losses import LossConfig
from zorro_jax.rl.optim import OptimConfig, make_optimizer
from zorro_jax.sampling.cache import SharedPrefixKVCache

TRAIN_MESHES = [(1, 8, 1), (1, 4, 2), (1, 2, 4)]
SAMPLE_MESHES = [(8, 1, 1), (2, 1, 4), (1, 1, 8)]
GIB = 2**30


MODELS = {
    "llama-1.1b": dict(model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=8192,
                       num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8, head_dim=128),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         head_dim=128, qkv_bias=True, tie_word_embeddings=True, rope_theta=1e6),
}


def model_config(name: str, compute_dtype: str, layers: int | None = None) -> ModelConfig:
    """One of MODELS, optionally with fewer layers (a quick check at the same width)."""
    kw = dict(MODELS[name], compute_dtype=compute_dtype)
    if layers is not None:
        kw["num_hidden_layers"] = layers
    return ModelConfig(**kw)


def shard_bytes(tree) -> int:
    """Bytes one device holds of an abstract tree, from each leaf's sharding."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


_COLLECTIVE = re.compile(r"=\s*(\(.*?\)|\S+)\s+(all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute)(-start)?\(")
_SHAPE = re.compile(r"(pred|[sfu](\d+)|bf(16))\[([\d,]*)\]")


def collective_bytes(hlo_text: str) -> int:
    """Bytes produced per device by the collectives of a compiled HLO module (the results of
    every all-gather, all-reduce, reduce-scatter, all-to-all and collective-permute; a loop body
    counted once)."""
    total = 0
    for line in hlo_text.splitlines():
        m = _COLLECTIVE.search(line)
        if m:
            for dtype, bits, bf_bits, dims in _SHAPE.findall(m.group(1)):
                bits = 8 if dtype == "pred" else int(bits or bf_bits)
                total += math.prod(int(d) for d in dims.split(",") if d) * bits // 8
    return total


def analyse(lowered) -> dict:
    t0 = time.perf_counter()
    compiled = lowered.compile()
    m = compiled.memory_analysis()
    return {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes),
            "collective_bytes": collective_bytes(compiled.as_text()),
            "compile_s": time.perf_counter() - t0}


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive ints."""
    return -(-a // b)


def packed_dims(shape, shards: int, tiles=XLA_TREE_TILES) -> dict:
    """Array sizes of a prompt-once `PackedTree` holding the B groups of shape (B, P, G, R), one
    group per row: N rows (B rounded up to a multiple of shards), T = P + G·R tokens rounded up to
    the tiles, and upper bounds on the block lists of such rows whatever the completion lengths
    (at most R each; the prompt at columns [0, P), completion g right after completion g-1).

    Per query block [qf, ql]: inside the prompt it is causal (key blocks up to ql); past the group
    it is padding (each token sees itself); otherwise its queries see the prompt and their own
    completion's earlier tokens, which start at or after max(P, qf - R + 1). Per key block [kf, kl]:
    its keys are seen by queries of the group (before P + G·R) and, as padding, by themselves.
    The list widths M are the largest per-block counts; the pair-list length is their sum over the
    query blocks, rounded up like `build_tree_blocks`. L, the flat loss-token list, holds B·G·R
    tokens (bucketed like the layout's, then rounded up to a multiple of shards); M_loss, a row's
    loss-token list, G·R (bucketed).
    """
    b, p, g, r = shape
    bq, bk = tiles
    n = cdiv(b, shards) * shards
    group = p + g * r
    t = cdiv(group, max(bq, bk)) * max(bq, bk)
    nq, nk = t // bq, t // bk
    kv_counts = []
    for qf in range(0, t, bq):
        ql = qf + bq - 1
        if ql < p:
            kv_counts.append(cdiv(ql + 1, bk))
        elif qf >= group:
            kv_counts.append(cdiv(bq, bk))
        else:
            lo = max(p, qf - r + 1)  # the earliest own-completion key of a query here
            shared = int(lo // bk == (p - 1) // bk)  # the prompt's last block holds it too
            kv_counts.append(cdiv(p, bk) + ql // bk - lo // bk + 1 - shared)
    q_counts = []
    for kf in range(0, t, bk):
        kl = kf + bk - 1
        last_q = max(group - 1 if kf < group else -1, kl if kl >= p else -1)
        q_counts.append(last_q // bq - kf // bq + 1)
    # The flat loss-token list: every sample full (B·G·R tokens), bucketed, split over the shards.
    n_loss = cdiv(coarse_bucket(b * g * r), shards) * shards
    return {"N": n, "T": t, "Q": nq, "K": nk, "M_kv": min(nk, max(kv_counts)),
            "M_q": min(nq, max(q_counts)), "pairs": coarse_bucket(sum(min(nk, c) for c in kv_counts)),
            "L": n_loss, "M_loss": coarse_bucket(g * r)}


def abstract_packed(shape, dims: dict, sds) -> PackedTree:
    """A `PackedTree` of abstract arrays (every field, the block lists too) of these sizes."""
    b, _p, g, r = shape
    n, t, nq, nk, m_kv, m_q, pairs, n_loss = (
        dims[k] for k in ("N", "T", "Q", "K", "M_kv", "M_q", "pairs", "L"))
    i32, bool_ = jnp.int32, jnp.bool_
    blocks = TreeBlocks(
        kv_index_NxQxM=sds((n, nq, m_kv), i32), kv_count_NxQ=sds((n, nq), i32),
        q_index_NxKxM=sds((n, nk, m_q), i32), q_count_NxK=sds((n, nk), i32),
        pair_q_NxP=sds((n, pairs), i32), pair_k_NxP=sds((n, pairs), i32),
        pair_live_NxP=sds((n, pairs), bool_),
    )
    return PackedTree(
        tokens_NxT=sds((n, t), i32), positions_NxT=sds((n, t), i32),
        subtree_end_NxT=sds((n, t), i32), prev_NxT=sds((n, t), i32), blocks=blocks,
        sample_row_BxG=sds((b, g), i32), sample_cols_BxGxR=sds((b, g, r), i32),
        sample_len_BxG=sds((b, g), i32),
        loss_row_L=sds((n_loss,), i32), loss_col_L=sds((n_loss,), i32),
        loss_live_L=sds((n_loss,), bool_), loss_index_BxGxR=sds((b, g, r), i32),
        row_loss_col_NxM=sds((n, dims["M_loss"]), i32), row_loss_live_NxM=sds((n, dims["M_loss"]), bool_),
        loss_slot_BxGxR=sds((b, g, r), i32),
    )


def train_row(cfg, graphdef, state, sizes, shape) -> dict:
    b, _p, g, r = shape
    mesh = MeshConfig(*sizes).make()
    check_model(mesh, cfg)
    check_batch(mesh, b)
    optimizer = make_optimizer(OptimConfig())
    sh = steps.step_shardings(mesh, state, "training", optimizer)
    params = rules.abstract_params(state, sh.params)
    opt_state = rules.abstract_params(jax.eval_shape(optimizer.init, state), sh.opt_state)
    # Rows over data × fsdp, the loss view replicated (`rules.packed_shardings`).
    batch = abstract_packed(shape, packed_dims(shape, batch_shards(mesh)), jax.ShapeDtypeStruct)
    batch = rules.abstract_params(batch, rules.expand_shardings(sh.packed, batch))
    sds = lambda s, dt: jax.ShapeDtypeStruct(s, dt, sharding=sh.replicated)
    per_token = sds((b, g, r), jnp.float32)
    step = steps.make_train_step(graphdef, optimizer, LossConfig(), sh, impl="xla")
    lowered = step.lower(params, opt_state, batch, per_token, sds((b, g), jnp.float32), per_token,
                         sds((), jnp.float32))
    return {"preset": "training", "mesh": sizes, "params_bytes": shard_bytes(params),
            "opt_state_bytes": shard_bytes(opt_state), "cache_bytes": 0, **analyse(lowered)}


def decode_row(cfg, graphdef, state, sizes, shape) -> dict:
    b, p, g, s = shape
    mesh = MeshConfig(*sizes).make()
    check_model(mesh, cfg)
    check_batch(mesh, b)
    sh = steps.step_shardings(mesh, state, "sampling")
    params = rules.abstract_params(state, sh.params)
    cache = SharedPrefixKVCache.abstract(cfg, [(b, b, p)], g, s)
    cache = rules.abstract_params(cache, steps.cache_shardings(mesh))
    tok = jax.ShapeDtypeStruct((b, g), jnp.int32, sharding=sh.batch)
    live = jax.ShapeDtypeStruct((b, g), jnp.bool_, sharding=sh.batch)
    lowered = steps.make_decode_step(graphdef, sh, impl="xla").lower(params, cache, tok, live)
    return {"preset": "sampling", "mesh": sizes, "params_bytes": shard_bytes(params),
            "opt_state_bytes": 0, "cache_bytes": shard_bytes(cache), **analyse(lowered)}


def print_row(row):
    gib = lambda k: f"{row[k] / GIB:7.2f}"
    print(f"{row['preset']:>8} {row.get('layer_loop', ''):>8} {tuple(row['mesh'])!s:>10} | {gib('params_bytes')} {gib('opt_state_bytes')} "
          f"{gib('cache_bytes')} | {gib('argument_bytes')} {gib('output_bytes')} {gib('alias_bytes')} "
          f"{gib('temp_bytes')} | {gib('collective_bytes')} | {row['compile_s']:6.1f}", flush=True)


def mesh_sizes(text: str) -> tuple[int, int, int]:
    """'1,8,1' -> (1, 8, 1)."""
    sizes = tuple(int(x) for x in text.split(","))
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(f"a mesh is data,fsdp,tensor (three sizes), got {text!r}")
    return sizes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="llama-1.1b", help="architecture")
    ap.add_argument("--preset", choices=["full", "ci"], default="full",
                    help="ci: 2 layers and one mesh per preset (a quick check of the script)")
    ap.add_argument("--compute-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="activation / matmul dtype (params and optimizer state are fp32)")
    ap.add_argument("--train-meshes", nargs="*", type=mesh_sizes, default=None,
                    help="(data, fsdp, tensor) meshes of the training rows (default: the preset's)")
    ap.add_argument("--sample-meshes", nargs="*", type=mesh_sizes, default=None,
                    help="meshes of the decode rows (default: the preset's; none: no decode rows)")
    ap.add_argument("--layer-loops", nargs="+", choices=["scan", "unrolled"], default=["scan"],
                    help="training rows with the layers under one lax.scan (ModelConfig.scan_layers, "
                         "the default) and / or as a Python loop")
    ap.add_argument("--json", default=None, help="write all figures to this path")
    args = ap.parse_args(argv)
    if jax.device_count() != 8:
        raise SystemExit(f"needs 8 (simulated) devices, found {jax.device_count()}; XLA_FLAGS was set "
                         "before this script could set it")
    ci = args.preset == "ci"
    cfg = model_config(args.model, args.compute_dtype, 2 if ci else None)
    train_meshes = args.train_meshes if args.train_meshes is not None else (
        TRAIN_MESHES[1:2] if ci else TRAIN_MESHES)
    sample_meshes = args.sample_meshes if args.sample_meshes is not None else (
        SAMPLE_MESHES[1:2] if ci else SAMPLE_MESHES)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: init_model(cfg)))
    n_params = sum(x.size for x in jax.tree.leaves(state))
    train_shape, decode_shape = (8, 512, 8, 256), (8, 512, 8, 256)
    print(f"per-device memory, {machine_note()}, 8 simulated devices (compile only)")
    print(f"model: {args.model}, {n_params / 1e9:.2f}B params (d {cfg.hidden_size}, {cfg.num_hidden_layers} "
          f"layers, {cfg.num_attention_heads} heads, {cfg.num_key_value_heads} kv heads, MLP "
          f"{cfg.intermediate_size}, vocab {cfg.vocab_size}), fp32 params, {cfg.compute_dtype} compute")
    dims = packed_dims(train_shape, 8)
    print("training: GRPO train step (grad + AdamW), prompt-once PackedTree B={} P={} G={} R={}".format(
        *train_shape) + f" (one group a row: N={dims['N']} x T={dims['T']}, XLA tree attention "
        f"{XLA_TREE_TILES} tiles, {dims['pairs']} block pairs a row)")
    print("sampling: one shared-prefix decode step, B={} P={} G={} suffix S={}".format(*decode_shape))
    print(f"{'preset':>8} {'layers':>8} {'mesh d,f,t':>10} | {'params':>7} {'opt':>7} {'kvcache':>7} | {'args':>7} "
          f"{'outputs':>7} {'aliased':>7} {'temp':>7} | {'collect':>7} | compile s   (GiB per device)")
    rows = []
    for loop in args.layer_loops:
        loop_cfg = cfg.replace(scan_layers=loop == "scan")
        loop_graphdef, _ = nnx.split(nnx.eval_shape(lambda c=loop_cfg: init_model(c)))
        for sizes in train_meshes:
            rows.append({**train_row(loop_cfg, loop_graphdef, state, sizes, train_shape), "layer_loop": loop})
            print_row(rows[-1])
    for sizes in sample_meshes:
        rows.append(decode_row(cfg, graphdef, state, sizes, decode_shape))
        print_row(rows[-1])
    payload = {"machine": machine_note(), "model": args.model, "params": int(n_params),
               "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
               "compute_dtype": cfg.compute_dtype, "train_shape_BPGR": train_shape,
               "decode_shape_BPGS": decode_shape, "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
