"""Run configs: the recipe's values, overrides, and clear errors for mistakes."""

from __future__ import annotations

import pytest

from openrs_jax.recipe.config import ENGLISH_ONLY, SYSTEM_PROMPT, load_config, validate
from openrs_jax.errors import UserError
from openrs_jax.train import parse_args
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def recipe_common(c) -> None:
    """docs/recipe.md values (Rollouts, GRPO update, Experiments) shared by the three experiments."""
    assert c.model_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert c.learning_rate == 1e-6 and c.max_steps == 500 and c.save_steps == 50
    assert c.prompts_per_step == 12 and c.num_generations == 6
    assert c.temperature == 0.7 and c.top_p == 1.0 and c.top_k == 0
    assert c.beta == 0.04 and c.epsilon_low == 0.2 and c.epsilon_high == 0.2 and c.num_iterations == 1
    assert c.loss_aggregation == "group_token_mean" and c.scale_rewards
    assert c.warmup_ratio == 0.1 and c.min_lr_rate == pytest.approx(0.1)  # 1e-6 -> 1e-7
    assert c.max_grad_norm == 1.0 and c.weight_decay == 0.0 and c.seed == 42
    assert c.max_prompt_length == 512 and c.compute_dtype == "bfloat16" and c.remat != "none"
    assert tuple(c.reward_weights) == (1.0, 2.0)


def test_exp1(hf_model_dir):
    c = load_config(CONFIGS / "exp1.py")
    recipe_common(c)
    assert c.dataset_name == "knoveleng/open-s1" and c.max_completion_length == 4096
    assert tuple(c.reward_funcs) == ("format", "accuracy") and c.system_prompt == SYSTEM_PROMPT
    c = load_config(CONFIGS / "exp1.py", [f"model_path={hf_model_dir}"])
    validate(c, device_count=1)
    assert c.tokenizer_path == str(hf_model_dir)


def test_exp2():
    c = load_config(CONFIGS / "exp2.py")
    recipe_common(c)
    assert c.dataset_name == "knoveleng/open-rs" and c.max_completion_length == 3584
    assert tuple(c.reward_funcs) == ("format", "accuracy") and c.system_prompt == SYSTEM_PROMPT
    validate(c, device_count=3)


def test_exp3():
    c = load_config(CONFIGS / "exp3.py")
    recipe_common(c)
    assert c.dataset_name == "knoveleng/open-rs" and c.max_completion_length == 3584
    assert tuple(c.reward_funcs) == ("format", "cosine")
    assert c.system_prompt == SYSTEM_PROMPT + ENGLISH_ONLY and c.system_prompt.endswith("NOT use other languages.")
    assert "\\boxed{{}}" in c.system_prompt  # literal double braces, as in the original
    assert (c.cosine_min_value_wrong, c.cosine_max_value_wrong) == (0.0, -0.5)
    assert (c.cosine_min_value_correct, c.cosine_max_value_correct, c.cosine_max_len) == (0.5, 1.0, 3584)


def test_overrides_reach_the_config():
    c = load_config(CONFIGS / "tiny.py", ["learning_rate=2e-6", "max_steps=7", "resume=True",
                                          "reward_funcs=accuracy,format", "mesh.fsdp=2", "output_dir=/tmp/x"])
    assert c.learning_rate == 2e-6 and c.max_steps == 7 and c.resume is True
    assert tuple(c.reward_funcs) == ("accuracy", "format") and c.mesh.fsdp == 2 and c.output_dir == "/tmp/x"


def test_command_line_parsing():
    path, overrides = parse_args(["--config", "configs/tiny.py", "--config.max_steps=3"])
    assert path == "configs/tiny.py" and overrides == ["max_steps=3"]
    with pytest.raises(UserError, match="--config.key=value"):
        parse_args(["--config", "configs/tiny.py", "--max_steps=3"])


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(UserError, match="unknown config key 'learnig_rate'; did you mean 'learning_rate'"):
        load_config(CONFIGS / "tiny.py", ["learnig_rate=1e-5"])


def test_wrong_type_is_refused():
    with pytest.raises(UserError, match="max_steps=ten: expected a int"):
        load_config(CONFIGS / "tiny.py", ["max_steps=ten"])


def test_missing_config_file():
    with pytest.raises(UserError, match="does not exist"):
        load_config(CONFIGS / "nope.py")


@pytest.mark.parametrize(
    "override, message",
    [
        ("num_generations=1", "at least 2 completions"),
        ("micro_batch_size=5", "must divide prompts_per_step x num_generations"),
        ("reward_funcs=accuracy,speling", "unknown reward function"),
        ("loss_aggregation=mean", "unknown loss_aggregation"),
        ("reward_weights=(1.0,2.0,3.0)", "reward_weights has 3 values"),
        ("top_p=0.0", "top_p"),
    ],
)
def test_bad_values_are_refused(override, message):
    c = load_config(CONFIGS / "tiny.py", [override])
    with pytest.raises(UserError, match=message):
        validate(c, device_count=1)


def test_rows_must_divide_over_devices():
    c = load_config(CONFIGS / "tiny.py", ["prompts_per_step=3", "num_generations=3", "micro_batch_size=9"])
    with pytest.raises(UserError, match="rows must divide over 4 devices"):
        validate(c, device_count=4)
