"""Exp1 of the paper: Exp2's recipe (configs/exp2.py) on open-s1 (18,615 problems), 4,096-token completions."""

from pathlib import Path

from openrs_jax.recipe.config import load_config


def get_config():
    c = load_config(Path(__file__).with_name("exp2.py"))
    c.data.dataset = "knoveleng/open-s1"
    c.rollout.max_completion_length = 4096
    c.run.output_dir = "runs/exp1"
    return c
