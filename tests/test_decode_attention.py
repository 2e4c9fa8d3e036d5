"""The decode-attention kernel (Pallas interpret mode on the CPU) against the XLA path and a numpy
reference: rows of different lengths, finished rows, left-padded prompts; and the sampler with
the kernel against the sampler with XLA attention."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from openrs_jax.core.model.decode_attention import DecodeAttention, kernel_splits, load_kernel, xla_decode_attention

pytestmark = pytest.mark.skipif(load_kernel() is None, reason="this jax has no Pallas decode-attention kernel")


def numpy_attention(q, k, v, start, length):
    """q [B, H, D], k/v [B, KV, S, D]: softmax over slots start..length-1 of each row, GQA heads."""
    b, h, d = q.shape
    group = h // k.shape[1]
    out = np.zeros((b, h, d))
    for r in range(b):
        if length[r] <= start[r]:
            continue
        for head in range(h):
            keys = k[r, head // group, start[r] : length[r]].astype(np.float64)
            scores = keys @ q[r, head].astype(np.float64) / np.sqrt(d)
            p = np.exp(scores - scores.max())
            out[r, head] = (p / p.sum()) @ v[r, head // group, start[r] : length[r]]
    return out


def random_case(slots=256, rows=5, heads=4, kv=2, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(rows, heads, dim)).astype(np.float32)
    k = rng.normal(size=(rows, kv, slots, dim)).astype(np.float32)
    v = rng.normal(size=(rows, kv, slots, dim)).astype(np.float32)
    # Left padding of 0..40 slots; filled lengths from one slot past the padding to the whole
    # cache; row 3 finished (length 0: reads nothing).
    start = np.array([0, 7, 40, 3, 17], np.int32)[:rows]
    length = np.array([256, 9, 130, 0, 200], np.int32)[:rows]
    return q, k, v, start, length


def test_kernel_matches_xla_and_numpy():
    q, k, v, start, length = random_case()
    args = [jnp.asarray(x) for x in (q, k, v, start, length)]
    kernel = np.asarray(DecodeAttention("pallas_interpret")(*args))
    xla = np.asarray(xla_decode_attention(*args))
    reference = numpy_attention(q, k, v, start, length)
    np.testing.assert_allclose(kernel, reference, atol=2e-5)
    np.testing.assert_allclose(xla, reference, atol=2e-5)
    assert not kernel[3].any() and not xla[3].any()  # the finished row: zeros, no NaN


def test_kernel_ignores_slots_outside_each_rows_range():
    """Garbage in padding slots and in slots not yet written changes nothing."""
    q, k, v, start, length = random_case(seed=1)
    attend = DecodeAttention("pallas_interpret")
    clean = np.asarray(attend(*map(jnp.asarray, (q, k, v, start, length))))
    k2, v2 = k.copy(), v.copy()
    for r in range(len(start)):
        for x in (k2, v2):
            x[r, :, : start[r]] = 1e4
            x[r, :, max(length[r], start[r]) :] = -1e4
    dirty = np.asarray(attend(*map(jnp.asarray, (q, k2, v2, start, length))))
    np.testing.assert_array_equal(clean, dirty)


def test_kernel_in_bf16_is_close_to_fp32():
    q, k, v, start, length = random_case(seed=2)
    out = DecodeAttention("pallas_interpret")(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)),
                                              jnp.asarray(start), jnp.asarray(length))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), numpy_attention(q, k, v, start, length), atol=3e-2)


def test_kernel_needs_whole_blocks_and_splits_divide_them():
    q, k, v, start, length = random_case(slots=200)
    with pytest.raises(ValueError, match="multiple of 128"):
        DecodeAttention("pallas_interpret")(*map(jnp.asarray, (q, k, v, start, length)))
    assert DecodeAttention("pallas").cache_slots(4095) == 4096
    assert DecodeAttention("xla").cache_slots(4095) == 4095
    assert kernel_splits(4096, 144) == 1  # Exp2: 72 rows x 2 KV heads
    assert kernel_splits(4096, 16) == 8  # 8 rows
    assert kernel_splits(384, 1) == 1  # 3 blocks: no power of two above 1 divides them
    assert kernel_splits(4096, 1) == 16


def test_auto_choice_is_xla_on_cpu():
    assert jax.default_backend() == "cpu"
    assert DecodeAttention.auto().implementation == "xla"
    assert DecodeAttention.auto("pallas").implementation == "xla"  # the kernel needs a GPU
    assert DecodeAttention.auto("pallas_interpret").implementation == "pallas_interpret"


from tests.test_sampling import MAX_NEW, eos_model, greedy, sampled  # noqa: E402,F401  (fixture)
from openrs_jax.core.sampling import Sampler  # noqa: E402


def test_sampler_with_the_kernel_equals_xla_and_transformers(eos_model):  # noqa: F811
    """Left-padded prompts of 1..17 tokens, rows finishing at different steps (the kernel skips
    them), checks every 4 steps with overshoot past max_new_tokens, one bucketed cache size."""
    _, _, model, prompts, reference = eos_model
    xla = Sampler(model.config, prompt_bucket=8)
    kernel = Sampler(model.config, prompt_bucket=8, decode_attention="pallas_interpret", check_every=4,
                     cache_bucket=64)
    assert (xla.attention.implementation, kernel.attention.implementation) == ("xla", "pallas_interpret")
    out = kernel.generate(model, prompts, 2, greedy(), 0)
    np.testing.assert_array_equal(out.completion_ids, np.repeat(reference, 2, axis=0))
    np.testing.assert_allclose(out.logprobs, xla.generate(model, prompts, 2, greedy(), 0).logprobs, atol=1e-5)
    a, b = (s.generate(model, prompts, 3, sampled(MAX_NEW), 5) for s in (xla, kernel))
    np.testing.assert_array_equal(a.completion_ids, b.completion_ids)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_prompt_buckets_share_one_decode_program(eos_model):  # noqa: F811
    _, _, model, prompts, _ = eos_model
    sampler = Sampler(model.config, prompt_bucket=8, cache_bucket=64)
    sampler.generate(model, [prompts[3]], 1, greedy(4), 0)  # 1 token: the 8-token bucket
    sampler.generate(model, [prompts[4]], 1, greedy(4), 0)  # 17 tokens: the 24-token bucket
    assert sampler.num_compilations == 3  # two prefill programs, one decode program


def test_checking_every_few_steps_changes_nothing(eos_model):  # noqa: F811
    _, _, model, prompts, _ = eos_model
    outs = [Sampler(model.config, prompt_bucket=8, check_every=k).generate(model, prompts, 2, sampled(MAX_NEW), 3)
            for k in (1, 5)]
    for field in ("completion_ids", "lengths", "logprobs", "completion_mask"):
        np.testing.assert_array_equal(getattr(outs[0], field), getattr(outs[1], field))


def test_kernel_under_a_mesh_equals_one_device(eos_model):  # noqa: F811
    """Under 4 (emulated) devices the kernel runs per shard (shard_map); rows are padded to 8."""
    if jax.device_count() < 4:
        pytest.skip("needs 4 (emulated) devices")
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    _, _, model, prompts, reference = eos_model
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    state = jax.device_put(nnx.state(model), NamedSharding(mesh, PartitionSpec()))
    sharded = Sampler(model.config, mesh=mesh, prompt_bucket=8, decode_attention="pallas_interpret", check_every=3)
    out = sharded.generate(state, prompts[:3], 2, greedy(), 0)
    np.testing.assert_array_equal(out.completion_ids, np.repeat(reference[:3], 2, axis=0))


def test_fused_decode_weights_give_the_same_logits(eos_model):  # noqa: F811
    """DecodeWeights with q/k/v and gate/up concatenated and the RMSNorm weights folded into them
    (the GPU layout) reproduce the model's full forward pass, prefill and cached steps."""
    from openrs_jax.core.model.qwen2 import KVCache, cached_hidden_states, decode_weights

    model = eos_model[2]
    weights = jax.jit(lambda m: decode_weights(m, fuse=True))(model)
    assert "qkv_proj" in weights.layers[0] and "input_norm" not in weights.layers[0]
    rng = np.random.default_rng(4)
    ids = jnp.asarray(rng.integers(3, 256, (2, 9)), jnp.int32)
    mask = jnp.ones((2, 9), bool).at[1, :3].set(False)
    full = np.asarray(model(ids, mask))
    cache = KVCache.create(model.config, 2, 16)
    h, cache = cached_hidden_states(model.config, weights, ids[:, :6], mask[:, :6], None, cache)
    steps = [h]
    for t in range(6, 9):
        h, cache = cached_hidden_states(model.config, weights, ids[:, t : t + 1], mask[:, t : t + 1], None, cache)
        steps.append(h)
    logits = np.asarray(jnp.concatenate(steps, 1) @ weights.lm_head)
    np.testing.assert_allclose(logits[np.asarray(mask)], full[np.asarray(mask)], atol=1e-4)
