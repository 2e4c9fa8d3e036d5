"""The GRPO variants through the trainer on the built-in tiny setup (CPU): DAPO's options learn,
and dynamic sampling with a refreshed reference resumes exactly."""

from __future__ import annotations

import importlib.util

import jax
import numpy as np

from openrs_jax.recipe.config import load_config
from openrs_jax.recipe.trainer import GRPOTrainer
from tests.conftest import REPO_ROOT
from tests.test_train import FAST, TINY, final_params, read_metrics


def dapo_module():
    spec = importlib.util.spec_from_file_location("dapo_config", REPO_ROOT / "configs" / "dapo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(tmp_path, name: str, *overrides: str, dapo: bool = False) -> GRPOTrainer:
    config = load_config(TINY, [f"run.output_dir={tmp_path / name}", *FAST, *overrides])
    if dapo:
        with config.unlocked():
            # Three tokens: an answer token and EOS fit, the soft punishment hits the third.
            config.rollout.max_completion_length = 3
            dapo_module().apply_dapo(config, overlong_cache_len=1)
    trainer = GRPOTrainer(config)
    trainer.train()
    return trainer


def test_dapo_config_switches_on_the_dapo_set():
    c = load_config(REPO_ROOT / "configs" / "dapo.py")
    assert (c.grpo.epsilon_high, c.grpo.beta, c.grpo.loss_aggregation, c.rollout.dynamic_sampling, c.grpo.mask_truncated_completions) == (
        0.28, 0.0, "token_mean", True, True)
    assert c.rewards.funcs == ("format", "accuracy", "soft_overlong") and c.rewards.soft_overlong_cache_len == 512


def test_tiny_config_learns_with_the_dapo_options(tmp_path):
    """The random tiny model truncates most completions at 3 tokens; the overlong punishment,
    masking and dynamic sampling teach it to stop: the reward over all drawn completions rises."""
    run(tmp_path, "run", "grpo.max_steps=24", "run.save_steps=100", "run.log_completions=0", dapo=True)
    metrics = read_metrics(tmp_path / "run")
    drawn = [m["dynamic_sampling/all/reward"] for m in metrics]
    truncated = [m["truncated_fraction"] for m in metrics]
    print(f"drawn reward {np.mean(drawn[:3]):.3f} -> {np.mean(drawn[-5:]):.3f}; "
          f"truncated {np.mean(truncated[:3]):.3f} -> {np.mean(truncated[-5:]):.3f}")
    assert np.mean(drawn[-5:]) - np.mean(drawn[:3]) >= 0.4
    assert np.mean(truncated[-5:]) < 0.5 * np.mean(truncated[:3])
    assert any(m["dynamic_sampling/extra_rollouts"] > 0 for m in metrics)
    assert all("kl" not in m for m in metrics)  # beta = 0: no reference at all


def test_dynamic_sampling_and_reference_refresh_resume_exactly(tmp_path):
    options = ["rollout.dynamic_sampling=True", "rollout.dynamic_sampling_max_rounds=2", "grpo.ref_sync_steps=1", "grpo.ref_mixup_alpha=0.5",
               "grpo.scale_rewards=batch", "run.save_steps=2"]
    straight = run(tmp_path, "straight", "grpo.max_steps=3", *options)
    run(tmp_path, "parts", "grpo.max_steps=2", *options)
    resumed = run(tmp_path, "parts", "grpo.max_steps=3", "run.resume=True", *options)
    for x, y in zip(jax.tree.leaves(final_params(straight)), jax.tree.leaves(final_params(resumed))):
        assert np.array_equal(x, y)
    for x, y in zip(jax.tree.leaves(jax.device_get(straight.ref_params)), jax.tree.leaves(jax.device_get(resumed.ref_params))):
        assert np.array_equal(x, y)
    ma, mb = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "parts")
    keys = ["reward", "kl", "loss", "dynamic_sampling/extra_rollouts", "dynamic_sampling/dropped_groups"]
    assert [[m[k] for k in keys] for m in ma] == [[m[k] for k in keys] for m in mb]
    assert sum(m["dynamic_sampling/extra_rollouts"] for m in ma) > 0  # refills happened (and were replayed)
    assert straight.order.state() == resumed.order.state()
