"""The GRPO objective on [rows, T] arrays and its loss aggregations.

Per completion token (A = the completion's advantage, rho = exp(logp - old)):

    loss_t = -min(rho A, clip(rho, 1 - epsilon_low, 1 + epsilon_high) A) + beta * KL_t
    KL_t   = exp(ref - logp) - (ref - logp) - 1          (k3 estimator, >= 0)

With one update per rollout batch (num_iterations = 1) pass `old_logps=None`: old is then
stop_gradient(logp), rho = 1 and the gradient is -A * grad(logp). With beta = 0 the reference
log-probs are not needed (`ref_logps=None`).

Aggregation turns per-token losses into one number. Every variant is a weighted sum
`sum(w * loss_t)` whose weights depend on the mask only:

| name               | weight of a completion token                 | who uses it          |
|--------------------|----------------------------------------------|----------------------|
| `group_token_mean` | 1 / (tokens of its group x groups)           | the recipe (open-rs) |
| `seq_mean`         | 1 / (tokens of its row x rows)               | DeepSeekMath GRPO    |
| `token_mean`       | 1 / (tokens in the batch)                    | DAPO                 |
| `constant_norm`    | 1 / (rows x max_completion_length)           | Dr. GRPO             |

`aggregation_weights` computes them from the whole batch, so that a micro-batch's loss is its
exact share of the batch loss and gradient accumulation gives the one-batch update. Metrics
(kl, clip ratios, entropy) are token means over the whole batch, computed the same way.

Variants of the policy term (docs/grpo-variants.md has the formulas and sources), all off by
default: `delta` (two-sided clipping), `importance_sampling="sequence"` (GSPO: one ratio per
row), `policy_loss="cispo"` (clipped, stop-gradient importance weight times log-prob), and a
`policy_mask` (DAPO's truncation masking works on the completion mask instead).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp


def _group_token_mean(mask: jax.Array, num_generations: int, max_completion_length: int | None) -> jax.Array:
    rows = mask.shape[0]
    groups = rows // num_generations
    group_tokens = mask.reshape(groups, -1).sum(axis=1)  # [groups]
    per_row = jnp.repeat(jnp.maximum(group_tokens, 1.0), num_generations)  # [rows]
    return mask / (per_row[:, None] * groups)


def _seq_mean(mask: jax.Array, num_generations: int, max_completion_length: int | None) -> jax.Array:
    row_tokens = jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    return mask / (row_tokens * mask.shape[0])


def _token_mean(mask: jax.Array, num_generations: int, max_completion_length: int | None) -> jax.Array:
    return mask / jnp.maximum(mask.sum(), 1.0)


def _constant_norm(mask: jax.Array, num_generations: int, max_completion_length: int | None) -> jax.Array:
    if not max_completion_length:
        raise ValueError("aggregation 'constant_norm' needs max_completion_length")
    return mask / (mask.shape[0] * max_completion_length)


# name -> f(mask [rows, T] float, num_generations, max_completion_length) -> weights [rows, T].
AGGREGATIONS: dict[str, Callable[[jax.Array, int, int | None], jax.Array]] = {
    "group_token_mean": _group_token_mean,
    "seq_mean": _seq_mean,
    "token_mean": _token_mean,
    "constant_norm": _constant_norm,
}


def check_option(option: str, value: str, valid: Mapping[str, Any]) -> None:
    """Refuses a `value` of `option` that is not a key of its table `valid`, naming them."""
    if value not in valid:
        raise ValueError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")


def aggregation_weights(
    mask: jax.Array, *, num_generations: int, aggregation: str, max_completion_length: int | None = None
) -> jax.Array:
    """Per-token weights [rows, T] (zero off the mask) of one aggregation, for the whole batch.

    `max_completion_length` is the configured limit, not T: the trainer may trim T to the
    longest completion, and `constant_norm` must not change when it does.
    """
    check_option("loss_aggregation", aggregation, AGGREGATIONS)
    mask = mask.astype(jnp.float32)
    if mask.shape[0] % num_generations:
        raise ValueError(f"{mask.shape[0]} rows do not split into groups of num_generations={num_generations}")
    return AGGREGATIONS[aggregation](mask, num_generations, max_completion_length)


def token_mean_weights(mask: jax.Array) -> jax.Array:
    """Weights of a token mean over the whole batch (used for metrics)."""
    return _token_mean(mask.astype(jnp.float32), 1, None)


def _token_log_ratio(log_ratio: jax.Array, mask: jax.Array) -> jax.Array:
    return log_ratio


def _sequence_log_ratio(log_ratio: jax.Array, mask: jax.Array) -> jax.Array:
    # GSPO: one ratio per row, exp of the mean token log-ratio over the row's completion tokens.
    mean = jnp.sum(log_ratio * mask, axis=1, keepdims=True) / jnp.maximum(mask.sum(axis=1, keepdims=True), 1.0)
    return jnp.broadcast_to(mean, log_ratio.shape)


# name -> f(log_ratio [rows, T], mask [rows, T]) -> log importance weight [rows, T].
IMPORTANCE_SAMPLING: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "token": _token_log_ratio,
    "sequence": _sequence_log_ratio,
}


def _clipped_surrogate(
    ratio: jax.Array, logps: jax.Array, adv: jax.Array, *, epsilon_low: float, epsilon_high: float, delta: float
) -> dict[str, jax.Array]:
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    # Two-sided clipping (INTELLECT-2): the unclipped ratio is also capped at delta, which only
    # binds for negative advantages (delta > 1 + epsilon_high is checked).
    capped = ratio if not delta else jnp.minimum(ratio, delta)
    terms = {
        "loss": -jnp.minimum(capped * adv, clipped * adv),
        # Where the clipped term is the minimum, the token has no gradient.
        "clipped_low": ((ratio < 1.0 - epsilon_low) & (adv < 0)).astype(jnp.float32),
        "clipped_high": ((ratio > 1.0 + epsilon_high) & (adv > 0)).astype(jnp.float32),
    }
    if delta:
        terms["clipped_delta"] = ((ratio > delta) & (adv < 0)).astype(jnp.float32)
    return terms


def _cispo(
    ratio: jax.Array, logps: jax.Array, adv: jax.Array, *, epsilon_low: float, epsilon_high: float, delta: float
) -> dict[str, jax.Array]:
    # MiniMax-M1: clip the importance weight and stop its gradient; every token keeps the
    # REINFORCE gradient -w * A * grad(logp), however far its ratio has moved.
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high))
    return {
        "loss": -weight * adv * logps,
        "clipped_low": (ratio < 1.0 - epsilon_low).astype(jnp.float32),
        "clipped_high": (ratio > 1.0 + epsilon_high).astype(jnp.float32),
    }


# name -> f(ratio, logps, adv, *, epsilon_low, epsilon_high, delta) -> {"loss", "clipped_low",
# "clipped_high", ...} (all [rows, T]).
POLICY_LOSSES: dict[str, Callable[..., dict[str, jax.Array]]] = {
    "clip": _clipped_surrogate,
    "cispo": _cispo,
}


def truncation_mask(completion_mask: Any, truncated: Any) -> Any:
    """`completion_mask` [rows, T] with the rows of truncated completions (no EOS) zeroed (DAPO)."""
    return completion_mask * (~truncated.astype(bool))[:, None]


def grpo_loss(
    logps: jax.Array,
    old_logps: jax.Array | None,
    ref_logps: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    num_generations: int,
    beta: float,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    aggregation: str = "group_token_mean",
    max_completion_length: int | None = None,
    loss_weights: jax.Array | None = None,
    metric_weights: jax.Array | None = None,
    entropy: jax.Array | None = None,
    row_weights: jax.Array | None = None,
    policy_loss: str = "clip",
    importance_sampling: str = "token",
    delta: float = 0.0,
    policy_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The aggregated GRPO loss and token-mean metrics.

    logps, old_logps, ref_logps, mask, entropy: [rows, T]; advantages: [rows]. When this is a
    micro-batch of a larger batch, pass `loss_weights` (`aggregation_weights` of the whole
    batch, sliced like the micro-batch) and `metric_weights` (`token_mean_weights` likewise):
    the returned values are then this micro-batch's shares, which add up to the batch's.

    Variants (see `POLICY_LOSSES`, `IMPORTANCE_SAMPLING`): `policy_loss`, `importance_sampling`,
    `delta` (0: off) and `policy_mask` (1 on the tokens that keep their policy term, e.g.
    `grpo.entropy.high_entropy_mask`; the normalisers still count every completion token).

    Metrics: `kl` (when ref_logps is given), `clip_ratio/low`, `clip_ratio/high`,
    `clip_ratio` (either), `clip_ratio/delta` (when delta is set), `entropy` (when given); with
    `row_weights` (`seq_mean` weights of the whole batch) also `kl/row_mean`, the mean over rows of
    each row's token-mean KL (TRL's `kl`).
    """
    if loss_weights is None:
        loss_weights = aggregation_weights(
            mask, num_generations=num_generations, aggregation=aggregation,
            max_completion_length=max_completion_length,
        )
    if metric_weights is None:
        metric_weights = token_mean_weights(mask)
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps (the reference model's log-probs)")
    # Per-token terms [rows, T] fp32: the policy term, the k3 KL, the clipping indicators.
    logps = logps.astype(jnp.float32)
    old = jax.lax.stop_gradient(logps) if old_logps is None else old_logps.astype(jnp.float32)
    adv = advantages.astype(jnp.float32)[:, None]
    log_ratio = IMPORTANCE_SAMPLING[importance_sampling](logps - old, mask.astype(jnp.float32))
    terms = POLICY_LOSSES[policy_loss](
        jnp.exp(log_ratio), logps, adv, epsilon_low=epsilon_low, epsilon_high=epsilon_high, delta=delta
    )
    per_token = terms["loss"]
    if policy_mask is not None:  # the policy term only: the KL still counts on every token
        per_token = per_token * policy_mask.astype(jnp.float32)
    kl = None
    if ref_logps is not None:
        diff = ref_logps.astype(jnp.float32) - logps
        kl = jnp.exp(diff) - diff - 1.0
        if beta != 0.0:
            per_token = per_token + beta * kl
    loss = jnp.sum(loss_weights * per_token)

    def mean(x: jax.Array) -> jax.Array:
        return jnp.sum(metric_weights * jax.lax.stop_gradient(x))

    metrics = {
        "clip_ratio/low": mean(terms["clipped_low"]),
        "clip_ratio/high": mean(terms["clipped_high"]),
        "clip_ratio": mean(jnp.maximum(terms["clipped_low"], terms["clipped_high"])),
    }
    if "clipped_delta" in terms:
        metrics["clip_ratio/delta"] = mean(terms["clipped_delta"])
    if kl is not None:
        metrics["kl"] = mean(kl)
        if row_weights is not None:
            metrics["kl/row_mean"] = jnp.sum(row_weights * jax.lax.stop_gradient(kl))
    if entropy is not None:
        metrics["entropy"] = mean(entropy)
    return loss, metrics
