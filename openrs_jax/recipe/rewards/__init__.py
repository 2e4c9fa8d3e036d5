"""Reward functions of the open-rs recipe, a registry by name, and a process-pool scorer.

    from openrs_jax.recipe.rewards import RewardScorer, get_reward_function

    accuracy = get_reward_function("accuracy")
    accuracy(["... $\\boxed{1/2}$"], ["$\\boxed{\\frac{1}{2}}$"])  # [1.0]

    with RewardScorer(["format", "accuracy"], [1.0, 2.0], num_workers=2, timeout_s=30) as scorer:
        result = scorer.score(completions, solutions, num_generations=6)
        result.total, result.rewards["accuracy"], result.metrics()
"""

from openrs_jax.recipe.rewards.batch import RewardSet, ScoreResult, normalize_config, score_batch
from openrs_jax.recipe.rewards.gold import UNPARSABLE_GOLD_REWARD, gold_from_row, wrap_answer
from openrs_jax.recipe.rewards.registry import REWARD_FUNCTIONS, BoundReward, RewardSpec, get_reward_function
from openrs_jax.recipe.rewards.scorer import RewardScorer

__all__ = [
    "REWARD_FUNCTIONS",
    "UNPARSABLE_GOLD_REWARD",
    "BoundReward",
    "RewardScorer",
    "RewardSet",
    "RewardSpec",
    "ScoreResult",
    "get_reward_function",
    "gold_from_row",
    "normalize_config",
    "score_batch",
    "wrap_answer",
]
