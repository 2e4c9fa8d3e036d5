"""Exp1 of the paper: open-s1 (18,615 problems), format + accuracy, 4,096-token completions."""

from openrs_jax.recipe.config import base_config


def get_config():
    c = base_config()
    c.model_path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    c.dataset_name = "knoveleng/open-s1"
    c.reward_funcs = ("format", "accuracy")
    c.reward_weights = (1.0, 2.0)
    c.max_completion_length = 4096
    # The original run's input quirks (docs/paper-exact.md): TRL's prompt order over the
    # unfiltered dataset, over-long prompts truncated on the left for the loss, two BOS in rollouts.
    c.prompt_order = "trl"
    c.long_prompts = "truncate_left"
    c.rollout_bos = "double"
    c.rollout_max_model_length = 4608  # the recipe's vllm_max_model_len: long prompts get shorter completions
    c.output_dir = "runs/exp1"
    return c
