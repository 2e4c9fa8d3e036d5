"""Sampler throughput: prefill and decode tokens/s, optionally side by side with `transformers` generate.

Every row decodes exactly --new_tokens tokens (EOS ignored), so both sides do the same work;
with `--stop_lengths realistic` rows instead stop at lengths drawn like the recipe's completions
(`realistic_lengths`: 15% at the cap, the rest uniform between 2/7 of the cap and the cap,
i.e. 1k-3.5k of 3.5k tokens), forced by an EOS, so that a decode that skips finished rows
shows it (decode tokens/s then counts the tokens actually generated).
Definitions: prefill tokens/s = distinct prompt tokens (prompts x prompt_len) / prefill time;
decode tokens/s = rows x (new_tokens - 1) / time after the prefill (each decode step is one
forward of every row plus sampling; the first token comes from the prefill); end-to-end
tokens/s = rows x new_tokens / total time. For `transformers`, the prefill time is that of
generate(max_new_tokens=1) and the decode time is the rest. Times are the best of --repeats
calls after one warm-up call (which compiles); with --compare_hf the two sides alternate call
by call, so that both see the same background load.

Decode bandwidth use (issue 10): bytes one decode step must read = the weights in the compute
dtype (all but the input embedding, of which only the rows' lookups) + the KV cache entries
actually attended (prompt + tokens so far, averaged over the steps) / the measured decode step
time / the copy bandwidth measured in the same run (`common.copy_bandwidth`: read + write bytes
per second of a large elementwise op). `decode_bandwidth_use_full_cache` counts the whole KV
cache instead, which the XLA attention path (CPUs) reads every step; the GPU kernel reads only
the live slots (`decode_attention` in the JSON says which ran). `--config` takes the shapes
from a run config (see `bench.shapes`); `--model` also takes presets (`preset:1.5b`).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from openrs_jax.bench import shapes
from openrs_jax.bench.common import (
    DTYPES, copy_bandwidth, decode_figures, describe_model, device_memory, time_calls, torch_twin,
)
from openrs_jax.core.model import model_from_params
from openrs_jax.core.sampling import SamplingParams, bucket_length


# Where `--config` finds the flags of `add_sampling_arguments` (see bench.shapes).
SAMPLING_FIELDS: dict[str, shapes.FieldSource] = {
    "temperature": "rollout.temperature",
    "top_p": "rollout.top_p",
    "top_k": "rollout.top_k",
}


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampling settings, which `bench step` takes too."""
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: the recipe's 0.7)")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0 = off")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m openrs_jax.bench sampler`."""
    parser.add_argument("--model", required=True, help="model directory (weights optional: random ones are used without) or config.json")
    parser.add_argument("--prompts", type=int, default=8, help="distinct prompts per call")
    parser.add_argument("--num_samples", type=int, default=6, help="completions per prompt (G)")
    parser.add_argument("--prompt_len", type=int, default=64, help="tokens per prompt")
    parser.add_argument("--new_tokens", type=int, default=128, help="tokens decoded per row (EOS ignored)")
    add_sampling_arguments(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="parameter and compute dtype, both sides")
    parser.add_argument("--cache_dtype", choices=DTYPES, help="KV cache dtype (default: --dtype; with bfloat16 on a "
                        "CPU, float32 is faster: XLA:CPU updates a bf16 cache out of place)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare_hf", action="store_true", help="also time transformers generate on the same weights")
    parser.add_argument("--hf_threads", type=int, help="torch threads for transformers (default: torch's own, one "
                        "per core; on a busy shared host 1 can be several times faster)")
    parser.add_argument("--no_copy_bandwidth", action="store_true", help="skip the copy-bandwidth measurement")
    parser.add_argument("--stop_lengths", choices=("none", "realistic"), default="none",
                        help="realistic: rows stop at recipe-like lengths (forced EOS) instead of all at the cap")
    shapes.add_config_argument(parser, {**CONFIG_FIELDS, **SAMPLING_FIELDS})


# Flags that `--config RUN_CONFIG` fills (see bench.shapes).
CONFIG_FIELDS = {
    "prompts": "rollout.prompts_per_step",
    "num_samples": "rollout.num_generations",
    "prompt_len": "data.max_prompt_length",
    "new_tokens": "rollout.max_completion_length",
    "dtype": "model.compute_dtype",
}


def realistic_lengths(rows: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Completion lengths like the recipe's rollouts: 15% of rows at the cap (truncated), the others
    uniform between 2/7 of the cap and the cap (1,024..3,583 of 3,584 tokens)."""
    low = max(1, (2 * cap) // 7)
    lengths = rng.integers(low, max(low + 1, cap), size=rows)
    lengths[rng.random(rows) < 0.15] = cap
    return np.minimum(lengths, cap).astype(np.int32)


def _rate(tokens: int, seconds: float) -> float:
    return round(tokens / seconds, 1) if seconds > 0 else float("inf")


def _hf_generate(twin: Any, prompts: np.ndarray, args: argparse.Namespace, new_tokens: int) -> None:
    import torch
    from transformers import GenerationConfig

    greedy = args.temperature == 0
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else args.temperature,
        top_p=None if greedy else args.top_p,
        top_k=None if greedy else args.top_k,
        max_new_tokens=new_tokens,
        num_return_sequences=args.num_samples,
        eos_token_id=None,  # ignore EOS: exactly new_tokens per row, as on our side
        pad_token_id=0,
        use_cache=True,
    )
    ids = torch.from_numpy(prompts.astype(np.int64))
    with torch.inference_mode():
        out = twin.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    assert out.shape == (prompts.shape[0] * args.num_samples, prompts.shape[1] + new_tokens), out.shape


def run(args: argparse.Namespace) -> dict:
    """Runs the benchmark; returns the JSON fields (the dispatcher adds date, device, command)."""
    shapes.apply_run_config(args)
    copy = None if getattr(args, "no_copy_bandwidth", False) else copy_bandwidth()
    policy = shapes.load_policy(args.model, args.dtype, prompt_bucket=args.prompt_len,
                                sampler_options={"cache_dtype": getattr(args, "cache_dtype", None)})
    config, sampler, random_weights = policy.model_config, policy.sampler, policy.random_weights
    # The module, not the decode layout: each call pays its cast and layout as a rollout does.
    model = model_from_params(policy.load_params(args.seed), config)
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(0, config.vocab_size, size=(args.prompts, args.prompt_len), dtype=np.int64)
    rows, n = args.prompts * args.num_samples, args.new_tokens
    realistic = getattr(args, "stop_lengths", "none") == "realistic"
    if realistic and args.compare_hf:
        raise ValueError("--stop_lengths realistic cannot be compared with transformers (it decodes every row to the cap)")
    stops = realistic_lengths(rows, n, rng) if realistic else None
    eos = config.eos_token_id if isinstance(config.eos_token_id, int) else 0
    sampling = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=n,
        eos_ids=(eos,) if realistic else (), pad_id=0,
    )
    outputs = []

    def call() -> None:
        out = sampler.generate(model, prompts, args.num_samples, sampling, args.seed + len(outputs), stop_lengths=stops)
        assert realistic or out.lengths.min() == n
        outputs.append({**out.timings, "tokens": int(out.lengths.sum()), "steps": int(out.lengths.max())})

    call()  # compiles
    twin = None
    hf_prefill, hf_total = [], []
    if args.compare_hf:
        import torch

        twin = torch_twin(model)
        if getattr(args, "hf_threads", None):
            torch.set_num_threads(args.hf_threads)
        torch.manual_seed(args.seed)
        _hf_generate(twin, prompts, args, n)  # warm-up
    # Interleaved, so that both sides see the same background load on a shared machine.
    for _ in range(args.repeats):
        call()
        if twin is not None:
            hf_prefill += time_calls(lambda: _hf_generate(twin, prompts, args, 1), 1)
            hf_total += time_calls(lambda: _hf_generate(twin, prompts, args, n), 1)
    compile_s = outputs[0]["total_s"]
    runs = outputs[1:]
    prefill_s = min(r["prefill_s"] for r in runs)
    decode_s = min(r["decode_s"] for r in runs)
    total_s = min(r["total_s"] for r in runs)
    result: dict[str, Any] = {
        "model": str(args.model),
        "random_weights": random_weights,
        **describe_model(config),
        "prompts": args.prompts,
        "num_samples": args.num_samples,
        "rows": rows,
        "prompt_len": args.prompt_len,
        "new_tokens": n,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "cache_dtype": str(sampler.cache_dtype),
        "repeats": args.repeats,
        "compilations": sampler.num_compilations,
        "first_call_s": round(compile_s, 3),
        "prefill_s": round(prefill_s, 4),
        "decode_s": round(decode_s, 4),
        "total_s": round(total_s, 4),
        "prefill_tokens_per_s": _rate(args.prompts * args.prompt_len, prefill_s),
        "decode_tokens_per_s": _rate(min(r["tokens"] for r in runs) - rows, decode_s),
        "tokens_per_s": _rate(min(r["tokens"] for r in runs), total_s),
        "decode_s_runs": [round(r["decode_s"], 4) for r in runs],
        "stop_lengths": "realistic" if realistic else "none",
        "mean_completion_length": round(min(r["tokens"] for r in runs) / rows, 1),
        "decode_attention": sampler.attention.implementation,
        "check_every": sampler.check_every,
    }
    if twin is not None:
        import torch

        hf_prefill_s, hf_total_s = min(hf_prefill), min(hf_total)
        hf_decode_s = max(hf_total_s - hf_prefill_s, 1e-9)
        result.update({
            "hf_torch_threads": torch.get_num_threads(),
            "hf_prefill_s": round(hf_prefill_s, 4),
            "hf_total_s": round(hf_total_s, 4),
            "hf_decode_tokens_per_s": _rate(rows * (n - 1), hf_decode_s),
            "hf_tokens_per_s": _rate(rows * n, hf_total_s),
            "hf_total_s_runs": [round(t, 4) for t in hf_total],
        })
        result["ratio_vs_hf"] = round(result["decode_tokens_per_s"] / result["hf_decode_tokens_per_s"], 2)
        result["ratio_end_to_end_vs_hf"] = round(result["tokens_per_s"] / result["hf_tokens_per_s"], 2)
    if n > 1:
        step_s = decode_s / max(1, min(r["steps"] for r in runs) - 1)
        result.update(decode_figures(config, rows, bucket_length(args.prompt_len, sampler.prompt_bucket), n, step_s,
                                     copy["copy_bandwidth_bytes_per_s"] if copy else None,
                                     cache_dtype=sampler.cache_dtype))
        result.update(copy or {})
    result.update(device_memory())
    return result

