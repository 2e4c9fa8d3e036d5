"""DAPO (Yu et al. 2025, arXiv 2503.14476) on Exp2's data: the recipe's model, prompts and rewards
with DAPO's changes switched on (docs/grpo-variants.md has each formula and its source):

- clip-higher: epsilon_high = 0.28 (section 3.1), no KL term (beta = 0, section 2.3);
- token-level loss: loss_aggregation = "token_mean" (section 3.3);
- dynamic sampling: groups with equal rewards are dropped and refilled (section 3.2);
- overlong shaping: the soft_overlong reward over the last 512 tokens before the 3,584-token
  cap (section 3.4), and truncated completions masked out of the loss (overlong filtering).

`apply_dapo(config)` sets the same options on any config (the tests apply it to tiny.py).
"""

from pathlib import Path

from openrs_jax.recipe.config import load_config


def apply_dapo(c, overlong_cache_len: int = 512):
    """Switches on DAPO's options in config `c` (returned)."""
    c.grpo.epsilon_low = 0.2
    c.grpo.epsilon_high = 0.28
    c.grpo.beta = 0.0
    c.grpo.loss_aggregation = "token_mean"
    c.rollout.dynamic_sampling = True
    c.rollout.dynamic_sampling_max_rounds = 4
    c.grpo.mask_truncated_completions = True
    if "soft_overlong" not in c.rewards.funcs:
        c.rewards.funcs = tuple(c.rewards.funcs) + ("soft_overlong",)
        c.rewards.weights = tuple(c.rewards.weights) + (1.0,)
    c.rewards.soft_overlong_max_len = 0  # = max_completion_length
    c.rewards.soft_overlong_cache_len = overlong_cache_len
    return c


def get_config():
    c = load_config(Path(__file__).with_name("exp2.py"))
    c.run.output_dir = "runs/dapo"
    return apply_dapo(c)
