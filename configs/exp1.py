"""Exp1 of the paper: open-s1 (18,615 problems), format + accuracy, 4,096-token completions."""

from openrs_jax.recipe.config import base_config, original_run_inputs


def get_config():
    c = base_config()
    c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    c.data.dataset = "knoveleng/open-s1"
    c.rewards.funcs = ("format", "accuracy")
    c.rewards.weights = (1.0, 2.0)
    c.rollout.max_completion_length = 4096
    original_run_inputs(c)  # the original run's input quirks (docs/paper-exact.md)
    c.run.output_dir = "runs/exp1"
    return c
