"""The gated-MLP kernel (`model.gated_mlp`) in Pallas interpret mode against the XLA path (CPU, fp32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from openrs_jax.core import sharding
from openrs_jax.core.model import gated_mlp
from openrs_jax.core.model.gated_mlp import GatedMlp, xla_gated_product


def _operands(rows: int, d: int, i: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(rows, d)), jnp.float32)
    wg, wu = (jnp.asarray(rng.normal(size=(d, i)) * 0.1, jnp.float32) for _ in range(2))
    return x, wg, wu


def test_kernel_equals_xla_and_keeps_xla_gradient():
    x, wg, wu = _operands(2 * gated_mlp.BLOCK_M, 2 * gated_mlp.BLOCK_K, 2 * gated_mlp.BLOCK_N)
    kernel = GatedMlp("pallas_interpret")
    assert kernel.kernel_fits(x, wg)[0]
    np.testing.assert_allclose(np.asarray(kernel(x, wg, wu)), np.asarray(xla_gated_product(x, wg, wu)),
                               rtol=1e-5, atol=1e-5)

    def grads(fn):
        return jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=(0, 1, 2))(x, wg, wu)

    for got, want in zip(grads(kernel), grads(xla_gated_product)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def _xla_mlp(x, wg, wu, wd):
    return xla_gated_product(x, wg, wu) @ wd


def _mlp_operands(rows: int, seed: int = 2):
    x, wg, wu = _operands(rows, 2 * gated_mlp.BLOCK_K, 2 * gated_mlp.BLOCK_N, seed)
    wd = jnp.asarray(np.random.default_rng(seed + 1).normal(size=wg.shape[::-1]) * 0.1, jnp.float32)
    return x, wg, wu, wd


def _mlp_grads(fn, operands):
    return jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=(0, 1, 2, 3))(*operands)


def test_whole_mlp_with_backward_kernel_equals_xla():
    """`GatedMlp.mlp`: forward kernel, then the backward kernel (gate, up, d product per tile)."""
    operands = _mlp_operands(2 * gated_mlp.BLOCK_M)
    kernel = GatedMlp("pallas_interpret")
    np.testing.assert_allclose(np.asarray(kernel.mlp(*operands)), np.asarray(_xla_mlp(*operands)),
                               rtol=1e-5, atol=1e-5)
    for got, want in zip(_mlp_grads(kernel.mlp, operands), _mlp_grads(_xla_mlp, operands)):
        # fp32 sums in another order over 256 terms of magnitude ~10: 1e-4 absolute.
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
    # Where the kernel does not fit (fp32 with "pallas"), the plain expression runs.
    np.testing.assert_array_equal(np.asarray(GatedMlp("pallas").mlp(*operands)), np.asarray(_xla_mlp(*operands)))


def test_whole_mlp_per_shard_under_a_mesh():
    """The backward kernel per shard (rows over 4 emulated devices): the same gradients as XLA."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    mesh = sharding.make_mesh("fsdp=4", jax.devices()[:4])
    operands = _mlp_operands(4 * gated_mlp.BLOCK_M, seed=5)
    got = jax.jit(lambda *a: _mlp_grads(GatedMlp("pallas_interpret", mesh).mlp, a))(*operands)
    for g, want in zip(got, _mlp_grads(_xla_mlp, operands)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_shapes_out_of_whole_tiles_and_cpu_take_xla():
    x, wg, wu = _operands(gated_mlp.BLOCK_M + 8, gated_mlp.BLOCK_K, gated_mlp.BLOCK_N)
    fits, why = GatedMlp("pallas_interpret").kernel_fits(x, wg)
    assert not fits and "tiles" in why
    np.testing.assert_array_equal(np.asarray(GatedMlp("pallas_interpret")(x, wg, wu)),
                                  np.asarray(xla_gated_product(x, wg, wu)))
    assert GatedMlp.auto("cpu").implementation == "xla"
    assert GatedMlp.auto("gpu").implementation == "pallas"
    assert not GatedMlp("pallas").kernel_fits(x.astype(jnp.float32), wg)[0]  # fp32: no kernel on GPUs


def test_kernel_per_shard_under_a_mesh():
    """Rows split over 4 emulated devices (`shard_map`): the same numbers as one device."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
    mesh = sharding.make_mesh("fsdp=4", jax.devices()[:4])
    x, wg, wu = _operands(4 * gated_mlp.BLOCK_M, gated_mlp.BLOCK_K, gated_mlp.BLOCK_N, seed=1)
    got = jax.jit(GatedMlp("pallas_interpret", mesh))(x, wg, wu)
    np.testing.assert_allclose(np.asarray(got), np.asarray(xla_gated_product(x, wg, wu)), rtol=1e-5, atol=1e-5)


def _kernel_sized_model(seed: int):
    """(graphdef, fp32 params, ids [2, 32], lengths) of a random 2-layer model whose MLP is one
    kernel tile (hidden BLOCK_K = 64, intermediate BLOCK_N = 128)."""
    from openrs_jax.core.model import abstract_model, tiny_config

    config = tiny_config(vocab_size=96, hidden_size=gated_mlp.BLOCK_K, intermediate_size=gated_mlp.BLOCK_N,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    graphdef, abstract = nnx.split(abstract_model(config))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.normal(size=s.shape), jnp.float32),
                          nnx.to_pure_dict(abstract))
    ids = jnp.asarray(rng.integers(0, 96, (2, 32)), jnp.int32)
    return graphdef, params, ids, jnp.asarray([32, 20], jnp.int32)


def test_model_layers_with_the_kernel_equal_xla():
    """Full-sequence hidden states of a small model (hidden 64, MLP 128) through the kernel."""
    graphdef, params, ids, lengths = _kernel_sized_model(4)
    model = nnx.merge(graphdef, params)
    want, _ = model.hidden_states(ids, seq_lengths=lengths, platform="cpu")
    got, _ = model.hidden_states(ids, seq_lengths=lengths, platform="cpu", mlp=GatedMlp("pallas_interpret"))
    real = np.arange(32)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], rtol=1e-5, atol=1e-5)


def test_model_layer_gradients_with_the_kernels_equal_xla():
    """The layers' weight gradients of a small model through both kernels (forward and backward)."""
    graphdef, params, ids, lengths = _kernel_sized_model(6)
    real = (jnp.arange(32)[None, :] < lengths[:, None])[..., None]

    def loss(params, mlp):
        hidden, _ = nnx.merge(graphdef, params).hidden_states(ids, seq_lengths=lengths, platform="cpu", mlp=mlp)
        return jnp.sum(jnp.where(real, jnp.sin(hidden), 0.0))

    want = jax.grad(loss)(params, None)
    got = jax.grad(loss)(params, GatedMlp("pallas_interpret"))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)
