"""Exp1 of the paper: open-s1 (18,615 problems), format + accuracy, 4,096-token completions."""

from openrs_jax.recipe.config import base_config


def get_config():
    c = base_config()
    c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    c.data.dataset = "knoveleng/open-s1"
    c.rewards.funcs = ("format", "accuracy")
    c.rewards.weights = (1.0, 2.0)
    c.rollout.max_completion_length = 4096
    # The original run's input quirks (docs/paper-exact.md): TRL's prompt order over the
    # unfiltered dataset, over-long prompts truncated on the left for the loss, two BOS in rollouts.
    c.data.prompt_order = "trl"
    c.data.long_prompts = "truncate_left"
    c.rollout.bos = "double"
    c.rollout.max_model_length = 4608  # the recipe's vllm_max_model_len: long prompts get shorter completions
    c.run.output_dir = "runs/exp1"
    return c
