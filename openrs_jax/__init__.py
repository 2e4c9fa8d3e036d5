"""openrs-jax: GRPO fine-tuning of small reasoning language models in JAX/Flax."""

__version__ = "0.1.0"
