"""The JAX engine, independent of any recipe: the Qwen2 model, sampling, the GRPO update, placement.

Nothing here reads a run config or knows the open-rs recipe; `openrs_jax.recipe` builds on it.
"""
