"""Group-relative advantages (docs/recipe.md section GRPO update).

Rows are group-major: the `num_generations` completions of one prompt are consecutive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Added to the group std so that a group whose rewards are all equal gets advantage 0, not NaN.
STD_EPS = 1e-4


def _grouped(rewards: jax.Array, num_generations: int) -> jax.Array:
    """rewards [rows] -> [groups, G] in fp32, checking the shape."""
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1 or rewards.shape[0] % num_generations:
        raise ValueError(f"rewards of shape {rewards.shape} do not split into groups of {num_generations}")
    return rewards.reshape(-1, num_generations)


def group_advantages(rewards: jax.Array, num_generations: int, scale: bool = True) -> jax.Array:
    """Per-completion advantages [rows] from rewards [rows].

    A = (r - group mean) / (group std + 1e-4) with the unbiased std (ddof=1), as the recipe;
    `scale=False` only centres the rewards (Dr. GRPO), which needs no std and so allows G = 1.
    """
    if scale and num_generations < 2:
        raise ValueError("scaled group advantages need num_generations >= 2 (the std uses ddof=1)")
    r = _grouped(rewards, num_generations)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale:
        centred = centred / (jnp.std(r, axis=1, ddof=1, keepdims=True) + STD_EPS)
    return centred.reshape(-1)


def reward_std(rewards: jax.Array, num_generations: int) -> jax.Array:
    """The logged `reward_std`: the mean over groups of the within-group std (ddof=1)."""
    return jnp.std(_grouped(rewards, num_generations), axis=1, ddof=1).mean()

