"""`python -m openrs_jax.bench`: a short summary on the console (every field in --out), consistent flags."""

from __future__ import annotations

import json

from openrs_jax.bench.summary import summarize

ENV = {"date": "2026-12-01T00:00:00+00:00", "platform": "cpu", "device_kind": "cpu", "device_count": 1,
       "jax_version": "0.10.2"}
STEP = {
    **ENV, "benchmark": "step", "model": "preset:20m", "num_params": 80_563_968, "dtype": "float32",
    "random_weights": True, "rows": 16, "max_new_tokens": 128, "first_step_s": 38.2, "step_time_s": 59.4,
    "rollout_s": 14.56, "reward_s": 0.07, "reference_s": 7.58, "update_s": 31.72, "other_s": 5.48,
    "completion_tokens_per_s": 34.48, "update_mfu": None, "reference_mfu": None, "decode_bandwidth_use": 0.463,
    "memory_source": "host peak RSS", "host_peak_rss_bytes": 6_076_981_248, "per_step": [{"step_s": 1.0}] * 5,
}
TRL = {"trl_step_time_s": 154.47, "trl_rollout_s": 55.36, "trl_reward_s": 0.01, "trl_reference_s": 16.98,
       "trl_update_s": 92.92, "ratio_vs_trl": 2.6004, "ratio_vs_trl_best": 4.2933, "ratio_vs_trl_rollout": 3.80,
       "ratio_vs_trl_reference": 2.24, "ratio_vs_trl_update": 2.93}


def test_step_summary_gives_the_split_and_the_ratio_against_trl():
    text = summarize({**STEP, **TRL}, "step.json")
    lines = text.splitlines()
    assert lines[0] == "step on 1 x cpu (cpu), jax 0.10.2"
    assert lines[1] == "model preset:20m: 80.6 M parameters, float32, random weights"
    assert ("step 59.40 s (median; first, compiling: 38.2 s) = rollout 14.56 + reward 0.07 + reference 7.58 "
            "+ update 31.72 + other 5.48") in lines
    assert "ratio vs TRL 2.60x (fastest steps 4.29x; rollout 3.80x, reference 2.24x, update 2.93x)" in lines
    assert "update MFU" not in text  # no known peak on a CPU: the line is left out, not printed as None
    assert lines[-2:] == ["peak host memory 6.08 GB (no device statistics)", "all figures: step.json"]
    assert len(lines) <= 10 and "{" not in text


def test_step_summary_without_trl_has_no_trl_lines():
    text = summarize(STEP)
    assert "TRL" not in text and "ratio" not in text and "all figures" not in text


def test_memory_summary_in_gb_and_against_the_budget():
    result = {**ENV, "benchmark": "memory", "num_params": 1_777_088_000, "compute_dtype": "bfloat16", "devices": 4,
              "compiled_for": "cpu", "emulated_devices": True, "rows": 72, "micro_batch_size": 12,
              "update_peak_bytes_per_device": 22_340_000_000, "reference_peak_bytes_per_device": 17_280_000_000,
              "rollout_peak_bytes_per_device": 12_150_000_000, "kv_cache_bytes_per_device": 2_110_000_000,
              "train_state_bytes_per_device": 5_330_000_000, "reference_params_bytes_per_device": 3_550_000_000,
              "step_peak_estimate_bytes_per_device": 25_890_000_000, "step_peak_phase": "update",
              "budget_bytes_per_device": 40_000_000_000, "fits_budget": True}
    lines = summarize(result).splitlines()
    assert "per device, 4 devices (cpu, emulated), 72 rows, micro-batch 12:" in lines
    assert "  update peak 22.34 GB, reference pass 17.28 GB, rollout 12.15 GB (KV cache 2.11 GB)" in lines
    assert "  step estimate 25.89 GB (during the update); budget 40 GB: fits" in lines
    assert "DOES NOT FIT" in summarize({**result, "fits_budget": False})


def test_rewards_summary_gives_throughput_and_the_pool_speedup():
    result = {**ENV, "benchmark": "rewards", "num_completions": 1000, "mean_chars": 3012.4, "num_workers": 2,
              "completions_per_s": 250.0, "median_score_s": 4.0, "startup_s": 1.5, "score_s": [4.2, 4.0, 4.1],
              "in_process_first_batch_s": 8.4, "same_as_in_process": True, "timeouts_errors_restarts": 0}
    lines = summarize(result).splitlines()
    assert lines[1] == ("1000 completions of ~3,012 characters, 2 workers: 250 completions/s (median batch 4.00 s; "
                        "workers start in 1.5 s)")
    assert lines[2] == "in one process: first batch 8.40 s; pool speedup 2.00x, same rewards: True"


def test_bench_command_prints_the_summary_and_writes_the_json(tmp_path, capsys):
    from openrs_jax.bench.__main__ import main

    out = tmp_path / "update.json"
    result = main(["update", "--model", "builtin:tiny", "--rows", "4", "--num_generations", "2", "--prompt_len", "8",
                   "--completion_len", "8", "--steps", "1", "--mesh", "data=-1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))  # every field in the file
    lines = printed.strip().splitlines()
    assert lines[0].startswith("update on ") and lines[-1] == f"all figures: {out}"
    assert any(line.startswith("4 rows of 8 + 8 tokens: update ") for line in lines)
    assert len(lines) < 10 and not any(line.lstrip().startswith(("{", '"')) for line in lines)


def test_bench_flags_use_underscores_and_keep_the_old_spellings_hidden():
    import argparse

    from openrs_jax.bench import memory
    from openrs_jax.bench import rewards as bench_rewards

    p = argparse.ArgumentParser()
    bench_rewards.add_arguments(p)
    new = p.parse_args(["--num_completions", "8", "--num_workers", "1", "--reward_funcs", "accuracy", "--no_baseline"])
    old = p.parse_args(["--num-completions", "8", "--num-workers", "1", "--reward-funcs", "accuracy", "--no-baseline"])
    assert vars(new) == vars(old) and new.num_completions == 8 and new.no_baseline
    assert p.parse_args([]).num_completions == 1000 and not p.parse_args([]).no_baseline
    helptext = p.format_help()
    assert "--num_completions" in helptext and "--num-completions" not in helptext and "--no-baseline" not in helptext

    p = argparse.ArgumentParser()
    memory.add_arguments(p)
    assert p.parse_args(["--config", "c.py", "--model", "m"]).model_config == "m"
    assert p.parse_args(["--config", "c.py", "--model_config", "m"]).model_config == "m"
    assert "--model_config" not in p.format_help()
