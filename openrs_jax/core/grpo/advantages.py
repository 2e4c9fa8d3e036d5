"""Group-relative advantages (docs/recipe.md section GRPO update).

Rows are group-major: the `num_generations` completions of one prompt are consecutive.
"""

from __future__ import annotations

from typing import Any

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


# scale_rewards values: what the centred rewards are divided by (+ STD_EPS).
REWARD_SCALINGS = ("group", "batch", "none")
# Each accepted spelling, lower-cased (booleans as str() writes them), -> its scaling.
_SCALING_OF = {**{s: s for s in REWARD_SCALINGS}, "true": "group", "1": "group", "false": "none", "0": "none"}


def reward_scaling(value: Any) -> str:
    """"group", "batch" or "none" from a `scale_rewards` value (True/False mean group/none)."""
    key = str(value).lower() if isinstance(value, (bool, str)) else None
    if key in _SCALING_OF:
        return _SCALING_OF[key]
    raise ValueError(f"scale_rewards={value!r}: use one of {', '.join(REWARD_SCALINGS)} (or True/False for group/none)")


def group_advantages(rewards: jax.Array, num_generations: int, scale: bool | str = True) -> jax.Array:
    """Per-completion advantages [rows] from rewards [rows].

    A = (r - group mean) / (std + 1e-4), unbiased std (ddof=1). `scale` (see `reward_scaling`):
    "group" (True, the recipe) divides by each group's std; "batch" by the std of all the
    step's rewards (PPO-Lite); "none" (False, Dr. GRPO) only centres, which allows G = 1.
    """
    scaling = reward_scaling(scale)
    if scaling == "group" and num_generations < 2:
        raise ValueError("scaled group advantages need num_generations >= 2 (the std uses ddof=1)")
    r = _grouped(rewards, num_generations)
    centred = r - r.mean(axis=1, keepdims=True)
    if scaling == "group":
        centred = centred / (jnp.std(r, axis=1, ddof=1, keepdims=True) + STD_EPS)
    elif scaling == "batch":
        if r.size < 2:
            raise ValueError("batch-scaled advantages need at least 2 rewards (the std uses ddof=1)")
        centred = centred / (jnp.std(r, ddof=1) + STD_EPS)
    return centred.reshape(-1)


def reward_std(rewards: jax.Array, num_generations: int) -> jax.Array:
    """The logged `reward_std`: the mean over groups of the within-group std (ddof=1)."""
    return jnp.std(_grouped(rewards, num_generations), axis=1, ddof=1).mean()

