"""Mesh validation, the rules tables and the multi-host helpers (single process, no devices needed)."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from zorro_jax.model.config import ModelConfig
from zorro_jax.model.transformer import init_model
from zorro_jax.parallel import distributed, rules
from zorro_jax.parallel.mesh import AXES, MeshConfig, check_batch, check_model
from zorro_jax.rl.optim import OptimConfig, make_optimizer


def mesh(data, fsdp, tensor):
    return AbstractMesh((data, fsdp, tensor), AXES)


def tiny(**kw):
    base = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8}
    return ModelConfig(**{**base, **kw})


def test_mesh_config_resolves_and_infers():
    assert MeshConfig(2, 2, 2).resolve(8) == (2, 2, 2)
    assert MeshConfig(data=2, fsdp=-1, tensor=2).resolve(8) == (2, 2, 2)
    assert MeshConfig(fsdp=1, tensor=-1).resolve(8) == (1, 1, 8)
    m = MeshConfig().make()
    assert m.axis_names == AXES and m.devices.size == jax.device_count()


@pytest.mark.parametrize("sizes, n, msg", [
    ((2, 2, 4), 8, "mesh data=2, fsdp=2, tensor=4 has 16 devices but 8 are available"),
    ((3, -1, 1), 8, "8 devices are not divisible by the product 3"),
])
def test_mesh_config_device_count_errors(sizes, n, msg):
    with pytest.raises(ValueError, match=msg):
        MeshConfig(*sizes).resolve(n)


def test_mesh_config_field_errors():
    with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
        MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="positive or -1"):
        MeshConfig(tensor=0)


def test_check_model_heads():
    check_model(mesh(1, 2, 4), tiny())
    with pytest.raises(ValueError, match=r"num_key_value_heads=4 not divisible by the tensor axis size 8"):
        check_model(mesh(1, 1, 8), tiny())
    with pytest.raises(ValueError, match=r"num_attention_heads=6 and num_key_value_heads=6 not divisible"):
        check_model(mesh(1, 2, 4), tiny(num_attention_heads=6, num_key_value_heads=6))


def test_check_batch():
    check_batch(mesh(2, 2, 2), 8)
    with pytest.raises(ValueError, match=r"batch of 6 rows / groups is not divisible by data × fsdp = 2 × 2 = 4"):
        check_batch(mesh(2, 2, 2), 6)


def test_rules_per_preset():
    m = mesh(1, 2, 4)
    assert rules.logical_to_spec(("vocab", "embed"), (256, 64), m, "training") == P("tensor", "fsdp")
    assert rules.logical_to_spec(("vocab", "embed"), (256, 64), m, "sampling") == P("tensor", None)
    assert rules.logical_to_spec(("heads", "embed"), (64, 64), m, "training") == P("tensor", "fsdp")
    assert rules.logical_to_spec((None,), (8,), m, "training") == P(None)
    with pytest.warns(UserWarning, match="not divisible by mesh axis 'tensor'"):
        assert rules.logical_to_spec(("embed", "mlp"), (64, 6), m, "training") == P("fsdp", None)
    with pytest.raises(ValueError, match="unknown sharding preset"):
        rules.logical_to_spec(("embed",), (64,), m, "inference")
    with pytest.raises(ValueError, match="logical axis 'experts' has no rule"):
        rules.logical_to_spec(("experts",), (64,), m, "training")


def test_param_specs_follow_metadata():
    _, state = nnx.split(nnx.eval_shape(lambda: init_model(tiny(qk_norm=True, model_type="qwen3"))))
    specs = rules.param_specs(state, mesh(1, 2, 4), "training")
    attn = specs["layers"][0]["self_attn"]
    assert attn["q_proj"]["kernel"].get_value() == P("fsdp", "tensor")
    assert attn["o_proj"]["kernel"].get_value() == P("tensor", "fsdp")
    assert attn["q_norm"]["weight"].get_value() == P(None)
    assert specs["embed_tokens"].get_value() == P("tensor", "fsdp")
    assert specs["lm_head"].get_value() == P("fsdp", "tensor")


def test_optimizer_state_follows_params():
    cfg = tiny()
    _, state = nnx.split(init_model(cfg))
    m = MeshConfig().make(jax.devices()[:1])
    opt = make_optimizer(OptimConfig())
    ps = rules.param_shardings(state, m, "training")
    os_ = rules.opt_state_shardings(opt, state, ps, m)
    placed = jax.device_put(opt.init(state), os_)
    mu = placed[1][0].mu
    assert mu["layers"][0]["mlp"]["down_proj"]["kernel"][...].sharding.spec == P("tensor", "fsdp")
    assert placed[1][0].count.sharding.spec == P()


def test_batch_shardings_lead_axis():
    m = mesh(2, 2, 2)
    tree = {"a": np.zeros((8, 3)), "s": np.float32(1.0)}
    sh = rules.batch_shardings(tree, m)
    assert sh["a"].spec == P(("data", "fsdp")) and sh["s"].spec == P()


def test_distributed_env():
    assert distributed.DistributedConfig.from_env({}) is None
    calls = []
    env = {"ZORRO_COORDINATOR": "10.0.0.1:1234", "ZORRO_NUM_PROCESSES": "4", "ZORRO_PROCESS_ID": "2",
           "ZORRO_LOCAL_DEVICE_IDS": "0,1"}
    assert distributed.maybe_initialize_distributed(env, initialize=lambda **kw: calls.append(kw))
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2,
                      "local_device_ids": (0, 1)}]
    assert not distributed.maybe_initialize_distributed({}, initialize=lambda **kw: calls.append(kw))
    with pytest.raises(ValueError, match="missing ZORRO_PROCESS_ID"):
        distributed.DistributedConfig.from_env({k: v for k, v in env.items() if k != "ZORRO_PROCESS_ID"})
    with pytest.raises(ValueError, match=r"ZORRO_PROCESS_ID must be in \[0, 4\)"):
        distributed.DistributedConfig.from_env({**env, "ZORRO_PROCESS_ID": "4"})


def test_host_shard_partitions_in_order():
    items = list(range(10))
    parts = [distributed.host_shard(items, i, 3) for i in range(3)]
    assert parts == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert distributed.host_shard(items) == items  # one process
    with pytest.raises(ValueError, match="process_index 3 not in"):
        distributed.host_shard(items, 3, 3)


def test_global_batch_single_host():
    m = MeshConfig().make(jax.devices()[:1])
    out = distributed.global_batch({"x": np.arange(6).reshape(3, 2)}, m)
    np.testing.assert_array_equal(np.asarray(out["x"]), np.arange(6).reshape(3, 2))
