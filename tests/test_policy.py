"""The policy layer: every kind of model path resolves to the same pieces, checked against
transformers (greedy tokens), the files written (checkpoints) and the naming rules."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from openrs_jax.core import policy as policy_module
from openrs_jax.core.model import Qwen2Config, read_config
from openrs_jax.core.model_paths import ACCEPTED, BUILTIN_MODELS
from openrs_jax.core.policy import Policy, default_compute_dtype, resolve_dtype
from openrs_jax.core.sampling import SamplingParams
from tests.conftest import make_hf_model


def test_hf_directory_greedy_tokens_equal_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = make_hf_model(tmp_path / "hf")
    policy = Policy.load(str(model_dir), compute_dtype="float32", need_tokenizer=False, prompt_bucket=8)
    assert policy.tokenizer is None and not policy.random_weights and policy.model_dir == str(model_dir)
    assert policy.model_config.vocab_size == 256 and policy.model_config.dtype == "float32"
    params = policy.load_params()
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
    assert all(x.sharding.mesh == policy.mesh for x in jax.tree.leaves(params))

    prompts = [[5, 9, 33, 7], [100, 3], [17, 18, 19, 20, 21, 22, 23, 24, 25, 26]]
    new = 6
    out = policy.sampler.generate(policy.sampler.prepare(params), prompts, 1,
                                  SamplingParams(temperature=0.0, max_new_tokens=new, eos_ids=(), pad_id=0))
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for row, prompt in enumerate(prompts):
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=new, min_new_tokens=new,
                              eos_token_id=None, pad_token_id=0)
        assert out.completion_ids[row, :new].tolist() == ref[0, len(prompt):].tolist()


def test_builtin_tiny_resolves_to_the_demo_model_and_its_tokenizer():
    policy = Policy.load("builtin:tiny", compute_dtype="float32")
    assert policy.model_dir == "builtin:tiny" and policy.random_weights  # no files to read weights from
    assert policy.tokenizer_dir == BUILTIN_MODELS["builtin:tiny"] and policy.tokenizer.has_chat_template
    assert policy.model_config == read_config("builtin:tiny").replace(remat="full")
    assert policy.eos_ids == (policy.tokenizer.eos_id,) == (2,)
    a, b, c = (jax.tree.leaves(policy.load_params(seed)) for seed in (0, 0, 1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # seeded: the same random weights each time
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def test_preset_resolves_to_its_shape_with_random_weights_and_the_demo_tokenizer():
    policy = Policy.load("preset:20m,num_hidden_layers=1", compute_dtype="float32", param_dtype="bfloat16",
                         remat="none")
    config = policy.model_config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (256, 1, 32000)
    assert config == Qwen2Config.preset("20m", num_hidden_layers=1, dtype="float32", param_dtype="bfloat16")
    assert (config.param_dtype, config.dtype) == ("bfloat16", "float32") and policy.random_weights
    assert policy.tokenizer_dir == BUILTIN_MODELS["builtin:tiny"]
    assert policy.eos_ids == (2,)  # the preset's eos_token_id and the demo tokenizer's agree
    assert {str(x.dtype) for x in jax.tree.leaves(policy.load_params())} == {"bfloat16"}
    assert Qwen2Config.preset("preset:1.5b") == Qwen2Config(bos_token_id=151643, eos_token_id=151643)
    with pytest.raises(ValueError, match="unknown model preset '7b'.*preset:1.5b.*builtin:tiny"):
        Policy.load("preset:7b")


def _save_run(run: Path, steps: dict[int, dict]) -> None:
    from openrs_jax.core.model.sources import save_run_tokenizer
    from openrs_jax.core.checkpoint import Checkpointer

    config = read_config("builtin:tiny")
    ckpt = Checkpointer(run)
    for step, params in steps.items():
        ckpt.save(step, {"params": params}, {"step": step, "model_config": config.to_hf_dict()})
    ckpt.close()
    save_run_tokenizer(BUILTIN_MODELS["builtin:tiny"], run)


def test_run_folder_and_step_folder_resolve_to_their_checkpoints(tmp_path):
    tiny = Policy.load("builtin:tiny", compute_dtype="float32")
    first, second = (jax.tree.map(np.asarray, tiny.load_params(seed)) for seed in (1, 2))
    run = tmp_path / "run"
    _save_run(run, {1: first, 2: second})

    latest = Policy.load(str(run), compute_dtype="float32")
    assert latest.tokenizer_dir == run / "tokenizer" and not latest.random_weights
    assert latest.model_config == tiny.model_config
    for got, want in zip(jax.tree.leaves(latest.load_params()), jax.tree.leaves(second)):
        np.testing.assert_array_equal(np.asarray(got), want)
    step1 = Policy.load(str(run / "checkpoints" / "1"), compute_dtype="float32")
    assert step1.tokenizer_dir == run / "tokenizer"
    for got, want in zip(jax.tree.leaves(step1.load_params()), jax.tree.leaves(first)):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert step1.describe() == str((run / "checkpoints" / "1").resolve())


def test_dtype_rule_is_bfloat16_on_gpu_float32_elsewhere(monkeypatch):
    assert default_compute_dtype() == "float32" == resolve_dtype("auto")  # these tests run on CPUs
    assert resolve_dtype("bfloat16") == "bfloat16"
    assert Policy.load("builtin:tiny").model_config.dtype == "float32"
    monkeypatch.setattr(policy_module.jax, "default_backend", lambda: "gpu")
    assert default_compute_dtype() == "bfloat16" == resolve_dtype(None)
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8")


def test_bad_paths_give_one_line_naming_the_accepted_kinds(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text((BUILTIN_MODELS["builtin:tiny"] / "config.json").read_text())
    cases = {
        str(tmp_path / "missing"): "does not exist: give ",
        str(tmp_path / "empty"): "is not a model: give ",
        str(tmp_path / "config_only"): "has a config.json but no weights",
    }
    for path, what in cases.items():
        with pytest.raises(ValueError) as e:
            Policy.load(path)
        assert what in str(e.value) and ACCEPTED in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="unknown built-in model 'builtin:huge'; valid: builtin:tiny"):
        Policy.load("builtin:huge")
    # Benchmarks take a config without weights: random ones of its shape.
    assert Policy.load(str(tmp_path / "config_only"), allow_config_only=True, need_tokenizer=False).random_weights


def test_tokenizer_checks_name_the_flags(tmp_path):
    model_dir = make_hf_model(tmp_path / "hf", vocab_size=16)
    with pytest.raises(ValueError, match="tokenizer has 29 tokens but the model only 16: --tokenizer does not "
                                        "belong to --model"):
        Policy.load(str(model_dir), tokenizer_path="builtin:tiny", flags=("--model", "--tokenizer"))
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        Policy.load(str(model_dir))


def test_stop_ids_join_tokenizer_model_config_and_generation_config(tmp_path):
    import json

    model_dir = make_hf_model(tmp_path / "hf", eos_token_id=3)
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7]}))
    assert Policy.load(str(model_dir), need_tokenizer=False).eos_ids == (3, 5, 7)
    # The demo tokenizer's EOS (2) joins them.
    assert Policy.load(str(model_dir), tokenizer_path="builtin:tiny").eos_ids == (2, 3, 5, 7)
