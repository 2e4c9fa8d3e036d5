"""Reward functions that misbehave on purpose, loaded by tests as 'tests.faulty_rewards:NAME'."""

from __future__ import annotations


def nan_reward(completions: list[str], solutions: list[str]) -> list[float]:
    """Every completion scores NaN: the loss becomes non-finite."""
    return [float("nan")] * len(completions)


def raising_reward(completions: list[str], solutions: list[str]) -> list[float]:
    """Raises on every completion: must score 0 and be counted, not crash the run."""
    raise RuntimeError("this reward always fails")
