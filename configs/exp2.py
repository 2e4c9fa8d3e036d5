"""Exp2 of the paper: open-rs (7,000 problems), format + accuracy, 3,584-token completions."""

from openrs_jax.recipe.config import base_config, original_run_inputs


def get_config():
    c = base_config()
    c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    c.data.dataset = "knoveleng/open-rs"
    c.rewards.funcs = ("format", "accuracy")
    c.rewards.weights = (1.0, 2.0)
    c.rollout.max_completion_length = 3584
    original_run_inputs(c)  # the original run's input quirks (docs/paper-exact.md)
    c.run.output_dir = "runs/exp2"
    return c
