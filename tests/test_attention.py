"""Full-sequence attention over right-padded rows (openrs_jax.core.model.attention) against the
model's plain masked attention, and the right-padded model against the left-padded one."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from openrs_jax.core.model import abstract_model, tiny_config
from openrs_jax.core.model import attention as fused
from openrs_jax.core.model.qwen2 import attention as plain_attention


def test_choice_of_implementation():
    assert fused.implementation(jnp.bfloat16, 128, "gpu") == "cudnn"
    assert fused.implementation(jnp.float16, 64, "gpu") == "cudnn"
    assert fused.implementation(jnp.float32, 128, "gpu") == "xla"  # no fp32 flash kernel
    assert fused.implementation(jnp.bfloat16, 160, "gpu") == "xla"  # head size cuDNN refuses
    assert fused.implementation(jnp.bfloat16, 12, "gpu") == "xla"
    assert fused.implementation(jnp.bfloat16, 128, "cpu") == "xla"
    assert fused.platform_of(None) == jax.default_backend()


def test_causal_attention_equals_masked_attention_on_real_tokens():
    rng = np.random.default_rng(0)
    b, t, h, kv, d = 3, 7, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.float32)
    lengths = jnp.asarray([7, 4, 1], jnp.int32)
    real = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    mask = np.tril(np.ones((t, t), bool))[None] & real[:, None, :]
    want = np.asarray(plain_attention(q, k, v, jnp.asarray(mask)))
    got = np.asarray(fused.causal_attention(q, k, v, lengths, "cpu"))
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-6)
    assert np.all(got[~real] == 0.0)


def test_right_padded_order_keeps_real_tokens_in_order():
    mask = jnp.asarray([[0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]])
    order, lengths = fused.right_padded(mask)
    np.testing.assert_array_equal(lengths, [3, 3, 5])
    ids = np.arange(15).reshape(3, 5)
    packed = np.take_along_axis(ids, np.asarray(order), 1)
    np.testing.assert_array_equal(packed[0, :3], [2, 3, 4])
    np.testing.assert_array_equal(packed[1, :3], [5, 7, 9])
    np.testing.assert_array_equal(packed[2], ids[2])


def test_right_padded_model_equals_left_padded_model():
    """Same logits for every real token, whichever side the padding is on (fp32)."""
    config = tiny_config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    graphdef, abstract = nnx.split(abstract_model(config))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: jnp.asarray(1.0 + 0.1 * rng.normal(size=s.shape), jnp.float32),
                          nnx.to_pure_dict(abstract))
    lengths = np.array([9, 5, 2])
    s = 9
    left_mask = (np.arange(s)[None, :] >= s - lengths[:, None]).astype(np.int32)
    left_ids = rng.integers(0, 64, (3, s)).astype(np.int32) * left_mask
    order, _ = fused.right_padded(jnp.asarray(left_mask))
    right_ids = np.take_along_axis(left_ids, np.asarray(order), 1)

    @jax.jit
    def both(p):
        model = nnx.merge(graphdef, p)
        left = model(left_ids, left_mask)
        h, _ = model.hidden_states(right_ids, seq_lengths=jnp.asarray(lengths, jnp.int32))
        return left, model.logits(h)

    left, right = map(np.asarray, both(params))
    for row, n in enumerate(lengths):
        np.testing.assert_allclose(right[row, :n], left[row, s - n :], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("jax_cuda12_plugin") is None,
                    reason="needs jax[cuda12] (the gpu extra) to compile for a GPU target without a GPU")
def test_update_and_reference_lower_to_cudnn_flash_attention_for_h100(tmp_path):
    """Compile-only H100: the log-prob pass and its gradient use cuDNN's fused attention and
    build no [T, T] score tensor."""
    if os.environ.get("JAX_SKIP_CUDA_CONSTRAINTS_CHECK") != "1":
        pytest.skip("set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 to compile for a GPU target on a host without one")
    from jax.experimental import topologies
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from openrs_jax.bench.plan import load_target
    from openrs_jax.core.grpo import completion_logprobs

    target = load_target("h100")
    devices = topologies.get_topology_desc("t", "cuda", topology="1x1x1", target_config=target.text).devices
    mesh = Mesh(np.array(devices).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    config = tiny_config(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64).replace(dtype="bfloat16")
    graphdef, abstract = nnx.split(abstract_model(config))
    replicated = NamedSharding(mesh, P())
    params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                          nnx.to_pure_dict(abstract))
    t = 512
    ids = jax.ShapeDtypeStruct((2, t), jnp.int32, sharding=replicated)

    def loss(p, ids, mask):
        return completion_logprobs(nnx.merge(graphdef, p), ids, mask, 64, mesh=mesh)[0].sum()

    forward = jax.jit(loss).lower(params, ids, ids).compile().as_text()
    backward = jax.jit(jax.grad(loss)).lower(params, ids, ids).compile().as_text()
    assert "__cudnn$fmhaSoftmax" in forward
    assert "__cudnn$fmhaSoftmaxBackward" in backward
    for text in (forward, backward):
        assert f"f32[2,2,{t},{t}" not in text and f"f32[2,4,{t},{t}" not in text
