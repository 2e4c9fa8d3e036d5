"""Reward scoring throughput: completions/s of the process-pool scorer (see rewards.bench_rewards)."""

from openrs_jax.recipe.rewards.bench_rewards import add_arguments, run

__all__ = ["add_arguments", "run"]
