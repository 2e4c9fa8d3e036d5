"""GRPO core against independent references: numpy loops, analytic gradients, a direct
log_softmax, hand-worked schedule values, and the one-batch / one-device update."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from openrs_jax.core import optim, sharding
from openrs_jax.core.grpo import (
    AGGREGATIONS,
    UpdateConfig,
    aggregation_weights,
    create_train_state,
    group_advantages,
    grpo_loss,
    make_train_step,
    reward_std,
    token_logprobs,
)
from openrs_jax.core.model import tiny_config
from tests.conftest import small_random_qwen2

G = 4
ROWS, T = 8, 6  # two groups of four


# ----------------------------------------------------------------------------------------------
# numpy references, written from docs/recipe.md section GRPO update with explicit loops


def np_advantages(rewards: np.ndarray, g: int, scale: bool) -> np.ndarray:
    out = np.zeros(len(rewards), np.float64)
    for start in range(0, len(rewards), g):
        r = rewards[start : start + g].astype(np.float64)
        a = r - r.mean()
        if scale:
            a = a / (r.std(ddof=1) + 1e-4)
        out[start : start + g] = a
    return out


def np_loss(logp, old, ref, adv, mask, *, g, beta, eps_low, eps_high, aggregation, max_len):
    rows, t = logp.shape
    per_token = np.zeros((rows, t))
    kl = np.zeros((rows, t))
    low = np.zeros((rows, t))
    high = np.zeros((rows, t))
    for i in range(rows):
        for j in range(t):
            rho = math.exp(logp[i, j] - old[i, j])
            clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
            d = ref[i, j] - logp[i, j]
            kl[i, j] = math.exp(d) - d - 1
            per_token[i, j] = -min(rho * adv[i], clipped * adv[i]) + beta * kl[i, j]
            low[i, j] = rho < 1 - eps_low and adv[i] < 0
            high[i, j] = rho > 1 + eps_high and adv[i] > 0
    masked = per_token * mask
    if aggregation == "group_token_mean":
        groups = [masked[s : s + g].sum() / mask[s : s + g].sum() for s in range(0, rows, g)]
        loss = np.mean(groups)
    elif aggregation == "seq_mean":
        loss = np.mean([masked[i].sum() / mask[i].sum() for i in range(rows)])
    elif aggregation == "token_mean":
        loss = masked.sum() / mask.sum()
    else:
        loss = masked.sum() / (rows * max_len)
    tok_mean = lambda x: (x * mask).sum() / mask.sum()  # noqa: E731
    metrics = {"kl": tok_mean(kl), "clip_ratio/low": tok_mean(low), "clip_ratio/high": tok_mean(high),
               "clip_ratio": tok_mean(np.maximum(low, high))}
    return loss, metrics


def random_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    logp = rng.normal(-1.5, 0.5, (ROWS, T)).astype(np.float32)
    old = (logp + rng.normal(0, 0.4, (ROWS, T))).astype(np.float32)  # ratios well away from 1
    ref = (logp + rng.normal(0, 0.3, (ROWS, T))).astype(np.float32)
    rewards = rng.integers(0, 3, ROWS).astype(np.float32)
    rewards[:G] = 1.0  # a group whose rewards are all equal: advantage 0, only KL remains
    adv = np.array(group_advantages(jnp.asarray(rewards), G))
    lengths = np.array([1, 6, 3, 2, 5, 6, 4, 1])  # ragged
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    return logp, old, ref, adv.astype(np.float32), mask


# ----------------------------------------------------------------------------------------------
# advantages


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_numpy(scale):
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=12).astype(np.float32)
    rewards[6:9] = 2.0  # one group of three with equal rewards
    got = np.asarray(group_advantages(jnp.asarray(rewards), 3, scale=scale))
    want = np_advantages(rewards, 3, scale)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[6:9], 0.0)  # equal rewards: zero advantage, not NaN


def test_reward_std_and_shape_errors():
    r = np.array([0.0, 1.0, 2.0, 2.0, 2.0, 2.0], np.float32)
    assert float(reward_std(jnp.asarray(r), 3)) == pytest.approx(0.5)  # (1 + 0) / 2
    with pytest.raises(ValueError):
        group_advantages(jnp.ones(7), 3)
    with pytest.raises(ValueError):
        group_advantages(jnp.ones(4), 1)  # ddof=1 std of one sample


# ----------------------------------------------------------------------------------------------
# loss


@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
def test_grpo_loss_matches_numpy(aggregation):
    logp, old, ref, adv, mask = random_inputs()
    kwargs = dict(g=G, beta=0.04, eps_low=0.2, eps_high=0.28, aggregation=aggregation, max_len=10)
    want, want_metrics = np_loss(logp, old, ref, adv, mask, **kwargs)
    got, metrics = grpo_loss(
        jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask),
        num_generations=G, beta=0.04, epsilon_low=0.2, epsilon_high=0.28, aggregation=aggregation,
        max_completion_length=10,
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    for key, value in want_metrics.items():
        np.testing.assert_allclose(float(metrics[key]), value, rtol=1e-5, atol=1e-7, err_msg=key)
    assert 0 < want_metrics["clip_ratio/low"] and 0 < want_metrics["clip_ratio/high"]  # both sides exercised


@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
@pytest.mark.parametrize("with_old", [True, False])
def test_grpo_loss_gradient_is_analytic(aggregation, with_old):
    """d loss / d logp = w * (-A rho [not clipped] + beta (1 - exp(ref - logp)))."""
    logp, old, ref, adv, mask = random_inputs(2)
    beta, eps_low, eps_high = 0.04, 0.2, 0.28
    old_arg = jnp.asarray(old) if with_old else None

    def loss_fn(lp):
        return grpo_loss(lp, old_arg, jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask), num_generations=G,
                         beta=beta, epsilon_low=eps_low, epsilon_high=eps_high, aggregation=aggregation,
                         max_completion_length=10)[0]

    grad = np.asarray(jax.grad(loss_fn)(jnp.asarray(logp)))
    w = np.asarray(aggregation_weights(jnp.asarray(mask), num_generations=G, aggregation=aggregation,
                                       max_completion_length=10))
    base = old if with_old else logp
    rho = np.exp(logp.astype(np.float64) - base)
    a = adv[:, None]
    clipped = ((rho < 1 - eps_low) & (a < 0)) | ((rho > 1 + eps_high) & (a > 0))
    want = w * (-a * rho * ~clipped + beta * (1 - np.exp(ref - logp.astype(np.float64))))
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-8)


def test_aggregation_weights_and_beta_zero():
    _, _, _, adv, mask = random_inputs()
    for name in AGGREGATIONS:
        w = np.asarray(aggregation_weights(jnp.asarray(mask), num_generations=G, aggregation=name,
                                           max_completion_length=10))
        assert np.all(w[mask == 0] == 0)
        if name != "constant_norm":
            assert w.sum() == pytest.approx(1.0, rel=1e-6)  # a mean of the per-token terms
    # beta = 0 needs no reference; old = None gives rho = 1, so the loss is -sum(w A).
    lp = jnp.asarray(random_inputs()[0])
    loss, metrics = grpo_loss(lp, None, None, jnp.asarray(adv), jnp.asarray(mask), num_generations=G, beta=0.0,
                              aggregation="token_mean")
    assert "kl" not in metrics and float(metrics["clip_ratio"]) == 0.0
    assert float(loss) == pytest.approx(-(adv[:, None] * mask).sum() / mask.sum(), rel=1e-5)
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(lp, None, None, jnp.asarray(adv), jnp.asarray(mask), num_generations=G, beta=0.04)
    with pytest.raises(ValueError, match="unknown loss_aggregation 'sum'"):
        aggregation_weights(jnp.asarray(mask), num_generations=G, aggregation="sum")


# ----------------------------------------------------------------------------------------------
# log-probs


@pytest.fixture(scope="module")
def tiny():
    """(jitted forward, graphdef, params) of a small random Qwen2 (params drawn in numpy: fast)."""
    graphdef, params = small_random_qwen2(seed=3)
    forward = jax.jit(lambda p, ids, mask: nnx.merge(graphdef, p)(ids, mask))
    return functools.partial(forward, params), graphdef, params


def tiny_batch(rows: int = ROWS, prompt: int = 4, t: int = T, vocab: int = 96, seed: int = 0, ragged: bool = True):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, prompt + t)).astype(np.int32)
    attn = np.ones((rows, prompt + t), np.int32)
    attn[1::2, :2] = 0  # left padding of some prompts
    lengths = rng.integers(1, t + 1, rows) if ragged else np.full(rows, t)
    completion = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    attn[:, prompt:] = completion
    return ids, attn, completion


def direct_logprobs(model, ids, attn, start, temperature=1.0):
    logits = np.asarray(model(jnp.asarray(ids), jnp.asarray(attn)), np.float64) / temperature
    logits = logits[:, start - 1 : -1]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    logp = np.take_along_axis(logits, ids[:, start:, None], -1)[..., 0] - logz
    p = np.exp(logits - logz[..., None])
    return logp, -(p * (logits - logz[..., None])).sum(-1)


@pytest.mark.parametrize("chunk,temperature,micro", [(4, 1.0, None), (64, 0.7, 2)])
def test_chunked_logprobs_equal_direct_log_softmax(tiny, chunk, temperature, micro):
    from openrs_jax.core.grpo import completion_logprobs

    model, graphdef, params = tiny
    ids, attn, _ = tiny_batch()
    want, want_entropy = direct_logprobs(model, ids, attn, 4, temperature)
    got = token_logprobs(graphdef, params, ids, attn, 4, chunk, micro_batch_size=micro, temperature=temperature)
    assert got.shape == (ROWS, T)
    # Real tokens match the direct computation; padding tokens have log-prob 0.
    real = attn[:, 4:] == 1
    np.testing.assert_allclose(np.asarray(got), np.where(real, want, 0.0), atol=2e-5)
    if micro is None:
        return
    entropy_fn = jax.jit(lambda p: completion_logprobs(
        nnx.merge(graphdef, p), ids, attn, 4, chunk=chunk, temperature=temperature, with_entropy=True)[1])
    np.testing.assert_allclose(np.asarray(entropy_fn(params)), np.where(real, want_entropy, 0.0), atol=2e-5)


def test_chunked_logprob_gradient_equals_direct(tiny):
    """Through the rematerialised chunk loop, parameter gradients match the plain computation."""
    from openrs_jax.core.grpo import completion_logprobs

    _, graphdef, params = tiny
    ids, attn, completion = tiny_batch(seed=5)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=completion.shape) * completion, jnp.float32)

    def chunked(p):
        logp, _ = completion_logprobs(nnx.merge(graphdef, p), ids, attn, 4, chunk=4)
        return jnp.sum(weights * logp)

    def direct(p):
        logits = nnx.merge(graphdef, p)(ids, attn)[:, 3:-1]
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), ids[:, 4:, None], -1)[..., 0]
        return jnp.sum(weights * logp)

    got, want = jax.jit(jax.grad(chunked))(params), jax.jit(jax.grad(direct))(params)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6, err_msg=str(path))


# ----------------------------------------------------------------------------------------------
# the update (each distinct setting compiles once per session: results are cached)


def update_batch(with_old: bool = True, seed: int = 0) -> dict:
    ids, attn, completion = tiny_batch(seed=seed)
    rng = np.random.default_rng(seed + 1)
    rewards = rng.integers(0, 3, ROWS).astype(np.float32)
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "completion_mask": completion,
        "advantages": np.asarray(group_advantages(jnp.asarray(rewards), G)),
        "ref_logps": rng.normal(-4.5, 0.3, (ROWS, T)).astype(np.float32),
        "old_logps": rng.normal(-4.5, 0.3, (ROWS, T)).astype(np.float32) if with_old else None,
    }


LR = 1e-3
_UPDATES: dict = {}


def run_update(tiny, *, mesh_spec: str = "single", with_old: bool = True, **overrides):
    """Params and metrics after one update of `update_batch(with_old)` (memoised)."""
    key = (mesh_spec, with_old, tuple(sorted(overrides.items())))
    if key not in _UPDATES:
        _, graphdef, params = tiny
        mesh = sharding.make_mesh(None if mesh_spec == "single" else mesh_spec,
                                  jax.devices()[:1] if mesh_spec == "single" else jax.devices()[:4])
        # A large Adam epsilon keeps the first update proportional to the gradient instead of
        # ~sign(gradient), which would amplify rounding in near-zero gradients.
        config = UpdateConfig(**{**dict(num_generations=G, beta=0.04, learning_rate=LR, warmup_ratio=0.0,
                                        max_steps=10, max_completion_length=T, logprob_chunk=4,
                                        adam_epsilon=1e-2), **overrides})
        state = create_train_state(params, config, mesh)
        state, metrics = make_train_step(graphdef, config, mesh)(state, sharding.shard_batch(update_batch(with_old), mesh))
        _UPDATES[key] = jax.device_get(state.params), {k: float(v) for k, v in metrics.items()}
    return _UPDATES[key]


def assert_same_update(a, b, rtol=1e-5, atol=1e-7):
    """Same metrics, same parameters (a weight moves by up to about LR = 1e-3 in the update)."""
    params_a, metrics_a = a
    params_b, metrics_b = b
    assert metrics_a.keys() == metrics_b.keys()
    for key in metrics_a:
        np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=rtol, atol=1e-7, err_msg=key)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=str(path))


@pytest.mark.parametrize("aggregation", [
    "group_token_mean",
    pytest.param("seq_mean", marks=pytest.mark.slow),
    pytest.param("token_mean", marks=pytest.mark.slow),
    pytest.param("constant_norm", marks=pytest.mark.slow),
])
def test_micro_batch_invariance(tiny, aggregation):
    """One micro-batch of 8 rows and four of 2 give the same update."""
    whole = run_update(tiny, loss_aggregation=aggregation, micro_batch_size=None)
    split = run_update(tiny, loss_aggregation=aggregation, micro_batch_size=2)
    assert whole[1]["clip_ratio"] > 0 and whole[1]["kl"] > 0
    assert_same_update(whole, split)


def test_update_metrics_match_loss(tiny):
    """The step's loss equals grpo_loss on direct log-probs; lr, token count, entropy as expected."""
    model = tiny[0]
    batch = update_batch()
    _, metrics = run_update(tiny, loss_aggregation="group_token_mean", micro_batch_size=2)
    logp, entropy = direct_logprobs(model, batch["input_ids"], batch["attention_mask"], 4)
    want, _ = grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(batch["old_logps"]),
                        jnp.asarray(batch["ref_logps"]), jnp.asarray(batch["advantages"]),
                        jnp.asarray(batch["completion_mask"]), num_generations=G, beta=0.04)
    mask = batch["completion_mask"]
    assert metrics["loss"] == pytest.approx(float(want), rel=1e-4)
    assert metrics["learning_rate"] == pytest.approx(LR)  # no warmup here
    assert metrics["num_tokens"] == mask.sum()
    assert metrics["entropy"] == pytest.approx((entropy * mask).sum() / mask.sum(), rel=1e-4)
    assert metrics["grad_norm"] > 0


@pytest.mark.parametrize("mesh_spec", ["fsdp=4", pytest.param("fsdp=2,tensor=2", marks=pytest.mark.slow)])
def test_sharded_update_equals_single_device(tiny, mesh_spec):
    """4 devices, two micro-batches of 4 rows, against one device and one micro-batch."""
    single = run_update(tiny, loss_aggregation="group_token_mean", micro_batch_size=None)
    sharded = run_update(tiny, mesh_spec=mesh_spec, loss_aggregation="group_token_mean", micro_batch_size=4)
    assert_same_update(single, sharded, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# optimizer, schedule, config


def test_schedule_values_worked_by_hand():
    """lr 1e-6, min rate 0.1, warmup 10% of 500 = 50 steps.

    step 0: 0 (warmup starts at 0); 25: 1e-6 * 25/50 = 5e-7; 50: 1e-6 (cosine at progress 0);
    275: progress (275-50)/450 = 0.5, cos(pi/2) = 0, factor 0.1 + 0.9 * 0.5 = 0.55 -> 5.5e-7;
    500: progress 1, factor 0.1 -> 1e-7.
    """
    schedule = optim.cosine_with_min_lr(1e-6, 500, warmup_ratio=0.1, min_lr_rate=0.1)
    for step, want in [(0, 0.0), (25, 5e-7), (50, 1e-6), (275, 5.5e-7), (500, 1e-7)]:
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-13), step
    assert optim.warmup_steps_of(500, 0.1) == 50
    with pytest.raises(ValueError):
        optim.cosine_with_min_lr(1e-6, 0)


def test_optimizer_is_clipped_adamw():
    """Two steps against a hand-written AdamW with global-norm clipping and masked decay."""
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "layers": {"q_proj": {"bias": jnp.array([0.2, -0.1])}}}
    grads = [{"w": jnp.array([[3.0, 0.0], [4.0, 0.0]]), "layers": {"q_proj": {"bias": jnp.array([0.0, 0.0])}}},
             {"w": jnp.array([[0.1, 0.2], [0.0, -0.1]]), "layers": {"q_proj": {"bias": jnp.array([0.3, 0.0])}}}]
    lr, wd, b1, b2, eps = 0.1, 0.01, 0.9, 0.999, 1e-8
    tx = optim.make_optimizer(optax.constant_schedule(lr), max_grad_norm=1.0, weight_decay=wd)
    state = tx.init(params)
    p = jax.tree.map(np.asarray, params)
    m = jax.tree.map(np.zeros_like, p)
    v = jax.tree.map(np.zeros_like, p)
    for t, g in enumerate(grads, start=1):
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        g = jax.tree.map(np.asarray, g)
        norm = math.sqrt(sum(float((x**2).sum()) for x in jax.tree.leaves(g)))
        g = jax.tree.map(lambda x: x * min(1.0, 1.0 / norm), g)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_**2, v, g)
        step = jax.tree.map(lambda m_, v_: (m_ / (1 - b1**t)) / (np.sqrt(v_ / (1 - b2**t)) + eps), m, v)
        p = {"w": p["w"] - lr * (step["w"] + wd * p["w"]),  # decayed
             "layers": {"q_proj": {"bias": p["layers"]["q_proj"]["bias"] - lr * step["layers"]["q_proj"]["bias"]}}}
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(p)):
        np.testing.assert_allclose(np.asarray(x), y, rtol=1e-5)


def test_update_config_from_run_config():
    from openrs_jax.recipe.config import base_config

    c = base_config()
    config = UpdateConfig.from_config(c)
    assert (config.num_generations, config.micro_batch_size, config.beta, config.loss_aggregation) == (
        6, 6, 0.04, "group_token_mean")
    assert (config.learning_rate, config.warmup_ratio, config.min_lr_rate, config.max_steps) == (1e-6, 0.1, 0.1, 500)
    assert (config.epsilon_low, config.epsilon_high, config.max_grad_norm, config.weight_decay) == (0.2, 0.2, 1.0, 0.0)
    assert config.max_completion_length == 3584 and config.logprob_temperature == 1.0
    with pytest.raises(ValueError, match="loss_aggregation"):
        UpdateConfig(loss_aggregation="mean")


@pytest.mark.slow
def test_memory_plan_on_a_tiny_model(tmp_path):
    """The memory bench compiles all programs for 4 devices and reports sane per-device peaks."""
    import argparse
    import json

    from openrs_jax.bench.memory import memory_plan

    config = tiny_config(vocab_size=128, eos_token_id=1, pad_token_id=1)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config.to_hf_dict()))
    (tmp_path / "run.py").write_text(
        "from openrs_jax.recipe.config import base_config\n\n"
        "def get_config():\n"
        "    c = base_config()\n"
        "    c.rollout.prompts_per_step, c.rollout.num_generations, c.grpo.micro_batch_size = 4, 2, 4\n"
        "    c.data.max_prompt_length, c.rollout.max_completion_length = 64, 32\n"
        "    return c\n"
    )
    args = argparse.Namespace(config=str(tmp_path / "run.py"), model_config=str(tmp_path / "model"), devices=4,
                              micro_batch_size=None, budget_gb=1.0)
    plan = memory_plan(args)
    state_bytes = 3 * 4 * config.num_params() / 4  # fp32 params + Adam moments, split 4 ways
    assert plan["train_state_bytes_per_device"] == pytest.approx(state_bytes, rel=0.05)
    assert plan["update_peak_bytes_per_device"] > state_bytes
    assert plan["rollout_peak_bytes_per_device"] > plan["kv_cache_bytes_per_device"] > 0
    assert plan["micro_batch_size"] == 4 and plan["fits_budget"]
