"""Faults, bad input and interruptions: nothing loses a run, every mistake is named."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from openrs_jax.recipe.config import load_config
from openrs_jax.recipe.trainer import GRPOTrainer
from tests.conftest import REPO_ROOT, make_hf_model

TINY = REPO_ROOT / "configs" / "tiny.py"
FAST = ["rewards.num_workers=0", "run.tensorboard=False", "run.log_completions=0"]


def trainer(tmp_path: Path, *overrides: str) -> GRPOTrainer:
    return GRPOTrainer(load_config(TINY, [f"run.output_dir={tmp_path / 'run'}", *FAST, *overrides]))


def metrics_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- non-finite steps and failing rewards -------------------------------------------------------

def test_non_finite_steps_are_not_applied_and_stop_the_run(tmp_path):
    t = trainer(tmp_path, "rewards.funcs=tests.faulty_rewards:nan_reward", "rewards.weights=(1.0,)",
                "run.max_bad_steps=2", "grpo.max_steps=10")
    before = jax.tree.map(np.asarray, jax.device_get(t.state.params))
    with pytest.raises(ValueError, match="stopping at step 2: 2 steps in a row had a non-finite loss"):
        t.train()
    after = jax.tree.map(np.asarray, jax.device_get(t.state.params))
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        assert np.array_equal(x, y)  # no NaN reached the weights
    assert [m["skipped"] for m in metrics_of(tmp_path / "run")] == [1.0, 1.0]
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()  # the last good weights, saved


def test_a_raising_reward_scores_zero_and_is_counted(tmp_path):
    t = trainer(tmp_path, "rewards.funcs=accuracy,tests.faulty_rewards:raising_reward",
                "rewards.weights=(1.0,1.0)", "grpo.max_steps=1")
    t.train()
    (m,) = metrics_of(tmp_path / "run")
    assert m["rewards/errors"] == 128 and m["rewards/tests.faulty_rewards:raising_reward"] == 0.0
    assert np.isfinite(m["loss"])


def test_no_space_left_on_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    t = trainer(tmp_path, "grpo.max_steps=2", "run.save_steps=1")
    t.train_one_step()
    t.save_checkpoint()
    t.train_one_step()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(t.checkpointer.manager, "save", full_disk)
    with pytest.raises(ValueError, match="could not save checkpoint 2 .*No space left on device.*previous checkpoint is intact"):
        t.save_checkpoint()
    monkeypatch.undo()
    t.close()
    resumed = trainer(tmp_path, "grpo.max_steps=2", "run.resume=True")
    assert resumed.step == 1
    resumed.close()


# --- bad input fails fast -----------------------------------------------------------------------

@pytest.fixture
def real_dirs(tmp_path):
    """A tiny HF model directory with the built-in tokenizer, and a small dataset file."""
    from openrs_jax.recipe import toy

    model = make_hf_model(tmp_path / "model", vocab_size=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).write_text((toy.BUILTINS["builtin:tiny"] / name).read_text())
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"problem": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(4)))
    return model, data


def expect_error(tmp_path, message: str, *overrides: str) -> None:
    with pytest.raises(ValueError, match=message):
        trainer(tmp_path, *overrides)


def test_missing_model_path(tmp_path):
    expect_error(tmp_path, "model path .*nope does not exist", f"model.path={tmp_path / 'nope'}")


def test_model_of_another_architecture(tmp_path, real_dirs):
    model, _ = real_dirs
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "llama"
    (model / "config.json").write_text(json.dumps(cfg))
    expect_error(tmp_path, "model_type='llama'", f"model.path={model}")


def test_model_directory_without_weights(tmp_path, real_dirs):
    model, _ = real_dirs
    (model / "model.safetensors").unlink()
    expect_error(tmp_path, "has a config.json but no weights", f"model.path={model}")


def test_tokenizer_without_chat_template(tmp_path, real_dirs):
    model, _ = real_dirs
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    del cfg["chat_template"]
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    expect_error(tmp_path, "has no chat template", f"model.path={model}")


def test_tokenizer_without_eos(tmp_path, real_dirs):
    model, _ = real_dirs
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    del cfg["eos_token"]
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    expect_error(tmp_path, "defines no eos_token", f"model.path={model}")


def test_dataset_problems(tmp_path, real_dirs):
    expect_error(tmp_path, "dataset file .*missing.jsonl does not exist", f"data.dataset={tmp_path / 'missing.jsonl'}")
    (tmp_path / "empty.jsonl").write_text("")
    expect_error(tmp_path, "is empty", f"data.dataset={tmp_path / 'empty.jsonl'}")
    (tmp_path / "cols.jsonl").write_text(json.dumps({"question": "1+1="}) + "\n")
    expect_error(tmp_path, "lacks the column", f"data.dataset={tmp_path / 'cols.jsonl'}")
    expect_error(tmp_path, "every prompt .* longer than max_prompt_length=3", "data.max_prompt_length=3")


def test_checkpoint_of_another_model_shape(tmp_path, real_dirs):
    t = trainer(tmp_path, "grpo.max_steps=1")
    t.train()
    model, data = real_dirs
    expect_error(tmp_path, "written for another model shape", "run.resume=True", f"model.path={model}",
                 f"data.dataset={data}", "rollout.prompts_per_step=4", "rollout.num_generations=4", "grpo.micro_batch_size=8")


# --- interruptions ------------------------------------------------------------------------------

def start_cli(out: Path, *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "openrs_jax.train", "--config", str(TINY), f"--config.run.output_dir={out}",
            *(f"--config.{o}" for o in FAST), *(f"--config.{o}" for o in overrides)]
    return subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_steps(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = out / "metrics.jsonl"
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("run made no progress")


def final_tensors(out: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(out / "hf" / "model.safetensors"))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = start_cli(out, "grpo.max_steps=1000", "run.save_steps=1000")
    wait_for_steps(out, 2, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "stopped by signal" in output and "Traceback" not in output
    last = metrics_of(out)[-1]["step"]
    assert (out / "checkpoints" / str(last)).is_dir()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    steps = ["grpo.max_steps=6", "run.save_steps=2"]
    # The uninterrupted run in this process: the same XLA programs as the CLI's.
    GRPOTrainer(load_config(TINY, [f"run.output_dir={tmp_path / 'straight'}", *FAST, *steps])).train()

    out = tmp_path / "killed"
    rng = random.Random(0)
    for attempt in range(2):
        proc = start_cli(out, *steps, *(["run.resume=True"] if attempt else []))
        done_before = len(metrics_of(out)) if (out / "metrics.jsonl").is_file() else 0
        wait_for_steps(out, min(done_before + 1, 5), proc)
        time.sleep(rng.uniform(0.0, 1.5))  # lands in steps, saves, or log writes
        proc.kill()
        proc.wait()
    proc = start_cli(out, *steps, "run.resume=True")
    assert proc.wait(timeout=600) == 0, proc.stdout.read()

    a, b = final_tensors(tmp_path / "straight"), final_tensors(out)
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert [m["reward"] for m in metrics_of(out)] == [m["reward"] for m in metrics_of(tmp_path / "straight")]
