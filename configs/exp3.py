"""Exp3 of the paper: open-rs, format + cosine (length-aware accuracy), English-only system prompt."""

from openrs_jax.recipe.config import base_config, original_run_inputs
from openrs_jax.recipe.prompts import SYSTEM_PROMPT_EXP3


def get_config():
    c = base_config()
    c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    c.data.dataset = "knoveleng/open-rs"
    c.data.system_prompt = SYSTEM_PROMPT_EXP3  # the recipe's, plus an English-only sentence
    c.rewards.funcs = ("format", "cosine")
    c.rewards.weights = (1.0, 2.0)
    c.rewards.cosine_min_value_wrong = 0.0
    c.rewards.cosine_max_value_wrong = -0.5
    c.rewards.cosine_min_value_correct = 0.5
    c.rewards.cosine_max_value_correct = 1.0
    c.rewards.cosine_max_len = 3584
    c.rollout.max_completion_length = 3584
    original_run_inputs(c)  # the original run's input quirks (docs/paper-exact.md)
    c.run.output_dir = "runs/exp3"
    return c
