"""Helpers shared by the benchmark subcommands: a model's shape fields, a `transformers` twin
with the same weights, and repeated timing (models load through `bench.shapes`)."""

from __future__ import annotations

import time
from typing import Any, Callable

from openrs_jax.core.model import Qwen2Config, Qwen2ForCausalLM, params_of

DTYPES = ("float32", "bfloat16")


def describe_model(config: Qwen2Config) -> dict[str, Any]:
    """The shape fields a benchmark result should record."""
    return {
        "num_params": config.num_params(),
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dtype": config.dtype,
    }


def torch_twin(model: Qwen2ForCausalLM, dtype: str | None = None) -> Any:
    """A `transformers` Qwen2ForCausalLM holding the same weights as `model` (eval mode, CPU).

    dtype defaults to the model's parameter dtype.
    """
    import numpy as np
    import torch
    import transformers

    from openrs_jax.core.model.params import params_to_hf

    config = model.config
    torch_dtype = getattr(torch, dtype or config.param_dtype)
    hf_config = transformers.Qwen2Config(**config.to_hf_dict())
    twin = transformers.Qwen2ForCausalLM(hf_config)
    tensors = params_to_hf(params_of(model), config, dtype=np.float32)
    state = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in tensors.items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    # Tied heads have no lm_head tensor of their own; anything else missing is a bug.
    missing = [n for n in missing if not (n == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not match transformers' Qwen2: missing {missing}, unexpected {unexpected}")
    return twin.to(torch_dtype).eval()


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall-clock seconds of `repeats` calls of fn (which must block until its work is done)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


# --- Runtime memory and device bandwidth (issue 10: added by the step/throughput bench) ---------


def device_memory() -> dict[str, Any]:
    """Peak and current memory as the runtime reports it.

    Accelerators: `device.memory_stats()` of every local device (`peak_bytes_in_use` is the
    allocator's high-water mark since the process started; the largest over devices is
    reported). Where the runtime gives no statistics (the CPU backend), the process's peak
    resident set size stands in, which also counts host memory that is not JAX's.
    """
    import jax

    peaks, in_use, limits = [], [], []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats()
        except Exception:  # backends without allocator statistics
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
            in_use.append(int(stats.get("bytes_in_use", 0)))
            limits.append(int(stats.get("bytes_limit", 0)))
    if peaks:
        return {
            "memory_source": "device.memory_stats",
            "peak_bytes_in_use": max(peaks),
            "bytes_in_use": max(in_use),
            "bytes_limit": max(limits),
        }
    return {"memory_source": "host peak RSS (no device memory statistics)", "host_peak_rss_bytes": host_peak_rss_bytes()}


def host_peak_rss_bytes() -> int | None:
    """Peak resident set size of this process in bytes (None where `resource` is unavailable)."""
    import sys

    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def copy_bandwidth(nbytes: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """Measured copy bandwidth of the first device: bytes read + written per second by a jitted
    elementwise op over a float32 array of `nbytes` (default 1 GiB on accelerators, 128 MiB on
    the CPU); the best of `repeats` timed calls after a warm-up."""
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    if nbytes is None:
        nbytes = 2**30 if device.platform != "cpu" else 2**27
    n = max(1, nbytes // 4)
    x = jax.device_put(jnp.ones((n,), jnp.float32), device)
    op = jax.jit(lambda a: a * 1.5 + 1.0)  # one read, one write
    jax.block_until_ready(op(x))
    best = min(time_calls(lambda: jax.block_until_ready(op(x)), repeats))
    return {
        "copy_array_bytes": 4 * n,
        "copy_s": best,
        "copy_bandwidth_bytes_per_s": 2 * 4 * n / best,
    }


def decode_bytes_per_step(config: Qwen2Config, rows: int, prompt_len: int, new_tokens: int, cache_dtype: Any = None) -> dict[str, int]:
    """Bytes one decode step reads, averaged over the `new_tokens - 1` loop steps.

    Weights: every parameter in the compute dtype except the input embedding table, of which
    each row reads one line. KV cache attended: a row at loop step j attends prompt_len + j
    slots (the prompt and the tokens so far), in every layer, keys and values. The full-cache
    figure counts all prompt_len + new_tokens - 1 slots, which is what attention over the
    whole cache (this sampler's) reads.
    """
    import jax.numpy as jnp

    itemsize = jnp.dtype(config.dtype).itemsize
    cache_itemsize = jnp.dtype(cache_dtype or config.dtype).itemsize
    embedding = config.vocab_size * config.hidden_size
    read_params = config.num_params() - (0 if config.tie_word_embeddings else embedding)
    weights = read_params * itemsize + rows * config.hidden_size * itemsize
    per_slot = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * cache_itemsize
    mean_attended = prompt_len + new_tokens / 2  # loop steps j = 1 .. new_tokens - 1
    kv = rows * per_slot * mean_attended
    kv_full = rows * per_slot * (prompt_len + new_tokens - 1)
    return {
        "weight_bytes_per_step": int(weights),
        "kv_bytes_per_step_attended": int(kv),
        "kv_bytes_per_step_full_cache": int(kv_full),
        "decode_bytes_per_step": int(weights + kv),
        "decode_bytes_per_step_full_cache": int(weights + kv_full),
    }


def decode_figures(config: Qwen2Config, rows: int, prompt_len: int, new_tokens: int, step_s: float,
                   copy_bw: float | None, devices: int = 1, cache_dtype: Any = None) -> dict[str, Any]:
    """A measured decode step of `step_s` seconds: the bytes it reads (`decode_bytes_per_step`), their
    rate per device and, given the copy bandwidth `copy_bw`, the share of it they use."""
    traffic = decode_bytes_per_step(config, rows, prompt_len, new_tokens, cache_dtype)
    out = {"decode_step_s": step_s, **traffic, "decode_bytes_per_s": traffic["decode_bytes_per_step"] / step_s / devices}
    if copy_bw:
        out["decode_bandwidth_use"] = traffic["decode_bytes_per_step"] / devices / step_s / copy_bw
        out["decode_bandwidth_use_full_cache"] = traffic["decode_bytes_per_step_full_cache"] / devices / step_s / copy_bw
    return out
