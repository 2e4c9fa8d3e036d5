"""Run configs: the recipe's values, overrides, and clear errors for mistakes."""

from __future__ import annotations

import pytest

from openrs_jax.recipe.config import load_config, validate
from openrs_jax.recipe.prompts import SYSTEM_PROMPT, SYSTEM_PROMPT_EXP3
from openrs_jax.train import parse_command
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def recipe_common(c) -> None:
    """docs/recipe.md values (Rollouts, GRPO update, Experiments) shared by the three experiments."""
    assert c.model.path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert c.grpo.learning_rate == 1e-6 and c.grpo.max_steps == 500 and c.run.save_steps == 50
    assert c.rollout.prompts_per_step == 12 and c.rollout.num_generations == 6
    assert c.rollout.temperature == 0.7 and c.rollout.top_p == 1.0 and c.rollout.top_k == 0
    assert c.grpo.beta == 0.04 and c.grpo.epsilon_low == 0.2 and c.grpo.epsilon_high == 0.2 and c.grpo.num_iterations == 1
    assert c.grpo.loss_aggregation == "group_token_mean" and c.grpo.scale_rewards
    assert c.grpo.warmup_ratio == 0.1 and c.grpo.min_lr_rate == pytest.approx(0.1)  # 1e-6 -> 1e-7
    assert c.grpo.max_grad_norm == 1.0 and c.grpo.weight_decay == 0.0 and c.run.seed == 42
    assert c.data.max_prompt_length == 512 and c.model.compute_dtype == "bfloat16" and c.model.remat != "none"
    assert tuple(c.rewards.weights) == (1.0, 2.0)


def test_exp1(hf_model_dir):
    c = load_config(CONFIGS / "exp1.py")
    recipe_common(c)
    assert c.data.dataset == "knoveleng/open-s1" and c.rollout.max_completion_length == 4096
    assert tuple(c.rewards.funcs) == ("format", "accuracy") and c.data.system_prompt == SYSTEM_PROMPT
    c = load_config(CONFIGS / "exp1.py", [f"model.path={hf_model_dir}"])
    validate(c, device_count=1)
    assert c.model.path == str(hf_model_dir) and c.model.tokenizer_path == ""  # empty: the model's


def test_exp2():
    c = load_config(CONFIGS / "exp2.py")
    recipe_common(c)
    assert c.data.dataset == "knoveleng/open-rs" and c.rollout.max_completion_length == 3584
    assert tuple(c.rewards.funcs) == ("format", "accuracy") and c.data.system_prompt == SYSTEM_PROMPT
    validate(c, device_count=3)


def test_exp3():
    c = load_config(CONFIGS / "exp3.py")
    recipe_common(c)
    assert c.data.dataset == "knoveleng/open-rs" and c.rollout.max_completion_length == 3584
    assert tuple(c.rewards.funcs) == ("format", "cosine")
    assert c.data.system_prompt == SYSTEM_PROMPT_EXP3 and c.data.system_prompt.endswith("NOT use other languages.")
    assert "\\boxed{{}}" in c.data.system_prompt  # literal double braces, as in the original
    assert (c.rewards.cosine_min_value_wrong, c.rewards.cosine_max_value_wrong) == (0.0, -0.5)
    assert (c.rewards.cosine_min_value_correct, c.rewards.cosine_max_value_correct, c.rewards.cosine_max_len) == (0.5, 1.0, 3584)


def test_overrides_reach_the_config():
    c = load_config(CONFIGS / "tiny.py", ["grpo.learning_rate=2e-6", "grpo.max_steps=7", "run.resume=True",
                                          "rewards.funcs=accuracy,format", "mesh.fsdp=2", "run.output_dir=/tmp/x"])
    assert c.grpo.learning_rate == 2e-6 and c.grpo.max_steps == 7 and c.run.resume is True
    assert tuple(c.rewards.funcs) == ("accuracy", "format") and c.mesh.fsdp == 2 and c.run.output_dir == "/tmp/x"


def test_command_line_parsing():
    fv, show = parse_command(["--config", str(CONFIGS / "tiny.py"), "--config.grpo.max_steps=3",
                              "--config.rewards.funcs=accuracy", "--config.rollout.temperature=0.5"])
    assert not show and fv.config.grpo.max_steps == 3 and fv.config.rollout.temperature == 0.5
    assert fv.config.rewards.funcs == ("accuracy",) and fv.config.model.path == "builtin:tiny"
    with pytest.raises(ValueError, match="max_steps"):
        parse_command(["--config", str(CONFIGS / "tiny.py"), "--max_steps=3"])


def test_misspelt_key_is_named_with_a_suggestion():
    with pytest.raises(ValueError, match="unknown config key 'grpo.learnig_rate'; did you mean 'grpo.learning_rate'"):
        load_config(CONFIGS / "tiny.py", ["grpo.learnig_rate=1e-5"])


@pytest.mark.parametrize("old, new", [("learning_rate", "grpo.learning_rate"), ("model_path", "model.path"),
                                      ("eval_every", "eval.every"), ("seed", "run.seed")])
def test_old_flat_key_on_the_command_line_names_the_new_key(old, new):
    with pytest.raises(ValueError, match=f"config key '{old}' is now '{new}'.*--config.{new}="):
        parse_command(["--config", str(CONFIGS / "tiny.py"), f"--config.{old}=1"])


@pytest.mark.parametrize("line", ["c.learning_rate = 2e-6", "c.grpo.max_steps = c.learning_rate"])  # config_rename: keep
def test_old_flat_key_in_a_config_file_names_the_new_key(tmp_path, line):
    path = tmp_path / "mine.py"
    path.write_text(f"from openrs_jax.recipe.config import base_config\n\n\ndef get_config():\n"
                    f"    c = base_config()\n    {line}\n    return c\n")
    with pytest.raises(ValueError, match=r"mine.py: config key 'learning_rate' is now 'grpo.learning_rate'"):
        load_config(path)


def test_wrong_type_is_refused():
    with pytest.raises(ValueError, match="max_steps=ten: invalid literal for int"):
        load_config(CONFIGS / "tiny.py", ["grpo.max_steps=ten"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(CONFIGS / "nope.py")


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.num_generations=1", "--config.rollout.num_generations=1 must be >= 2"),
        ("grpo.micro_batch_size=5", "must divide rollout.prompts_per_step x rollout.num_generations"),
        ("rewards.funcs=accuracy,speling", "--config.rewards: unknown reward function"),
        ("grpo.loss_aggregation=mean", "--config.grpo.loss_aggregation: unknown loss_aggregation 'mean'"),
        ("rewards.weights=(1.0,2.0,3.0)", "--config.rewards: 2 reward functions but 3 weights"),
        ("rollout.top_p=0.0", "--config.rollout.top_p must be in"),
        ("grpo.warmup_ratio=1.5", "--config.grpo.warmup_ratio must be in"),
        ("model.remat=some", "--config.model.remat: unknown remat policy 'some'"),
        ("data.prompt_order=random", "--config.data.prompt_order='random': use numpy or trl"),
        ("run.export_dtype=int8", "--config.run.export_dtype='int8'"),
    ],
)
def test_bad_values_are_refused(override, message):
    c = load_config(CONFIGS / "tiny.py", [override])
    with pytest.raises(ValueError, match=message):
        validate(c, device_count=1)


def test_rows_must_divide_over_devices():
    c = load_config(CONFIGS / "tiny.py", ["rollout.prompts_per_step=3", "rollout.num_generations=3", "grpo.micro_batch_size=9"])
    with pytest.raises(ValueError, match="rows must divide over 4 devices"):
        validate(c, device_count=4)
