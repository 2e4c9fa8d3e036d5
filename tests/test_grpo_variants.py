"""GRPO variants (docs/grpo-variants.md) against numpy references written from the papers'
formulas with explicit loops: reward scaling, truncation masking, two-sided clipping, GSPO,
CISPO, high-entropy tokens; their validation; micro-batch invariance of every new loss; and
the recipe's configs computing exactly today's loss and gradient."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openrs_jax.core.grpo import UpdateConfig, group_advantages, grpo_loss
from openrs_jax.core.grpo.advantages import reward_scaling
from openrs_jax.core.grpo.entropy import high_entropy_mask
from openrs_jax.core.grpo.loss import truncation_mask
from tests.test_grpo import G, direct_logprobs, run_update, tiny, update_batch  # noqa: F401 (fixture)

ROWS, T = 12, 7  # three groups of four


def held_out_inputs(seed: int):
    """Ragged masks (one empty row), one group with equal rewards, ratios well away from 1."""
    rng = np.random.default_rng(100 + seed)
    logp = rng.normal(-1.5, 0.6, (ROWS, T)).astype(np.float32)
    old = (logp + rng.normal(0, 0.5, (ROWS, T))).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, (ROWS, T))).astype(np.float32)
    rewards = rng.integers(0, 3, ROWS).astype(np.float32)
    rewards[4:8] = 2.0  # no signal in the second group
    adv = np.asarray(group_advantages(jnp.asarray(rewards), G), np.float32)
    lengths = rng.integers(0, T + 1, ROWS)
    lengths[0], lengths[5] = 0, T
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    entropy = rng.gamma(2.0, 1.0, (ROWS, T)).astype(np.float32)
    return logp, old, ref, adv, mask, entropy


# ----------------------------------------------------------------------------------------------
# numpy references (float64, loops)


def np_weights(mask, aggregation, max_len, g=G):
    rows, t = mask.shape
    w = np.zeros((rows, t))
    for i in range(rows):
        for j in range(t):
            if not mask[i, j]:
                continue
            if aggregation == "group_token_mean":
                s = i - i % g
                w[i, j] = 1 / (max(mask[s : s + g].sum(), 1) * (rows // g))
            elif aggregation == "seq_mean":
                w[i, j] = 1 / (max(mask[i].sum(), 1) * rows)
            elif aggregation == "token_mean":
                w[i, j] = 1 / max(mask.sum(), 1)
            else:
                w[i, j] = 1 / (rows * max_len)
    return w


def np_ratios(logp, old, mask, level):
    """Importance weights [rows, T]: per token, or GSPO's exp(mean token log-ratio) per row."""
    rows, t = logp.shape
    r = np.zeros((rows, t))
    for i in range(rows):
        seq = sum((logp[i, j] - old[i, j]) * mask[i, j] for j in range(t)) / max(mask[i].sum(), 1)
        for j in range(t):
            r[i, j] = math.exp(seq if level == "sequence" else logp[i, j] - old[i, j])
    return r


def np_variant(logp, old, ref, adv, mask, *, beta, eps_low, eps_high, aggregation, max_len=10,
               policy_loss="clip", level="token", delta=0.0, policy_mask=None):
    """(loss, d loss / d logp, metrics) of one variant, from its paper's formula."""
    rows, t = logp.shape
    logp, old, ref = (x.astype(np.float64) for x in (logp, old, ref))
    r = np_ratios(logp, old, mask, level)
    w = np_weights(mask, aggregation, max_len)
    n = np.maximum(mask.sum(1), 1)
    keep = np.ones((rows, t)) if policy_mask is None else policy_mask
    loss, grad = 0.0, np.zeros((rows, t))
    low, high, capped = np.zeros((rows, t)), np.zeros((rows, t)), np.zeros((rows, t))
    for i in range(rows):
        a = adv[i]
        for j in range(t):
            rho = r[i, j]
            d = ref[i, j] - logp[i, j]
            kl = math.exp(d) - d - 1
            if policy_loss == "cispo":  # -sg(clip(rho)) A logp
                wgt = min(max(rho, 1 - eps_low), 1 + eps_high)
                term, dterm = -wgt * a * logp[i, j], -wgt * a
                low[i, j], high[i, j] = rho < 1 - eps_low, rho > 1 + eps_high
            else:  # -min(min(rho, delta) A, clip(rho) A)
                unclipped = min(rho, delta) if delta else rho
                clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
                term = -min(unclipped * a, clipped * a)
                d_unclipped = 0.0 if delta and rho > delta else rho  # d rho / d(its log) = rho
                d_clipped = rho if 1 - eps_low <= rho <= 1 + eps_high else 0.0
                if unclipped * a < clipped * a:
                    dterm = -a * d_unclipped
                elif clipped * a < unclipped * a:
                    dterm = -a * d_clipped
                else:  # a tie: the two branches share the gradient
                    dterm = -a * (d_unclipped + d_clipped) / 2
                low[i, j] = rho < 1 - eps_low and a < 0
                high[i, j] = rho > 1 + eps_high and a > 0
                capped[i, j] = bool(delta) and rho > delta and a < 0
            loss += w[i, j] * (keep[i, j] * term + beta * kl)
            grad[i, j] += w[i, j] * beta * (1 - math.exp(d))
            if policy_loss != "cispo" and level == "sequence":
                # The row's ratio depends on every token of the row: spread d term / d log rho.
                for k in range(t):
                    grad[i, k] += w[i, j] * keep[i, j] * dterm * mask[i, k] / n[i]
            else:
                grad[i, j] += w[i, j] * keep[i, j] * dterm
    tok = lambda x: (x * mask).sum() / max(mask.sum(), 1)  # noqa: E731
    metrics = {"clip_ratio/low": tok(low), "clip_ratio/high": tok(high), "clip_ratio": tok(np.maximum(low, high))}
    if delta:
        metrics["clip_ratio/delta"] = tok(capped)
    if beta:
        metrics["kl"] = tok(np.exp(ref - logp) - (ref - logp) - 1)
    return loss, grad * mask, metrics


def np_high_entropy_mask(entropy, mask, quantile):
    values = entropy[mask > 0].astype(np.float64)
    if values.size == 0:
        return np.zeros_like(mask)
    return ((entropy >= np.quantile(values, 1 - quantile)) & (mask > 0)).astype(np.float32)


def jax_variant(logp, old, ref, adv, mask, *, beta, eps_low, eps_high, aggregation, max_len=10,
                policy_loss="clip", level="token", delta=0.0, policy_mask=None):
    def fn(lp):
        return grpo_loss(
            lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask), num_generations=G,
            beta=beta, epsilon_low=eps_low, epsilon_high=eps_high, aggregation=aggregation,
            max_completion_length=max_len, policy_loss=policy_loss, importance_sampling=level, delta=delta,
            policy_mask=None if policy_mask is None else jnp.asarray(policy_mask),
        )

    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logp))
    return float(loss), np.asarray(grad), {k: float(v) for k, v in metrics.items()}


VARIANTS = {
    "delta": dict(delta=1.4),
    "gspo": dict(level="sequence", eps_low=0.1, eps_high=0.1),
    "gspo_delta": dict(level="sequence", delta=1.3, eps_low=0.1, eps_high=0.1),
    "cispo": dict(policy_loss="cispo", eps_low=1.0, eps_high=0.3),
    "cispo_two_sided": dict(policy_loss="cispo", eps_low=0.2, eps_high=0.28),
    "cispo_sequence": dict(policy_loss="cispo", level="sequence", eps_low=0.2, eps_high=0.1),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("aggregation", ["group_token_mean", "token_mean", "seq_mean", "constant_norm"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_loss_gradient_and_metrics_match_numpy(name, aggregation, seed):
    logp, old, ref, adv, mask, _ = held_out_inputs(seed)
    kwargs = {"beta": 0.04, "eps_low": 0.2, "eps_high": 0.28, "aggregation": aggregation, **VARIANTS[name]}
    want_loss, want_grad, want_metrics = np_variant(logp, old, ref, adv, mask, **kwargs)
    loss, grad, metrics = jax_variant(logp, old, ref, adv, mask, **kwargs)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    for key, value in want_metrics.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
    assert set(metrics) == set(want_metrics)


def test_references_exercise_every_branch():
    """The held-out inputs really clip on both sides, hit delta and the CISPO bounds."""
    logp, old, ref, adv, mask, _ = held_out_inputs(0)
    _, _, m = np_variant(logp, old, ref, adv, mask, beta=0.04, eps_low=0.2, eps_high=0.28,
                         aggregation="token_mean", delta=1.4)
    assert m["clip_ratio/low"] > 0 and m["clip_ratio/high"] > 0 and m["clip_ratio/delta"] > 0
    r = np_ratios(logp, old, mask, "sequence")[mask.sum(1) > 0, 0]
    assert (r > 1.1).any() and (r < 0.9).any()  # GSPO clips some rows at eps 0.1


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.0])
def test_high_entropy_mask_and_its_loss_match_numpy(quantile):
    logp, old, ref, adv, mask, entropy = held_out_inputs(3)
    want_mask = np_high_entropy_mask(entropy, mask, quantile)
    got_mask = np.asarray(high_entropy_mask(jnp.asarray(entropy), jnp.asarray(mask), quantile))
    np.testing.assert_array_equal(got_mask, want_mask)
    kept = want_mask.sum() / mask.sum()
    assert (kept <= quantile + 0.05 and want_mask.sum() >= 1)
    kwargs = dict(beta=0.04, eps_low=0.2, eps_high=0.28, aggregation="token_mean", policy_mask=want_mask)
    want_loss, want_grad, _ = np_variant(logp, old, ref, adv, mask, **kwargs)
    loss, grad, _ = jax_variant(logp, old, ref, adv, mask, **kwargs)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)
    # No completion token at all: nothing is kept (and nothing is NaN).
    empty = high_entropy_mask(jnp.asarray(entropy), jnp.zeros_like(jnp.asarray(mask)), quantile)
    assert float(jnp.sum(empty)) == 0.0


# ----------------------------------------------------------------------------------------------
# advantages and truncation


def np_scaled_advantages(rewards, g, scaling):
    r = rewards.astype(np.float64)
    out = np.zeros_like(r)
    batch_std = r.std(ddof=1)
    for s in range(0, len(r), g):
        grp = r[s : s + g]
        a = grp - grp.mean()
        if scaling == "group":
            a = a / (grp.std(ddof=1) + 1e-4)
        elif scaling == "batch":
            a = a / (batch_std + 1e-4)
        out[s : s + g] = a
    return out


@pytest.mark.parametrize("value,scaling", [("group", "group"), (True, "group"), ("batch", "batch"),
                                           ("none", "none"), (False, "none"), ("False", "none")])
def test_reward_scaling_matches_numpy(value, scaling):
    rng = np.random.default_rng(7)
    rewards = rng.normal(size=12).astype(np.float32) * 3
    rewards[4:8] = 1.5  # equal rewards: advantage 0 whatever the scaling
    got = np.asarray(group_advantages(jnp.asarray(rewards), 4, scale=value))
    np.testing.assert_allclose(got, np_scaled_advantages(rewards, 4, scaling), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[4:8], 0.0)
    assert reward_scaling(value) == scaling


def test_reward_scaling_is_validated():
    with pytest.raises(ValueError, match="scale_rewards='sequence': use one of group, batch, none"):
        reward_scaling("sequence")
    with pytest.raises(ValueError, match="at least 2 rewards"):
        group_advantages(jnp.asarray([1.0]), 1, scale="batch")


def test_truncation_mask_zeroes_truncated_rows_only():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 2, (6, 5)).astype(np.int32)
    truncated = np.array([True, False, False, True, False, False])
    got = truncation_mask(mask, truncated)
    want = np.array([[0] * 5 if truncated[i] else list(mask[i]) for i in range(6)])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == mask.dtype
    np.testing.assert_array_equal(truncation_mask(mask.astype(bool), truncated), want.astype(bool))


# ----------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("options,message", [
    (dict(delta=1.2, epsilon_high=0.28), r"delta=1.2 must be > 1 \+ epsilon_high = 1.28: a lower cap would also cut"),
    (dict(delta=-1.0), "delta=-1.0 must be 0 \\(off\\) or > 1 \\+ epsilon_high"),
    (dict(delta=2.0, policy_loss="cispo"), "policy_loss='cispo' has none: set delta=0"),
    (dict(policy_loss="ppo"), "unknown policy_loss 'ppo'; valid: clip, cispo"),
    (dict(importance_sampling="row"), "unknown importance_sampling 'row'; valid: token, sequence"),
    (dict(top_entropy_quantile=1.5), r"top_entropy_quantile=1.5 must be in \[0, 1\]"),
])
def test_loss_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        UpdateConfig(**options)


# ----------------------------------------------------------------------------------------------
# the update: micro-batch invariance of every new loss, and the entropy pre-pass


NEW_LOSSES = {
    "cispo": dict(policy_loss="cispo", epsilon_low=1.0, epsilon_high=0.2),
    "sequence": dict(importance_sampling="sequence"),
    "delta": dict(delta=1.25),
    "top_entropy": dict(top_entropy_quantile=0.3),
}


@pytest.mark.parametrize("name", [
    "cispo",
    "top_entropy",
    pytest.param("sequence", marks=pytest.mark.slow),
    pytest.param("delta", marks=pytest.mark.slow),
])
def test_micro_batch_invariance_of_new_losses(tiny, name):  # noqa: F811
    """One micro-batch of 8 rows and four of 2 give the same update, loss and metrics."""
    options = {"loss_aggregation": "token_mean", **NEW_LOSSES[name]}
    whole = run_update(tiny, micro_batch_size=None, **options)
    split = run_update(tiny, micro_batch_size=2, **options)
    params_a, metrics_a = whole
    params_b, metrics_b = split
    assert metrics_a.keys() == metrics_b.keys()
    for key in metrics_a:
        np.testing.assert_allclose(metrics_a[key], metrics_b[key], rtol=1e-5, atol=1e-7, err_msg=key)
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    # The step's loss is grpo_loss's on direct log-probs (numpy log-softmax), with for
    # top_entropy the numpy-quantile mask of the direct entropies.
    batch = update_batch()
    logp, entropy = direct_logprobs(tiny[0], batch["input_ids"], batch["attention_mask"], 4)
    mask = batch["completion_mask"].astype(np.float32)
    config = UpdateConfig(num_generations=G, max_completion_length=mask.shape[1], **options)
    policy_mask = (np_high_entropy_mask(entropy, mask, config.top_entropy_quantile)
                   if config.top_entropy_quantile < 1 else None)
    want, _ = grpo_loss(jnp.asarray(logp, jnp.float32), jnp.asarray(batch["old_logps"]),
                        jnp.asarray(batch["ref_logps"]), jnp.asarray(batch["advantages"]), jnp.asarray(mask),
                        policy_mask=None if policy_mask is None else jnp.asarray(policy_mask),
                        **config.loss_options())
    assert metrics_a["loss"] == pytest.approx(float(want), rel=1e-4)
    if name == "delta":
        assert metrics_a["clip_ratio/delta"] > 0


# ----------------------------------------------------------------------------------------------
# the recipe's configs are unchanged


def np_todays_loss(logp, old, ref, adv, mask, *, g, beta, eps_low, eps_high, max_len, aggregation):
    """Today's (pre-variant) formula: -min(rho A, clip(rho) A) + beta k3, with its analytic gradient."""
    rho = np.exp(logp.astype(np.float64) - old)
    clipped = np.clip(rho, 1 - eps_low, 1 + eps_high)
    a = adv[:, None].astype(np.float64)
    d = ref.astype(np.float64) - logp
    per_token = -np.minimum(rho * a, clipped * a) + beta * (np.exp(d) - d - 1)
    w = np_weights(mask, aggregation, max_len, g)
    live = ~(((rho < 1 - eps_low) & (a < 0)) | ((rho > 1 + eps_high) & (a > 0)))
    grad = w * (-a * rho * live + beta * (1 - np.exp(d)))
    return (w * per_token).sum(), grad


@pytest.mark.parametrize("config_file", ["base", "exp1.py", "exp2.py", "exp3.py"])
@pytest.mark.parametrize("with_old", [True, False])
def test_recipe_configs_compute_todays_loss_and_gradient(config_file, with_old):
    from openrs_jax.recipe.config import base_config, load_config
    from tests.conftest import REPO_ROOT

    c = base_config() if config_file == "base" else load_config(REPO_ROOT / "configs" / config_file)
    config = UpdateConfig.from_config(c)
    g = c.rollout.num_generations
    assert (g, config.loss_aggregation, config.top_entropy_quantile) == (6, "group_token_mean", 1.0)
    rng = np.random.default_rng(11)
    rows, t = 2 * g, 9
    rewards = rng.integers(0, 3, rows).astype(np.float32)
    rewards[:g] = 1.0
    adv = np.asarray(group_advantages(jnp.asarray(rewards), g, scale=c.grpo.scale_rewards), np.float32)
    want_adv = np.zeros(rows)
    for s in (0, g):
        r = rewards[s : s + g].astype(np.float64)
        want_adv[s : s + g] = (r - r.mean()) / (r.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
    logp = rng.normal(-1.5, 0.5, (rows, t)).astype(np.float32)
    old = (logp + rng.normal(0, 0.4, (rows, t))).astype(np.float32) if with_old else logp
    ref = (logp + rng.normal(0, 0.3, (rows, t))).astype(np.float32)
    mask = (np.arange(t)[None, :] < rng.integers(1, t + 1, rows)[:, None]).astype(np.float32)
    want, want_grad = np_todays_loss(logp, old, ref, adv, mask, g=g, beta=0.04, eps_low=0.2, eps_high=0.2,
                                     max_len=c.rollout.max_completion_length, aggregation="group_token_mean")

    def fn(lp):
        return grpo_loss(lp, jnp.asarray(old) if with_old else None, jnp.asarray(ref), jnp.asarray(adv),
                         jnp.asarray(mask), **config.loss_options())[0]

    loss, grad = jax.value_and_grad(fn)(jnp.asarray(logp))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-4, atol=1e-8)


@pytest.mark.slow
def test_sharded_top_entropy_update_equals_single_device(tiny):  # noqa: F811
    """The entropy pre-pass and threshold under FSDP over 4 devices, two micro-batches of 4."""
    options = {"loss_aggregation": "token_mean", "policy_loss": "cispo", "top_entropy_quantile": 0.3}
    single = run_update(tiny, micro_batch_size=None, **options)
    sharded = run_update(tiny, mesh_spec="fsdp=4", micro_batch_size=4, **options)
    for key in single[1]:
        np.testing.assert_allclose(single[1][key], sharded[1][key], rtol=1e-5, atol=1e-7, err_msg=key)
    for x, y in zip(jax.tree.leaves(single[0]), jax.tree.leaves(sharded[0])):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
