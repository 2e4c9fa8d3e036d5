"""The open-rs recipe on top of `openrs_jax.core`: run config, prompts and data, rewards, the trainer.

docs/recipe.md states the behaviour reproduced here; docs/architecture.md shows how one step flows.
"""
