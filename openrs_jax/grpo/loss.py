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
"""

from __future__ import annotations

from typing import Callable

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


def aggregation_weights(
    mask: jax.Array, *, num_generations: int, aggregation: str, max_completion_length: int | None = None
) -> jax.Array:
    """Per-token weights [rows, T] (zero off the mask) of one aggregation, for the whole batch.

    `max_completion_length` is the configured limit, not T: the trainer may trim T to the
    longest completion, and `constant_norm` must not change when it does.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    mask = mask.astype(jnp.float32)
    if mask.shape[0] % num_generations:
        raise ValueError(f"{mask.shape[0]} rows do not split into groups of {num_generations}")
    return AGGREGATIONS[aggregation](mask, num_generations, max_completion_length)


def token_mean_weights(mask: jax.Array) -> jax.Array:
    """Weights of a token mean over the whole batch (used for metrics)."""
    return _token_mean(mask.astype(jnp.float32), 1, None)


def per_token_terms(
    logps: jax.Array,
    old_logps: jax.Array | None,
    ref_logps: jax.Array | None,
    advantages: jax.Array,
    *,
    beta: float,
    epsilon_low: float,
    epsilon_high: float,
) -> dict[str, jax.Array]:
    """Per-token loss, k3 KL and clipping indicators, all [rows, T] fp32."""
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps (the reference model's log-probs)")
    logps = logps.astype(jnp.float32)
    old = jax.lax.stop_gradient(logps) if old_logps is None else old_logps.astype(jnp.float32)
    adv = advantages.astype(jnp.float32)[:, None]
    ratio = jnp.exp(logps - old)
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = -jnp.minimum(ratio * adv, clipped * adv)
    terms = {
        # Where the clipped term is the minimum, the token has no gradient.
        "clipped_low": ((ratio < 1.0 - epsilon_low) & (adv < 0)).astype(jnp.float32),
        "clipped_high": ((ratio > 1.0 + epsilon_high) & (adv > 0)).astype(jnp.float32),
    }
    if ref_logps is not None:
        diff = ref_logps.astype(jnp.float32) - logps
        kl = jnp.exp(diff) - diff - 1.0
        terms["kl"] = kl
        if beta != 0.0:
            loss = loss + beta * kl
    terms["loss"] = loss
    return terms


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
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The aggregated GRPO loss and token-mean metrics.

    logps, old_logps, ref_logps, mask, entropy: [rows, T]; advantages: [rows]. When this is a
    micro-batch of a larger batch, pass `loss_weights` (`aggregation_weights` of the whole
    batch, sliced like the micro-batch) and `metric_weights` (`token_mean_weights` likewise):
    the returned values are then this micro-batch's shares, which add up to the batch's.

    Metrics: `kl` (when ref_logps is given), `clip_ratio/low`, `clip_ratio/high`,
    `clip_ratio` (either), `entropy` (when given); with `row_weights` (`seq_mean` weights of the
    whole batch) also `kl/row_mean`, the mean over rows of each row's token-mean KL (TRL's `kl`).
    """
    if loss_weights is None:
        loss_weights = aggregation_weights(
            mask, num_generations=num_generations, aggregation=aggregation,
            max_completion_length=max_completion_length,
        )
    if metric_weights is None:
        metric_weights = token_mean_weights(mask)
    terms = per_token_terms(
        logps, old_logps, ref_logps, advantages, beta=beta, epsilon_low=epsilon_low, epsilon_high=epsilon_high
    )
    loss = jnp.sum(loss_weights * terms["loss"])

    def mean(x: jax.Array) -> jax.Array:
        return jnp.sum(metric_weights * jax.lax.stop_gradient(x))

    metrics = {
        "clip_ratio/low": mean(terms["clipped_low"]),
        "clip_ratio/high": mean(terms["clipped_high"]),
        "clip_ratio": mean(jnp.maximum(terms["clipped_low"], terms["clipped_high"])),
    }
    if "kl" in terms:
        metrics["kl"] = mean(terms["kl"])
        if row_weights is not None:
            metrics["kl/row_mean"] = jnp.sum(row_weights * jax.lax.stop_gradient(terms["kl"]))
    if entropy is not None:
        metrics["entropy"] = mean(entropy)
    return loss, metrics
