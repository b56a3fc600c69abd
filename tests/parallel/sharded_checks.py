"""Multi-device checks, run in a subprocess with 8 simulated CPU devices.

`python tests/parallel/sharded_checks.py CHECK` sets XLA_FLAGS before jax starts (pytest's
conftest has already initialised jax in the parent process) and exits non-zero on failure.
"""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pallas_kernels import shared_prefix_decode as spd
from pallas_kernels import suffix_decode as sd
from pallas_kernels import tree_attention_pallas as tap
from zorro_jax.model.config import ModelConfig
from zorro_jax.model.transformer import init_model
from zorro_jax.parallel import kernels, rules, steps
from zorro_jax.parallel.mesh import MeshConfig
from zorro_jax.rl.batches import PackingConfig, pack_groups, tiles_for
from zorro_jax.rl.losses import LossConfig, loss_normaliser
from zorro_jax.rl.optim import OptimConfig, make_optimizer
from zorro_jax.rl.steps import make_apply_fn, make_grpo_grad_fn, make_logprob_fn
from zorro_jax.sampling.cache import shared_prefix_step
from zorro_jax.sampling.sampler import (
    PromptTree,
    SamplerConfig,
    generate,
    pack_levels,
    shared_prefill,
)

MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 1, 8)]
RTOL = 1e-5


def tiny_config(**kw) -> ModelConfig:
    base = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 8}
    return ModelConfig(**{**base, **kw})


def grpo_inputs(cfg: ModelConfig, b=8, g=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(b):
        prompt = rng.integers(1, cfg.vocab_size, rng.integers(3, 12)).tolist()
        comps = [rng.integers(1, cfg.vocab_size, rng.integers(1, 9)).tolist() for _ in range(g)]
        groups.append((prompt, comps))
    # All 8 groups in one micro-batch of 8 rows (divisible by every mesh's data × fsdp), tiles
    # the Pallas kernel accepts (the XLA path takes any).
    [mb] = pack_groups(groups, mode="prompt_once", tiles=tiles_for(cfg, "pallas"),
                       cfg=PackingConfig(token_budget=64, rows_per_micro_batch=8), loss_width=8)
    batch = mb.packed
    mask = batch.sample_mask()
    old = jnp.where(mask, -jnp.asarray(rng.uniform(4.0, 7.0, mask.shape), jnp.float32), 0.0)
    adv = jnp.asarray(rng.normal(size=(b, g)), jnp.float32)
    return batch, old, adv, old


def assert_close(name, got, want, rtol=RTOL):
    """Per-array relative check: |got - want| <= rtol · max|want| elementwise (and rtol·|want|)."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(np.max(np.abs(b)), 1e-30)
        err = np.max(np.abs(a - b)) / scale
        if os.environ.get("ZORRO_SHOW_ERRORS"):
            print(f"  {name}{jax.tree_util.keystr(path)}: {err:.2e}")
        if not err <= rtol:
            raise AssertionError(f"{name}{jax.tree_util.keystr(path)}: relative error {err:.3g} > {rtol}")


def check_train():
    cfg = tiny_config()
    loss_cfg = LossConfig()
    # AdamW as in rl.optim but with eps above the fp32 rounding noise of the gradients (~1e-9
    # here): with optax's default eps=1e-8, a gradient element of 5e-9 turns a 1e-9 difference in
    # summation order (any two programs, sharded or not) into a 20 % difference of its update
    # g / (|g| + eps). The gradients themselves are compared at the same tolerance.
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.adamw(1e-4, eps=1e-5, weight_decay=0.01))
    graphdef, params0 = nnx.split(init_model(cfg, seed=0))
    batch, old, adv, ref = grpo_inputs(cfg)
    norm = loss_normaliser(batch.sample_mask(), loss_cfg)

    # One device, no mesh: the plain single-device steps of the training loop.
    grad_fn = make_grpo_grad_fn(graphdef, loss_cfg, "xla")
    loss, _, grads = grad_fn(params0, batch, old, adv, ref, norm)
    new_params, new_opt, gnorm, finite = make_apply_fn(optimizer)(params0, optimizer.init(params0), grads)
    assert bool(finite) and abs(float(loss)) > 0
    want = jax.device_get((loss, gnorm, grads, new_params, new_opt))
    lp_after = jax.device_get(make_logprob_fn(graphdef, "xla")(new_params, batch))

    for sizes in MESHES:
        mesh = MeshConfig(*sizes).make()
        sh = steps.step_shardings(mesh, params0, "training", optimizer)
        params = jax.device_put(jax.tree.map(jnp.copy, params0), sh.params)
        opt_state = jax.device_put(optimizer.init(params0), sh.opt_state)
        s_loss, _, s_grads = steps.make_grad_step(graphdef, loss_cfg, sh, impl="xla")(
            params, batch, old, adv, ref, norm)
        step = steps.make_train_step(graphdef, optimizer, loss_cfg, sh, impl="xla")
        s_params, s_opt, loss2, _, s_gnorm, s_finite = step(params, opt_state, batch, old, adv, ref, norm)
        assert bool(s_finite)
        assert params["embed_tokens"][...].is_deleted(), "params were not donated"
        got = jax.device_get((loss2, s_gnorm, s_grads, s_params, s_opt))
        for name, a, b in zip(("loss", "grad_norm", "grads", "params", "opt_state"), got, want):
            assert_close(f"{sizes} {name}", a, b)
        assert_close(f"{sizes} grad-step loss", s_loss, loss)
        s_lp, s_ent = steps.make_logprob_step(graphdef, sh, impl="xla")(s_params, batch)
        assert_close(f"{sizes} logprobs", (s_lp, s_ent), lp_after)
        # The updated state comes back with the declared shardings (ready for the next step).
        for x, s in zip(jax.tree.leaves(s_params) + jax.tree.leaves(s_opt),
                        jax.tree.leaves(sh.params) + jax.tree.leaves(sh.opt_state)):
            assert x.sharding.is_equivalent_to(s, x.ndim), (sizes, x.sharding, s)
        print(f"train {sizes}: ok")


def check_memory():
    cfg = tiny_config()
    optimizer = make_optimizer(OptimConfig())
    _, params0 = nnx.split(init_model(cfg, seed=0))
    for sizes in MESHES:
        mesh = MeshConfig(*sizes).make()
        sh = steps.step_shardings(mesh, params0, "training", optimizer)
        params = jax.device_put(params0, sh.params)
        opt_state = jax.device_put(optimizer.init(params0), sh.opt_state)
        split = sizes[1] * sizes[2]
        for name, tree in (("params", params), ("opt_state", opt_state)):
            total = rules.total_bytes(tree)
            vectors = sum(x.nbytes for x in jax.tree.leaves(tree) if x.ndim == 1)
            scalars = sum(x.nbytes for x in jax.tree.leaves(tree) if x.ndim == 0)
            per_dev = rules.per_device_bytes(tree)
            assert len(per_dev) == 8
            # Matrices split over fsdp × tensor; the 1-D norm weights ("embed") over fsdp only;
            # the optimizer's step counts are replicated.
            want = (total - vectors - scalars) // split + vectors // sizes[1] + scalars
            for dev, nbytes in per_dev.items():
                assert nbytes == want, (sizes, name, dev, nbytes, want)
                assert total / split <= nbytes <= 1.05 * total / split, (sizes, name, nbytes, total)
        sampling = rules.shard_params(params, mesh, "sampling")
        for dev, nbytes in rules.per_device_bytes(sampling).items():
            # Sampling: only the tensor axis splits; the 1-D norm weights ("embed") replicate.
            norms = sum(x.nbytes for x in jax.tree.leaves(params0) if x.ndim == 1)
            assert nbytes == (rules.total_bytes(params0) - norms) // sizes[2] + norms, (sizes, nbytes)
        print(f"memory {sizes}: ok")


def check_rows():
    """The sharded gradient step keeps a device's activations to its own rows: on meshes with
    data × fsdp = 8, an 8-row batch's step needs at most twice the XLA temporaries of the
    single-device step on one of its rows (the gathered weights and full-size gradient buffers
    are the rest). Before the residual stream and the LM head followed the rows, XLA split the
    hidden width instead and kept every row on every device: 3.5× on (8, 1, 1), 6.1× on (1, 8, 1).
    """
    from experiments.memory_table import abstract_packed, packed_dims

    cfg = tiny_config(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_attention_heads=4,
                      num_key_value_heads=4, head_dim=64)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: init_model(cfg)))
    sds, f32 = jax.ShapeDtypeStruct, jnp.float32

    def inputs(shape, shards):
        b, _, g, r = shape
        per_sample = (sds((b, g, r), f32), sds((b, g), f32), sds((b, g, r), f32), sds((), f32))
        return abstract_packed(shape, packed_dims(shape, shards), sds), per_sample

    def temp_bytes(lowered):
        return lowered.compile().memory_analysis().temp_size_in_bytes

    batch, per_sample = inputs((1, 128, 4, 64), 1)
    one_row = temp_bytes(make_grpo_grad_fn(graphdef, LossConfig(), "xla").lower(state, batch, *per_sample))
    batch, per_sample = inputs((8, 128, 4, 64), 8)
    for sizes in [(8, 1, 1), (1, 8, 1), (2, 4, 1)]:
        sh = steps.step_shardings(MeshConfig(*sizes).make(), state, "training")
        placed = lambda tree, shardings: rules.abstract_params(tree, rules.expand_shardings(shardings, tree))
        lowered = steps.make_grad_step(graphdef, LossConfig(), sh, impl="xla").lower(
            rules.abstract_params(state, sh.params), placed(batch, sh.packed),
            *(placed(x, sh.replicated) for x in per_sample))
        ratio = temp_bytes(lowered) / one_row
        assert ratio <= 2, (sizes, ratio)
        print(f"rows {sizes}: ok ({ratio:.2f}× one row on one device)")


def check_generate(meshes=((2, 2, 2), (1, 2, 4), (4, 2, 1))):
    cfg = tiny_config(num_key_value_heads=4, num_attention_heads=8)
    model = init_model(cfg, seed=1)
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, cfg.vocab_size, rng.integers(2, 14)).tolist() for _ in range(6)]
    scfg = SamplerConfig(max_new_tokens=12, greedy=True, eos_token_ids=(5,), prompt_buckets=(16,),
                         response_buckets=(16,), attention_impl="xla")
    key = jax.random.key(0)
    want = generate(model, prompts, 3, scfg, key, mode="shared")
    # Three roots with two questions each: padded to four roots on a (2, 2, 2) mesh.
    tree = PromptTree(prompts[:3], [[p[:3], p[3:] or [7]] for p in prompts[3:]])
    want_tree = generate(model, tree, 3, scfg, key, mode="shared")
    for sizes in meshes:
        mesh = MeshConfig(*sizes).make()
        sharded = nnx.merge(graphdef, rules.shard_params(state, mesh, "sampling"))
        got = steps.generate_sharded(sharded, prompts, 3, scfg, key, mesh)
        np.testing.assert_array_equal(got.tokens_BxGxR, want.tokens_BxGxR)
        np.testing.assert_array_equal(got.lengths_BxG, want.lengths_BxG)
        assert got.completions == want.completions
        assert_close(f"{sizes} logp", got.logp_BxGxR, want.logp_BxGxR)
        if sizes == (2, 2, 2):
            got = steps.generate_sharded(sharded, tree, 3, scfg, key, mesh)
            np.testing.assert_array_equal(got.tokens_BxGxR, want_tree.tokens_BxGxR)
            assert got.completions == want_tree.completions
            assert got.kv_cache_bytes == want_tree.kv_cache_bytes
            assert_close(f"{sizes} tree logp", got.logp_BxGxR, want_tree.logp_BxGxR)

        # One decode step with declared shardings == the sampler's step on one device.
        cache, tok0, _ = shared_prefill(graphdef, state, pack_levels(prompts[:4], scfg), key,
                                        spec=scfg.draw_spec(), group_size=3, response_size=16)
        live = jnp.ones(tok0.shape, bool)
        h, want_cache = shared_prefix_step(model, cache, tok0[:, :, None], live.astype(jnp.int32), "xla")
        want_logits = model.logits(h[:, :, 0])
        sh = steps.step_shardings(mesh, state, "sampling")
        step = steps.make_decode_step(graphdef, sh, impl="xla")
        if 4 % (sizes[0] * sizes[1]) == 0:
            placed = jax.device_put(cache, steps.cache_shardings(mesh))
            tok, logits, new_cache = step(rules.shard_params(state, mesh, "sampling"), placed, tok0, live)
            assert_close(f"{sizes} decode logits", logits, want_logits)
            assert_close(f"{sizes} decode cache", new_cache, want_cache)
            np.testing.assert_array_equal(tok, jnp.argmax(want_logits, axis=-1))
        print(f"generate {sizes}: ok")


def check_kernels(meshes=((2, 2, 1), (1, 2, 4))):
    rng = np.random.default_rng(0)
    b, p, h, k, d = 4, 16, 8, 4, 16
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    groups = [(rng.integers(1, 50, n), [rng.integers(1, 50, m) for m in rng.integers(0, 9, 2)])
              for n in (16, 5, 9, 1)]
    [mb] = pack_groups(groups, mode="prompt_once", tiles=(16, 16),
                       cfg=PackingConfig(token_budget=16, rows_per_micro_batch=4))
    tree = mb.packed
    n, t = tree.tokens_NxT.shape
    q, kk, v = f(n, t, h, d), f(n, t, k, d), f(n, t, k, d)
    want = tap.tree_attention(q, kk, v, tree.subtree_end_NxT, tree.blocks, interpret=True)
    k_p, v_p = f(b, p, k, d), f(b, p, k, d)
    plen = jnp.asarray([16, 5, 9, 1], jnp.int32)
    q_d = f(b, 2, 1, h, d)
    want_d = spd.shared_prefix_attention(q_d, k_p, v_p, plen, interpret=True)
    # Per-row key windows (a packed level): every window inside the 16 keys.
    w_start, w_len = (jnp.asarray(rng.integers(lo, 9, (b, 2)), jnp.int32) for lo in (0, 1))
    want_w = spd.shared_prefix_attention(q_d, k_p, v_p, w_len, w_start, interpret=True)
    q_s, k_s, v_s = f(b, 2, 3, h, d), f(b, 2, 8, k, d), f(b, 2, 8, k, d)
    q_start = jnp.asarray([[0, 5], [2, 1], [5, 0], [3, 4]], jnp.int32)
    want_s = sd.suffix_attention_pallas(q_s, k_s, v_s, q_start, interpret=True)
    loss = lambda fn: lambda *a: jnp.sum(fn(*a) ** 2)
    tree_fn = lambda *a: tap.tree_attention(*a, tree.subtree_end_NxT, tree.blocks, interpret=True)
    want_grads = jax.grad(loss(tree_fn), argnums=(0, 1, 2))(q, kk, v)

    for sizes in meshes:
        mesh = MeshConfig(*sizes).make(jax.devices()[: int(np.prod(sizes))])
        sharded = lambda *a, m=mesh: kernels.tree_attention_sharded(
            m, *a, tree.subtree_end_NxT, tree.blocks, interpret=True)
        got = sharded(q, kk, v)
        assert_close(f"{sizes} tree_attention", got, want)
        assert got.sharding.spec == kernels.prompt_spec(), got.sharding
        got_d = kernels.shared_prefix_attention_sharded(mesh, q_d, k_p, v_p, plen, interpret=True)
        assert_close(f"{sizes} shared_prefix_attention", got_d, want_d)
        got_w = kernels.shared_prefix_attention_sharded(mesh, q_d, k_p, v_p, w_len, w_start,
                                                        interpret=True)
        assert_close(f"{sizes} shared_prefix_attention with key windows", got_w, want_w)
        got_s = kernels.suffix_attention_sharded(mesh, q_s, k_s, v_s, q_start, interpret=True)
        assert_close(f"{sizes} suffix_attention", got_s, want_s)
        # The fused backward (a prompt's dK/dV summed over its samples) runs per device too.
        assert_close(f"{sizes} tree_attention grads",
                     jax.grad(loss(sharded), argnums=(0, 1, 2))(q, kk, v), want_grads)
        print(f"kernels {sizes}: ok")

    mesh = MeshConfig(1, 1, 8).make()
    try:
        kernels.tree_attention_sharded(mesh, q, kk, v, tree.subtree_end_NxT, tree.blocks,
                                       interpret=True)
    except ValueError as e:
        assert "kv heads (4)" in str(e) and "tensor axis (8)" in str(e), e
    else:
        raise AssertionError("kv heads not divisible by the tensor axis must be rejected")
    print("kernels (1, 1, 8): rejected as expected")


def check_pallas_steps():
    """impl="pallas" in the sharded steps runs the kernels per device (shard_map in the program,
    no gather) and matches the single-device XLA computation: GRPO gradients, log-probs and one
    shared-prefix decode step."""
    cfg = tiny_config(num_key_value_heads=4)
    loss_cfg = LossConfig()
    graphdef, params0 = nnx.split(init_model(cfg, seed=0))
    batch, old, adv, ref = grpo_inputs(cfg)
    norm = loss_normaliser(batch.sample_mask(), loss_cfg)
    want_loss, _, want_grads = make_grpo_grad_fn(graphdef, loss_cfg, "xla")(
        params0, batch, old, adv, ref, norm)
    want_lp = make_logprob_fn(graphdef, "xla")(params0, batch)

    model = nnx.merge(graphdef, params0)
    scfg = SamplerConfig(max_new_tokens=8, greedy=True, prompt_buckets=(16,), response_buckets=(8,))
    rng = np.random.default_rng(5)
    prompts = [rng.integers(1, cfg.vocab_size, rng.integers(2, 14)).tolist() for _ in range(4)]
    # One level (a prompt per row) and a three-level cascade (4 roots, 2 questions each), whose
    # levels each split over data × fsdp and run the kernel per device.
    tree = PromptTree(prompts, [[p[:2], p[2:] or [7]] for p in prompts[::-1]])
    decode_inputs = []
    for source in (prompts, tree):
        cache, tok0, _ = shared_prefill(graphdef, params0, pack_levels(source, scfg), jax.random.key(0),
                                        spec=scfg.draw_spec(), group_size=2, response_size=8)
        live = jnp.ones(tok0.shape, bool)
        h, want_cache = shared_prefix_step(model, cache, tok0[:, :, None], live.astype(jnp.int32), "xla")
        decode_inputs.append((cache, tok0, live, model.logits(h[:, :, 0]), want_cache))

    for sizes in [(2, 2, 2), (1, 2, 4)]:
        mesh = MeshConfig(*sizes).make()
        sh = steps.step_shardings(mesh, params0, "training")
        params = jax.device_put(params0, sh.params)
        grad_step = steps.make_grad_step(graphdef, loss_cfg, sh, impl="pallas")
        jaxpr = str(jax.make_jaxpr(grad_step)(params, batch, old, adv, ref, norm))
        assert "shard_map" in jaxpr and "pallas_call" in jaxpr, "kernels not run per device"
        loss, _, grads = grad_step(params, batch, old, adv, ref, norm)
        assert_close(f"{sizes} pallas loss", loss, want_loss)
        assert_close(f"{sizes} pallas grads", grads, want_grads)
        lp = steps.make_logprob_step(graphdef, sh, impl="pallas")(params, batch)
        assert_close(f"{sizes} pallas logprobs", lp, want_lp)

        ssh = steps.step_shardings(mesh, params0, "sampling")
        sparams = rules.shard_params(params0, mesh, "sampling")
        # The three-level cascade on the first mesh only (each compile costs seconds).
        for cache, tok0, live, want_logits, want_cache in decode_inputs[: 2 if sizes == (2, 2, 2) else 1]:
            levels = len(cache.levels)
            decode = steps.make_decode_step(graphdef, ssh, impl="pallas", num_levels=levels)
            placed = jax.device_put(cache, steps.cache_shardings(mesh, levels))
            jaxpr = str(jax.make_jaxpr(decode)(sparams, placed, tok0, live))
            # Every level's kernel and the suffix kernel run per device in every layer.
            assert jaxpr.count("shard_map") >= (levels + 1) * cfg.num_hidden_layers, "gathered"
            placed = jax.device_put(cache, steps.cache_shardings(mesh, levels))
            _tok, logits, new_cache = decode(sparams, placed, tok0, live)
            assert_close(f"{sizes} {levels}-level pallas decode logits", logits, want_logits)
            assert_close(f"{sizes} {levels}-level pallas decode cache", new_cache, want_cache)
        if sizes == (2, 2, 2):
            # The sampler's jitted prefill and decode loop on the mesh run the kernels per device
            # too, and give the single-device XLA rollouts.
            pcfg = dataclasses.replace(scfg, attention_impl="pallas")
            want = generate(model, tree, 2, dataclasses.replace(scfg, attention_impl="xla"),
                            jax.random.key(1))
            got = steps.generate_sharded(nnx.merge(graphdef, sparams), tree, 2, pcfg,
                                         jax.random.key(1), mesh)
            np.testing.assert_array_equal(got.tokens_BxGxR, want.tokens_BxGxR)
            assert_close(f"{sizes} pallas rollout logp", got.logp_BxGxR, want.logp_BxGxR)
            spec = pcfg.draw_spec()._replace(impl=kernels.mesh_impl("pallas", mesh))
            prefill = lambda p, lv, spec=spec: shared_prefill(graphdef, p, lv, jax.random.key(1),
                                                              spec=spec, group_size=2, response_size=8)
            jaxpr = str(jax.make_jaxpr(prefill)(sparams, pack_levels(tree, scfg)))
            assert "shard_map" in jaxpr and "pallas_call" in jaxpr, "sampler gathered the kernels"
        print(f"pallas steps {sizes}: ok")


CHECKS = {"train": check_train, "memory": check_memory, "rows": check_rows, "generate": check_generate,
          "kernels": check_kernels, "pallas_steps": check_pallas_steps}

if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    # NAME runs a check on all its meshes, NAME@2,2,2/1,2,4 on those meshes only.
    for arg in sys.argv[1:] or CHECKS:
        name, _, only = arg.partition("@")
        CHECKS[name](**({"meshes": [tuple(map(int, m.split(","))) for m in only.split("/")]} if only else {}))
