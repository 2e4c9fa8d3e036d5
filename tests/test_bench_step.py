"""`python -m openrs_jax.bench step`, the shared shape handling of the bench subcommands, and
bench/gpu_exp2.sh at small shapes (CPU)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openrs_jax.bench import shapes, step
from openrs_jax.core.model import Qwen2Config
from tests.conftest import REPO_ROOT

EXP2 = str(REPO_ROOT / "configs" / "exp2.py")
TINY_SHAPES = ["--prompts_per_step", "2", "--num_generations", "2", "--max_new_tokens", "4", "--prompt_len", "16"]


def parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


# --- shapes -----------------------------------------------------------------------------------


def test_presets_give_the_recipe_model_and_small_shapes():
    big = shapes.model_config("preset:deepseek-r1-distill-qwen-1.5b")
    assert big == Qwen2Config(bos_token_id=151643, eos_token_id=151643)  # the real config.json's shape
    assert big.num_params() == 1_777_088_000
    assert shapes.model_config("preset:1.5b", dtype="bfloat16").dtype == "bfloat16"
    small = shapes.model_config("preset:20m,vocab_size=151936,num_hidden_layers=2")
    assert (small.hidden_size, small.intermediate_size, small.num_attention_heads, small.num_key_value_heads) == (
        256, 688, 8, 2)
    assert (small.vocab_size, small.num_hidden_layers) == (151936, 2)
    with pytest.raises(ValueError, match="unknown model preset"):
        shapes.model_config("preset:7b")
    with pytest.raises(ValueError, match="not a Qwen2Config field"):
        shapes.model_config("preset:20m,hidden=3")


def test_builtin_tiny_is_the_same_model_in_the_bench_as_everywhere():
    """One name, one model: `builtin:tiny` is the demo model train, generate and evaluate know."""
    from openrs_jax.core.model import read_config

    policy = shapes.load_policy("builtin:tiny")
    assert policy.random_weights and policy.model_config.vocab_size == read_config("builtin:tiny").vocab_size == 29
    assert shapes.model_config("builtin:tiny") == read_config("builtin:tiny")
    # The bench's old shape called preset:tiny (vocabulary 512) is gone: no two models share a name.
    with pytest.raises(ValueError, match="unknown model preset 'tiny'.*builtin:tiny"):
        shapes.model_config("preset:tiny")
    with pytest.raises(ValueError, match="--model=builtin:sums: a built-in dataset, not a model"):
        shapes.load_policy("builtin:sums")


def test_step_dataset_takes_builtins_and_never_tries_the_hub():
    from openrs_jax.recipe import toy
    from openrs_jax.core.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny")
    rows = step._select_rows("builtin:sums", tokenizer, "", 3, 16)
    assert [r["problem"] for r in rows] == ["0+0=", "0+1=", "0+2="]
    # A missing file or a Hub-like name: one line naming the bench's flag (not dataset_name).
    for name in ("org/missing-dataset", "missing.jsonl"):
        with pytest.raises(ValueError, match=f"--dataset {name} does not exist.*builtin:sums") as e:
            step._select_rows(name, tokenizer, "", 3, 16)
        assert "dataset_name" not in str(e.value)
    with pytest.raises(ValueError, match="--dataset=builtin:tiny: a built-in model, not a dataset"):
        step._select_rows("builtin:tiny", tokenizer, "", 3, 16)
    assert toy.resolve("builtin:sums").endswith("sums.jsonl")


def test_model_config_reads_directories_and_files(tmp_path):
    config = shapes.model_config("builtin:tiny")
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    assert shapes.model_config(tmp_path).hidden_size == config.hidden_size
    assert shapes.model_config(tmp_path / "config.json").vocab_size == config.vocab_size
    with pytest.raises(ValueError, match="does not exist"):
        shapes.model_config(tmp_path / "missing")


def test_run_config_fills_unset_flags_and_given_flags_win():
    args = parse(step, ["--model", "builtin:tiny", "--config", EXP2, "--max_new_tokens", "8", "--beta", "0.04"])
    run_config = shapes.apply_run_config(args)
    assert shapes.rows(run_config) == 72 and shapes.mesh_spec(run_config) == "data=1,fsdp=-1,tensor=1"
    assert (args.prompts_per_step, args.num_generations, args.prompt_len) == (12, 6, 512)
    assert args.max_new_tokens == 8  # given: wins over the config's 3584
    assert (args.micro_batch_size, args.remat, args.dtype, args.temperature) == (6, "full", "bfloat16", 0.7)
    assert args.mesh == "data=1,fsdp=-1,tensor=1" and args.loss_aggregation == "group_token_mean"
    # Without --config every flag keeps its default.
    args = parse(step, ["--model", "builtin:tiny"])
    assert shapes.apply_run_config(args) is None
    assert (args.prompts_per_step, args.max_new_tokens, args.dtype, args.micro_batch_size) == (4, 64, None, None)


def test_step_prompt_len_defaults_to_the_run_config():
    """--prompt_len is the run's max_prompt_length: the config's unless given."""
    args = parse(step, ["--model", "builtin:tiny", "--config", str(REPO_ROOT / "configs" / "tiny.py")])
    shapes.apply_run_config(args)
    assert args.prompt_len == 16
    args = parse(step, ["--model", "builtin:tiny", "--config", EXP2, "--prompt_len", "100"])
    shapes.apply_run_config(args)
    assert args.prompt_len == 100


def test_generated_prompts_fill_prompt_len_with_any_tokenizer():
    from openrs_jax.core.tokenizer import load_tokenizer
    from openrs_jax.recipe.config import SYSTEM_PROMPT
    from openrs_jax.recipe.prompts import render_prompt_ids
    from tests.conftest import shared_data

    for tokenizer, system_prompt, prompt_len in (
        (load_tokenizer("builtin:tiny"), "", 40),
        (load_tokenizer(shared_data("tokenizer", "deepseek-r1-distill-qwen")), SYSTEM_PROMPT, 512),
    ):
        rows = step.filled_rows(tokenizer, system_prompt, 3, prompt_len, seed=1)
        assert len({r["problem"] for r in rows}) == 3  # distinct prompts, same length budget
        for row in rows:
            terms = row["problem"][:-1].split("+")
            assert row["answer"] == str(sum(map(int, terms)))
            n = len(render_prompt_ids(tokenizer, row["problem"], system_prompt))
            longer = len(render_prompt_ids(tokenizer, row["problem"][:-1] + "+99=", system_prompt))
            assert n <= prompt_len < longer + 3  # as long as fits (one more term would not, or only just)
            assert n >= prompt_len - 4
    with pytest.raises(ValueError, match="--prompt_len 4 is shorter than the rendered prompt"):
        step.filled_rows(load_tokenizer("builtin:tiny"), "", 1, 4)


def test_step_dataset_rows_fit_real_training_prompts():
    """The real training sample has 4 prompts within the recipe's max_prompt_length (not within 64)."""
    from openrs_jax.core.tokenizer import load_tokenizer
    from openrs_jax.recipe.config import SYSTEM_PROMPT, base_config
    from tests.conftest import shared_data

    dataset = shared_data("train", "deepscaler_sample.jsonl")
    tokenizer = load_tokenizer(shared_data("tokenizer", "deepseek-r1-distill-qwen"))
    rows = step._select_rows(str(dataset), tokenizer, SYSTEM_PROMPT, 4, base_config().data.max_prompt_length)
    assert len(rows) == 4
    with pytest.raises(ValueError, match="fewer than 4 prompts of at most 64 tokens"):
        step._select_rows(str(dataset), tokenizer, SYSTEM_PROMPT, 4, 64)


def test_sampler_and_update_take_the_same_config():
    from openrs_jax.bench import sampler, update

    args = parse(sampler, ["--model", "builtin:tiny", "--config", EXP2, "--prompts", "3"])
    shapes.apply_run_config(args)
    assert (args.prompts, args.num_samples, args.prompt_len, args.new_tokens, args.dtype) == (3, 6, 512, 3584, "bfloat16")
    args = parse(update, ["--model", "builtin:tiny", "--config", EXP2])
    shapes.apply_run_config(args)
    assert (args.rows, args.num_generations, args.completion_len, args.micro_batch_size, args.remat) == (
        72, 6, 3584, 6, "full")


# --- figures ----------------------------------------------------------------------------------


def test_decode_bytes_per_step_counts_weights_and_the_attended_cache():
    from openrs_jax.bench.common import decode_bytes_per_step

    c = Qwen2Config(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=4, dtype="bfloat16")
    out = decode_bytes_per_step(c, rows=3, prompt_len=10, new_tokens=5)
    weights = (c.num_params() - 100 * 8) * 2 + 3 * 8 * 2  # all but the input table, bf16; 3 looked-up rows
    per_slot = 2 * 2 * 1 * 4 * 2  # K and V, 2 layers, 1 KV head of 4, bf16
    assert out["weight_bytes_per_step"] == weights
    assert out["kv_bytes_per_step_attended"] == int(3 * per_slot * (10 + 5 / 2))
    assert out["kv_bytes_per_step_full_cache"] == 3 * per_slot * (10 + 4)
    assert out["decode_bytes_per_step"] == weights + out["kv_bytes_per_step_attended"]
    # The 1.5B recipe model at Exp2's 72 rows: 3.09 GB of weights read, 4.76 GB of attended KV cache.
    big = shapes.model_config("preset:1.5b", dtype="bfloat16")
    exp2 = decode_bytes_per_step(big, rows=72, prompt_len=512, new_tokens=3584)
    assert exp2["weight_bytes_per_step"] == pytest.approx(3.09e9, rel=0.01)
    assert exp2["kv_bytes_per_step_attended"] == pytest.approx(72 * 28672 * 2304, rel=1e-6)


def test_forward_flops_are_a_third_of_training_flops():
    from openrs_jax.bench.update import forward_flops_per_token, train_flops_per_token

    c = shapes.model_config("preset:1.5b")
    assert forward_flops_per_token(c, 4096) * 3 == pytest.approx(train_flops_per_token(c, 4096))
    # 6 N per token dominates at this size (N = the 1.54 B matmul parameters + the 0.23 B head).
    assert train_flops_per_token(c, 0) == pytest.approx(6 * (1_777_088_000 - 151936 * 1536 - 1536))


def test_bench_reward_is_a_custom_reward_of_the_trainer():
    """The default reward goes through the trainer's 'package.module:function' mechanism."""
    from openrs_jax.recipe.rewards import get_reward_function

    assert step.parity_reward(["0246", "1357", "02x", ""], ["", "", "", ""]) == [1.0, 0.0, 1.0, 0.0]
    assert get_reward_function(step.BENCH_REWARD)(["0246", "13"], ["1", "1"]) == [1.0, 0.0]


# --- runs ---------------------------------------------------------------------------------------


def test_step_times_the_real_trainer():
    """`bench step` runs GRPOTrainer.train_one_step on builtin:tiny and reads the trainer's own times."""
    args = parse(step, ["--model", "builtin:tiny", *TINY_SHAPES, "--system_prompt", "", "--steps", "1",
                        "--mesh", "fsdp=1", "--reward_num_workers", "0"])
    result = step.run(args)
    assert result["random_weights"] and result["eos_ignored"] and result["reward_funcs"] == [step.BENCH_REWARD]
    assert result["dataset"] == "generated" and max(result["prompt_tokens"]) <= 16
    assert min(result["prompt_tokens"]) >= 12  # generated prompts fill --prompt_len
    assert result["rows"] == 4 and result["completion_tokens_per_step"] == 4 * 4  # ignore_eos: every token
    assert result["completion_len_trained"] == 4 and result["prompt_len_bucketed"] == 16
    assert len(result["step_times_s"]) == 1 and result["first_step_s"] > 0
    parts = sum(result[k] for k in ("rollout_s", "reward_s", "reference_s", "update_s"))
    assert parts <= result["step_time_s"] + 1e-6 and result["other_s"] >= -1e-6
    assert 0 < result["decode_s"] <= result["rollout_s"] and result["prefill_s"] > 0  # the sampler's own split
    step_record = result["per_step"][0]
    assert math.isfinite(step_record["loss"]) and step_record["kl"] >= 0 and step_record["completion_length"] == 4
    assert result["update_model_tflops"] > 0 and result["reference_model_tflops"] == pytest.approx(
        result["update_model_tflops"] / 3)
    assert result["update_mfu"] is None  # no known peak on a CPU in fp32
    assert result["decode_bytes_per_step"] > result["weight_bytes_per_step"] > 0
    assert result["copy_bandwidth_bytes_per_s"] > 0 and result["decode_bandwidth_use"] > 0
    assert result["memory_source"] and (result.get("peak_bytes_in_use") or result.get("host_peak_rss_bytes"))
    json.dumps(result)  # everything is JSON


def test_step_refuses_bad_requests():
    with pytest.raises(ValueError, match="micro_batch_size"):
        step.run(parse(step, ["--model", "builtin:tiny", *TINY_SHAPES, "--micro_batch_size", "3"]))
    with pytest.raises(ValueError, match="num_generations"):
        step.run(parse(step, ["--model", "builtin:tiny", "--num_generations", "1"]))


@pytest.mark.slow
def test_step_against_trl(tmp_path):
    """The product's trainer and TRL's GRPOTrainer on the same tiny weights, prompts and lengths."""
    pytest.importorskip("trl")
    args = parse(step, [
        "--model", "builtin:tiny", "--dataset", "builtin:sums", "--system_prompt", "", "--reward_funcs", "accuracy",
        "--reward_weights", "1.0", "--reward_num_workers", "0", *TINY_SHAPES, "--prompt_len", "16", "--steps", "1",
        "--no_copy_bandwidth", "--compare_trl", "--trl_threads", "1",
    ])
    result = step.run(args)
    assert result["reward_funcs"] == ["accuracy"] and result["dataset"] == "builtin:sums"
    assert result["completion_tokens_per_step"] == 4 * 4  # EOS ignored: every row has max_new_tokens
    assert result["trl_prompts_match_ours"] and result["torch_threads"] == 1
    assert result["trl_completion_mean_length"] and set(result["trl_completion_mean_length"]) == {4.0}
    assert result["trl_settings"]["use_vllm"] is False and result["trl_settings"]["num_generations"] == 2
    assert result["ratio_vs_trl"] == pytest.approx(result["trl_step_time_s"] / result["step_time_s"])
    assert len(result["trl_step_times_s"]) == len(result["step_times_s"]) == 1
    for key in ("trl_rollout_s", "trl_reward_s", "trl_update_s"):
        assert result[key] > 0


@pytest.mark.slow
def test_gpu_script_small_shapes_without_gpu_only_packages(tmp_path):
    """bench/gpu_exp2.sh end to end at tiny shapes, on a Python that cannot import datasets (TRL's
    dependency, absent from the GPU image; ml-collections and math-verify travel there as wheels)."""
    hide = tmp_path / "hide"
    for name in ("datasets",):
        (hide / name).mkdir(parents=True)
        (hide / name / "__init__.py").write_text(
            f'raise ModuleNotFoundError("No module named {name} (hidden by the test)", name={name!r})\n')
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(SMALL="1", STEPS="1", PYTHON=sys.executable, PYTHONPATH=f"{hide}{os.pathsep}{REPO_ROOT}", JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "results"
    proc = subprocess.run(["bash", str(REPO_ROOT / "bench" / "gpu_exp2.sh"), str(out)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "".join(
        p.read_text()[-3000:] for p in Path(out).glob("*.log"))
    step_result = json.loads((out / "step.json").read_text())
    memory_result = json.loads((out / "memory.json").read_text())
    assert step_result["benchmark"] == "step" and step_result["reward_funcs"] == [step.BENCH_REWARD]
    assert step_result["rows"] == 4 and step_result["max_new_tokens"] == 8 and step_result["run_config"]
    assert step_result["completion_tokens_per_step"] == 4 * 8 and max(step_result["prompt_tokens"]) <= 16
    assert memory_result["update_peak_bytes_per_device"] > 0 and memory_result["devices"] == 1
    assert "step time (median of 1)" in proc.stdout and "update MFU" in proc.stdout
    realistic = json.loads((out / "decode_realistic.json").read_text())
    assert realistic["stop_lengths"] == "realistic" and realistic["mean_completion_length"] < realistic["new_tokens"]
    assert "decode, realistic lengths" in proc.stdout
