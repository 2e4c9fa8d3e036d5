"""Decoder-layer gradients added into an fp32 accumulator (`model.layer_grads`), fp32 on CPU.

The update passes its running gradient sum into the layers' backward pass; the gradient it gets
back must be that sum plus exactly the plain (autodiff of the scanned layers) gradient, for
every remat policy, and a whole update must not change.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from openrs_jax.core import sharding
from openrs_jax.core.model import abstract_model
from openrs_jax.core.grpo import UpdateConfig, completion_logprobs, create_train_state, make_train_step
from tests.conftest import small_random_qwen2
from tests.test_grpo import G, T, tiny_batch, update_batch


def _graphdef(graphdef: nnx.GraphDef, params, remat: str) -> nnx.GraphDef:
    config = dataclasses.replace(nnx.merge(graphdef, params).config, remat=remat)
    return nnx.split(abstract_model(config))[0]


@pytest.fixture(scope="module")
def model_parts():
    graphdef, params = small_random_qwen2(seed=7)
    return graphdef, params


def _loss_grad(graphdef, params, accumulator):
    ids, attn, completion = tiny_batch(seed=11)
    weights = jnp.asarray(np.random.default_rng(1).normal(size=completion.shape) * completion, jnp.float32)

    def loss(p):
        logp, _ = completion_logprobs(nnx.merge(graphdef, p), ids, attn, 4, chunk=4,
                                      layer_grad_accumulator=accumulator)
        return jnp.sum(weights * logp)

    return jax.jit(jax.grad(loss))(params)


@pytest.mark.parametrize("remat", ["full", "none", "dots"])
def test_layer_gradient_is_accumulator_plus_plain_gradient(model_parts, remat):
    graphdef, params = model_parts
    plain = _loss_grad(_graphdef(graphdef, params, "none"), params, None)
    rng = np.random.default_rng(2)
    acc = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params["layers"])
    got = _loss_grad(_graphdef(graphdef, params, remat), params, acc)
    want = {**plain, "layers": jax.tree.map(jnp.add, acc, plain["layers"])}
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=str(path))  # gradients of order 1
    # The accumulator matters: a zero accumulator gives the plain gradient.
    zero = _loss_grad(_graphdef(graphdef, params, remat), params, jax.tree.map(jnp.zeros_like, acc))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(zero), jax.tree.leaves(plain)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=str(path))


@pytest.mark.parametrize("devices,micro", [(1, 2), (4, 4)])
def test_update_with_full_remat_equals_no_remat(model_parts, devices, micro):
    """Micro-batches through the accumulating layer scan (remat="full"; on 1 device, or FSDP over
    4) against one micro-batch of the plain scan (remat="none") on one device: the same
    parameters after one update."""
    if jax.device_count() < devices:
        pytest.skip(f"needs {devices} devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    graphdef, params = model_parts
    results = []
    for remat, micro, n in (("none", None, 1), ("full", micro, devices)):
        mesh = sharding.make_mesh(None if n == 1 else f"fsdp={n}", jax.devices()[:n])
        config = UpdateConfig(num_generations=G, beta=0.04, learning_rate=1e-3, warmup_ratio=0.0, max_steps=10,
                              max_completion_length=T, logprob_chunk=4, adam_epsilon=1e-2, micro_batch_size=micro)
        state = create_train_state(params, config, mesh)
        step = make_train_step(_graphdef(graphdef, params, remat), config, mesh)
        state, metrics = step(state, sharding.shard_batch(update_batch(True), mesh))
        results.append((jax.device_get(state.params), {k: float(v) for k, v in metrics.items()}))
    (pa, ma), (pb, mb) = results
    for key in ma:
        np.testing.assert_allclose(ma[key], mb[key], rtol=1e-4 if devices > 1 else 1e-5, atol=1e-7, err_msg=key)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(x, y, rtol=1e-4 if devices > 1 else 1e-5, atol=1e-7, err_msg=str(path))
