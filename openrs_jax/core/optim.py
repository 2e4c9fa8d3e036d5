"""Optimizer and learning-rate schedule of the recipe (docs/recipe.md section GRPO update).

- `cosine_with_min_lr(learning_rate, max_steps, warmup_ratio, min_lr_rate)`: the Hugging Face
  schedule of that name. Linear warmup from 0 to `learning_rate` over
  `ceil(warmup_ratio * max_steps)` steps, then a half cosine from `learning_rate` down to
  `learning_rate * min_lr_rate` at `max_steps`. Like Hugging Face's `LambdaLR`, the first
  update (step 0) uses the schedule's value at 0, i.e. a learning rate of 0.
- `make_optimizer(...)`: global-norm clipping, then AdamW. Weight decay, when non-zero,
  applies to matrices only (embeddings and projection kernels), not to biases and norm
  weights, as the Hugging Face Trainer does.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from openrs_jax.core.sharding import path_string


def warmup_steps_of(max_steps: int, warmup_ratio: float) -> int:
    """Warmup length as Hugging Face computes it from a ratio: ceil(ratio * max_steps)."""
    return int(math.ceil(warmup_ratio * max_steps))


def check_schedule(max_steps: int, warmup_ratio: float, min_lr_rate: float) -> None:
    """Refuses a schedule `cosine_with_min_lr` cannot build."""
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if not 0.0 <= min_lr_rate <= 1.0:
        raise ValueError(f"min_lr_rate must be in [0, 1], got {min_lr_rate}")


def cosine_with_min_lr(
    learning_rate: float, max_steps: int, warmup_ratio: float = 0.1, min_lr_rate: float = 0.1
) -> optax.Schedule:
    """Linear warmup 0 -> lr, then cosine lr -> lr * min_lr_rate at `max_steps` (constant after)."""
    check_schedule(max_steps, warmup_ratio, min_lr_rate)
    warmup = warmup_steps_of(max_steps, warmup_ratio)
    decay = max(max_steps - warmup, 1)

    def schedule(step: jax.Array | int) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = step / max(warmup, 1)
        progress = jnp.clip((step - warmup) / decay, 0.0, 1.0)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        factor = jnp.where(step < warmup, warm, min_lr_rate + (1.0 - min_lr_rate) * cosine)
        return learning_rate * factor

    return schedule


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: matrices, not biases or norm weights."""

    def is_matrix(path: tuple, leaf: Any) -> bool:
        name = path_string(path)
        return not (name.endswith("bias") or "norm" in name)

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(
    schedule: optax.Schedule,
    *,
    max_grad_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Global-norm clipping (skipped when `max_grad_norm` is None or <= 0) followed by AdamW."""
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    if max_grad_norm is None or max_grad_norm <= 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)
