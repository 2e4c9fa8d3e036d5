"""Training checkpoints as models: every command that takes a model accepts RUN/checkpoints/N and RUN.

One tiny run (3 steps, checkpoints at 2 and 3, a Hugging Face export at step 2 and at the end)
serves every test: what the commands read from the checkpoints must equal the trainer's own exports.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from openrs_jax.recipe.config import load_config
from openrs_jax.recipe.trainer import GRPOTrainer
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"
FAST = ["rewards.num_workers=0", "run.tensorboard=False", "run.log_completions=0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    config = load_config(TINY, [f"run.output_dir={out}", *FAST, "grpo.max_steps=3", "run.save_steps=2", "run.export_steps=(2,)"])
    GRPOTrainer(config).train()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["2", "3"]
    return out


def hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].numpy()


IDS = [1, 3, 20, 27, 21, 28, 4, 5]  # <bos><User>3+4=<Assistant><think>\n in the tiny vocabulary


def test_step_folder_converts_to_the_trainers_export_at_that_step(run_dir, tmp_path):
    from conversion import flax_to_hf

    out = tmp_path / "step2-hf"
    flax_to_hf.main(["--ckpt", str(run_dir / "checkpoints" / "2"), "--out", str(out), "--dtype", "float32"])
    ours, trainers = hf_logits(out, IDS), hf_logits(run_dir / "hf-step-2", IDS)
    np.testing.assert_array_equal(ours, trainers)
    # Not a vacuous match: step 2's weights differ from the final ones.
    assert np.abs(ours - hf_logits(run_dir / "hf", IDS)).max() > 1e-4
    # The run's tokenizer comes along, so the folder is complete for transformers and vLLM.
    assert (out / "tokenizer.json").read_bytes() == (run_dir / "hf-step-2" / "tokenizer.json").read_bytes()


def test_run_folder_means_its_latest_checkpoint(run_dir, tmp_path):
    from conversion.flax_to_hf import convert
    from openrs_jax.core.model import load_params, read_config
    from openrs_jax.core.model.sources import describe, find_training_checkpoint

    assert find_training_checkpoint(run_dir).step == 3
    assert describe(run_dir) == str((run_dir / "checkpoints" / "3").resolve())
    assert read_config(run_dir).vocab_size == 29
    convert(run_dir, tmp_path / "latest", dtype="float32")
    np.testing.assert_array_equal(hf_logits(tmp_path / "latest", IDS), hf_logits(run_dir / "hf", IDS))
    # The parameters only: the same tree as a Hugging Face directory gives, no optimizer state.
    from_ckpt, _ = load_params(run_dir)
    from_hf, _ = load_params(run_dir / "hf")
    assert jax.tree.structure(from_ckpt) == jax.tree.structure(from_hf)
    for a, b in zip(jax.tree.leaves(from_ckpt), jax.tree.leaves(from_hf)):
        np.testing.assert_array_equal(a, b)


def test_generate_accepts_the_run_folder(run_dir, tmp_path):
    from openrs_jax.generate import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+{b}="}) + "\n" for a, b in [(1, 2), (3, 4), (0, 4)]))
    common = ["--prompts", str(prompts), "--temperature", "0", "--max_new_tokens", "3", "--dtype", "float32"]
    from_run = main(["--model", str(run_dir), "--out", str(tmp_path / "a.jsonl"), *common])
    from_hf = main(["--model", str(run_dir / "hf"), "--out", str(tmp_path / "b.jsonl"), *common])
    assert [r["completion_ids"] for r in from_run] == [r["completion_ids"] for r in from_hf]
    assert all("text" in r for r in from_run)  # the run's tokenizer was found


def test_evaluate_accepts_the_run_folder(run_dir, tmp_path):
    from openrs_jax.evaluate import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "aime24.jsonl").write_text(
        "".join(json.dumps({"problem": f"{a}+{b}=", "answer": str(a + b)}) + "\n" for a, b in [(1, 2), (2, 2)])
    )
    common = ["--tasks", "aime24", "--data_dir", str(data), "--max_new_tokens", "2", "--dtype", "float32",
              "--temperature", "0", "--no_progress"]
    assert main(["--model", str(run_dir), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["--model", str(run_dir / "hf"), "--out", str(tmp_path / "b"), *common]) == 0
    rows = lambda d: [(r["index"], r["completion"]) for r in map(json.loads, (d / "details_aime24.jsonl").open())]  # noqa: E731
    assert rows(tmp_path / "a") == rows(tmp_path / "b") and len(rows(tmp_path / "a")) == 2
    settings = json.loads((tmp_path / "a" / "eval_config.json").read_text())
    assert settings["generation"]["model"] == str((run_dir / "checkpoints" / "3").resolve())


def test_training_starts_from_a_checkpoint(run_dir, tmp_path):
    from openrs_jax.core.checkpoint import read_step_params

    step2 = run_dir / "checkpoints" / "2"
    config = load_config(TINY, [f"run.output_dir={tmp_path / 'next'}", *FAST, f"model.path={step2}", "grpo.max_steps=1"])
    trainer = GRPOTrainer(config)
    try:
        got = jax.tree.map(np.asarray, jax.device_get(trainer.state.params))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(read_step_params(step2))):
            np.testing.assert_array_equal(a, b)
        assert trainer.policy.tokenizer.vocab_size == 29
    finally:
        trainer.close()
    # The new run saved its tokenizer, so its own checkpoints will be usable alone.
    assert (tmp_path / "next" / "tokenizer" / "tokenizer.json").is_file()


def test_curate_difficulty_accepts_the_run_folder(run_dir, tmp_path):
    from openrs_jax.curate import main

    stats = main(["difficulty", "--input", "builtin:sums", "--output_dir", str(tmp_path / "d"), "--model",
                  str(run_dir), "--num_samples", "2", "--max_new_tokens", "2", "--dtype", "float32",
                  "--system_prompt", "none", "--reward_workers", "0", "--no_progress"])
    assert stats["rows_in"] == 25
    rates = [json.loads(line) for line in (tmp_path / "d" / "pass_rates.jsonl").read_text().splitlines()]
    assert len(rates) == 25


def test_folders_that_hold_no_model_are_named_in_the_error(tmp_path):
    from openrs_jax.core.model import load_params

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a model: give a Hugging Face model directory .*training run folder"):
        load_params(tmp_path / "empty")
    partial = tmp_path / "interrupted" / "checkpoints" / "4.orbax-checkpoint-tmp-1733000000"
    partial.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds no complete checkpoint .*only incomplete saves: 4\.orbax"):
        load_params(tmp_path / "interrupted")
    with pytest.raises(ValueError, match="is an incomplete checkpoint"):
        load_params(partial)
