"""A short human summary of a benchmark result: the figures that matter and the ratios.

The full result (every field, per-step timings) goes to the `--out` JSON file; the console
gets a few lines per subcommand. A line is shown only when every field it names is in the
result (optional comparisons such as `--compare_trl` add their lines).
"""

from __future__ import annotations

import string
from typing import Any, Mapping

GB = 1e9

# Per subcommand: line templates over the result's fields (plus the derived ones of `_derived`).
LINES: dict[str, tuple[str, ...]] = {
    "sampler": (
        "{rows} rows x {new_tokens} new tokens: prefill {prefill_tokens_per_s:,.0f} tokens/s, "
        "decode {decode_tokens_per_s:,.0f} tokens/s, end to end {tokens_per_s:,.0f} tokens/s",
        "decode reads {decode_bandwidth_use:.0%} of the measured copy bandwidth per step",
        "transformers generate: {hf_tokens_per_s:,.0f} tokens/s end to end; ratio {ratio_vs_hf:.2f}x "
        "(decode), {ratio_end_to_end_vs_hf:.2f}x (end to end)",
    ),
    "update": (
        "{rows} rows of {prompt_len} + {completion_len} tokens: update {step_time_s:.2f} s "
        "(first, compiling: {first_step_s:.1f} s), {tokens_per_s:,.0f} tokens/s",
        "{achieved_tflops_per_device:.3f} TFLOP/s per device",
        "MFU {mfu:.1%}",
        "reference pass {reference_s:.2f} s",
        "reference MFU {reference_mfu:.1%}",
    ),
    "step": (
        "step {step_time_s:.2f} s (median; first, compiling: {first_step_s:.1f} s) = rollout {rollout_s:.2f} "
        "+ reward {reward_s:.2f} + reference {reference_s:.2f} + update {update_s:.2f} + other {other_s:.2f}",
        "{completion_tokens_per_s:,.1f} completion tokens/s ({rows} rows x {max_new_tokens} tokens)",
        "update MFU {update_mfu:.1%}, reference MFU {reference_mfu:.1%}",
        "decode reads {decode_bandwidth_use:.0%} of the measured copy bandwidth per step",
        "TRL GRPOTrainer: step {trl_step_time_s:.2f} s = rollout {trl_rollout_s:.2f} + reward {trl_reward_s:.2f} "
        "+ reference {trl_reference_s:.2f} + update {trl_update_s:.2f}",
        "ratio vs TRL {ratio_vs_trl:.2f}x (fastest steps {ratio_vs_trl_best:.2f}x; rollout "
        "{ratio_vs_trl_rollout:.2f}x, reference {ratio_vs_trl_reference:.2f}x, update {ratio_vs_trl_update:.2f}x)",
    ),
    "memory": (
        "per device, {devices} devices ({compiled_for}{emulated}), {rows} rows, micro-batch {micro_batch_size}:",
        "  update peak {update_peak_gb:.2f} GB, reference pass {reference_peak_gb:.2f} GB, "
        "rollout {rollout_peak_gb:.2f} GB (KV cache {kv_cache_gb:.2f} GB)",
        "  resident: train state {train_state_gb:.2f} GB, reference copy {reference_params_gb:.2f} GB",
        "  step estimate {step_peak_estimate_gb:.2f} GB (during the {step_peak_phase}); "
        "budget {budget_gb:.0f} GB: {fits}",
    ),
    "rewards": (
        "{num_completions} completions of ~{mean_chars:,.0f} characters, {num_workers} workers: "
        "{completions_per_s:,.0f} completions/s (median batch {median_score_s:.2f} s; workers start in {startup_s:.1f} s)",
        "in one process: first batch {in_process_first_batch_s:.2f} s; pool speedup {pool_speedup:.2f}x, "
        "same rewards: {same_as_in_process}",
        "timeouts + errors + worker restarts: {timeouts_errors_restarts}",
    ),
}


def _derived(result: Mapping[str, Any]) -> dict[str, Any]:
    """Fields the templates use that the result holds in another unit or shape."""
    r = dict(result)
    for key, value in result.items():  # bytes -> GB
        if isinstance(value, (int, float)) and key.endswith("_bytes_per_device"):
            r[key[: -len("_bytes_per_device")] + "_gb"] = value / GB
    if "budget_bytes_per_device" in result:
        r["fits"] = "fits" if result.get("fits_budget") else "DOES NOT FIT"
    r["emulated"] = ", emulated" if result.get("emulated_devices") else ""
    times = result.get("score_s") or []
    if times and result.get("in_process_first_batch_s"):
        r["pool_speedup"] = result["in_process_first_batch_s"] / times[0]
    if result.get("peak_bytes_in_use") is not None:
        r["memory_line"] = f"peak device memory {result['peak_bytes_in_use'] / GB:.2f} GB"
    elif result.get("host_peak_rss_bytes") is not None:
        r["memory_line"] = f"peak host memory {result['host_peak_rss_bytes'] / GB:.2f} GB (no device statistics)"
    return r


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def summarize(result: Mapping[str, Any], out: Any = None) -> str:
    """A few lines: where it ran, the model, the subcommand's figures, and where the JSON is."""
    r = _derived(result)
    lines = [f"{r.get('benchmark', 'bench')} on {r.get('device_count', '?')} x {r.get('device_kind', '?')} "
             f"({r.get('platform', '?')}), jax {r.get('jax_version', '?')}"]
    if r.get("num_params"):
        weights = ", random weights" if r.get("random_weights") else ""
        lines.append(f"model {r.get('model', r.get('model_config', ''))}: {r['num_params'] / 1e6:,.1f} M parameters, "
                     f"{r.get('dtype', r.get('compute_dtype', '?'))}{weights}".replace("model : ", "model: "))
    for template in LINES.get(str(r.get("benchmark")), ()):
        if all(r.get(name) is not None for name in _fields(template)):
            lines.append(template.format(**r))
    if "memory_line" in r:
        lines.append(r["memory_line"])
    if out is not None:
        lines.append(f"all figures: {out}")
    return "\n".join(lines)
