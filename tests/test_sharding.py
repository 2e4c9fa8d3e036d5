"""Mesh construction, the partition rules on the real model's shapes, batch and rollout placement."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from openrs_jax.core import sharding
from openrs_jax.core.grpo import UpdateConfig, abstract_train_state
from openrs_jax.core.model import Qwen2Config, abstract_model, tiny_config


def test_make_mesh_sizes_and_errors():
    mesh = sharding.make_mesh(None)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 1}
    assert dict(sharding.make_mesh("data=2,fsdp=-1").shape) == {"data": 2, "fsdp": 2, "tensor": 1}
    assert dict(sharding.make_mesh({"fsdp": 2, "tensor": 2}).shape) == {"data": 1, "fsdp": 2, "tensor": 2}
    assert sharding.data_parallel_size(sharding.make_mesh({"fsdp": 2, "tensor": 2})) == 2
    single = sharding.make_mesh(None, jax.devices()[:1])
    assert dict(single.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    for bad, match in [({"fsdp": 3}, "needs 3 devices"), ({"data": -1, "fsdp": -1}, "at most one"),
                       ({"pipeline": 2}, "unknown mesh axes"), ("fsdp:4", "name=size"), ({"fsdp": 0}, "positive")]:
        with pytest.raises(ValueError, match=match):
            sharding.make_mesh(bad)


def real_shapes() -> dict:
    """Parameter shapes of DeepSeek-R1-Distill-Qwen-1.5B (the config defaults), no memory."""
    return nnx.to_pure_dict(nnx.split(abstract_model(Qwen2Config()))[1])


def specs(tree, mesh, **kw) -> dict:
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): s.spec
        for path, s in jax.tree_util.tree_leaves_with_path(sharding.tree_shardings(tree, mesh, **kw))
    }


def test_fsdp_rules_on_real_shapes():
    """FSDP over 4 devices: each parameter's largest non-layer dimension is split."""
    got = specs(real_shapes(), sharding.make_mesh({"fsdp": 4}))
    assert got == {
        "embed_tokens": P("fsdp", None),  # [151936, 1536]
        "lm_head": P(None, "fsdp"),  # [1536, 151936]
        "norm": P("fsdp"),
        "layers/input_norm": P(None, "fsdp"),
        "layers/post_attn_norm": P(None, "fsdp"),
        "layers/q_proj/kernel": P(None, "fsdp", None),  # [28, 1536, 1536]: first of equal dims
        "layers/q_proj/bias": P(None, "fsdp"),
        "layers/k_proj/kernel": P(None, "fsdp", None),  # [28, 1536, 256]
        "layers/k_proj/bias": P(None, "fsdp"),
        "layers/v_proj/kernel": P(None, "fsdp", None),
        "layers/v_proj/bias": P(None, "fsdp"),
        "layers/o_proj/kernel": P(None, "fsdp", None),
        "layers/gate_proj/kernel": P(None, None, "fsdp"),  # [28, 1536, 8960]
        "layers/up_proj/kernel": P(None, None, "fsdp"),
        "layers/down_proj/kernel": P(None, "fsdp", None),  # [28, 8960, 1536]
    }


def test_tensor_rules_and_rollout_placement():
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2})
    got = specs(real_shapes(), mesh)
    assert got["layers/q_proj/kernel"] == P(None, "fsdp", "tensor")  # column-parallel
    assert got["layers/q_proj/bias"] == P(None, "tensor")
    assert got["layers/o_proj/kernel"] == P(None, "tensor", "fsdp")  # row-parallel
    assert got["layers/down_proj/kernel"] == P(None, "tensor", "fsdp")
    assert got["embed_tokens"] == P("tensor", "fsdp") and got["lm_head"] == P("fsdp", "tensor")
    rollout = specs(real_shapes(), mesh, fsdp=False)
    assert rollout["layers/q_proj/kernel"] == P(None, None, "tensor")
    assert rollout["layers/input_norm"] == P(None, None)
    assert all("fsdp" not in str(s) for s in rollout.values())


def test_indivisible_dimensions_and_unknown_parameters():
    mesh = sharding.make_mesh({"fsdp": 4})
    # 6 and 10 are not multiples of 4: the axis is dropped, not an error.
    assert sharding.partition_spec("layers/q_proj/kernel", (2, 6, 10), mesh) == P(None, None, None)
    assert sharding.partition_spec("opt/0/mu/layers/q_proj/kernel", (2, 8, 6), mesh) == P(None, "fsdp", None)
    assert sharding.partition_spec("count", (), mesh) == P()
    with pytest.raises(ValueError, match="no partition rule"):
        sharding.partition_spec("layers/new_proj/kernel", (2, 8, 8), mesh)


def test_train_state_shardings_follow_the_rules():
    """Adam's mu and nu sit like their parameters; counters are replicated."""
    mesh = sharding.make_mesh({"fsdp": 4})
    state = abstract_train_state(real_shapes(), UpdateConfig(weight_decay=0.01), mesh)
    param_specs = jax.tree.map(lambda s: s.sharding.spec, state.params)
    leaves = jax.tree_util.tree_leaves_with_path(state.opt_state)
    moments = [(p, s) for p, s in leaves if s.ndim > 0]
    assert len(moments) == 2 * len(jax.tree.leaves(state.params))  # mu and nu
    for path, leaf in moments:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        param = name.split("/mu/")[-1].split("/nu/")[-1]
        want = param_specs
        for part in param.split("/"):
            want = want[part]
        assert leaf.sharding.spec == want, name
    assert state.step.sharding.spec == P()
    # fp32 params + two fp32 moments, split four ways: 3 x 4 bytes x 1.78 B / 4.
    per_device = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
    assert per_device == pytest.approx(3 * 4 * Qwen2Config().num_params() / 4, rel=1e-3)


def test_shard_batch_and_rollout_params():
    mesh = sharding.make_mesh({"fsdp": 4})
    batch = sharding.shard_batch({"input_ids": np.arange(24).reshape(8, 3), "old_logps": None}, mesh)
    assert batch["old_logps"] is None
    assert [s.data.shape for s in batch["input_ids"].addressable_shards] == [(2, 3)] * 4
    np.testing.assert_array_equal(np.asarray(batch["input_ids"]), np.arange(24).reshape(8, 3))
    with pytest.raises(ValueError, match="not a multiple"):
        sharding.shard_batch({"input_ids": np.zeros((6, 3))}, mesh)

    config = tiny_config()
    shapes = nnx.to_pure_dict(nnx.split(abstract_model(config))[1])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)
    params = jax.device_put(params, sharding.tree_shardings(params, mesh))
    assert params["embed_tokens"].sharding.spec == P("fsdp", None)
    copy = sharding.rollout_params(params, mesh, "bfloat16")
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(copy)):
        assert y.dtype == jnp.bfloat16 and y.sharding.is_fully_replicated
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x.astype(jnp.bfloat16)))
