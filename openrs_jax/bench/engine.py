"""Continuous batching: tokens/s of the slot engine against static `Sampler.generate` batches.

The same requests (prompts x samples, with a skewed length distribution forced by an EOS: most
rows short, a few at the cap) go through (a) `Sampler.generate` in static batches of `--slots`
rows, each running until its longest row stops, and (b) the `Engine` with `--slots` rows in
flight, refilling a slot as soon as its row stops. Both generate the same tokens; tokens/s =
generated tokens / wall time of the whole queue (prefills included), best of --repeats after a
warm-up pass that compiles. `ratio` = engine tokens/s / static tokens/s.

Also reports, from the formulas the engine sizes slots with (no compilation), the bytes of one
slot for evaluation at --plan_tokens new tokens with the 1.5B model and a bf16 cache, and how
many slots fit next to the bf16 weights on an 80 GB (H100) and a 48 GB (A40) device.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from openrs_jax.bench import shapes
from openrs_jax.bench.common import describe_model
from openrs_jax.core.engine import MEMORY_FRACTION, Engine, Request
from openrs_jax.core.sampling import SamplingParams

PLAN_MODEL = "preset:1.5b"  # the recipe's model: the slot plan's shapes
GPU_MEMORY = {"h100_80gb": 80 * 10**9, "a40_48gb": 48 * 10**9}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m openrs_jax.bench engine`."""
    parser.add_argument("--model", default="preset:20m", help="model preset or directory (default preset:20m)")
    parser.add_argument("--prompts", type=int, default=48, help="distinct prompts")
    parser.add_argument("--num_samples", type=int, default=1, help="samples per prompt")
    parser.add_argument("--prompt_len", type=int, default=32, help="tokens per prompt")
    parser.add_argument("--cap", type=int, default=256, help="max_new_tokens")
    parser.add_argument("--long_fraction", type=float, default=0.1, help="share of rows that run to the cap")
    parser.add_argument("--short_max", type=int, default=None, help="short rows stop uniformly in 1..this (default cap/16)")
    parser.add_argument("--slots", type=int, default=8, help="rows in flight, both sides")
    parser.add_argument("--chunk", type=int, default=16, help="engine decode steps between retirements")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=1, help="timed passes after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plan_tokens", type=int, default=32768, help="new tokens of the memory estimate")
    parser.add_argument("--plan_prompt_len", type=int, default=1024, help="prompt cap of the memory estimate")
    parser.add_argument("--gpu_targets", default="", help="also compile the engine's programs (1.5B, bf16, the "
                        "estimated slot count) for these GPU targets, e.g. h100,a40 (needs jax[cuda12], no GPU)")
    parser.add_argument("--no_cpu", action="store_true", help="skip the CPU timing (only the memory plan)")


def skewed_lengths(rows: int, cap: int, long_fraction: float, short_max: int, rng: np.random.Generator) -> np.ndarray:
    """Most rows uniform in 1..short_max, `long_fraction` of them at the cap."""
    lengths = rng.integers(1, short_max + 1, size=rows)
    lengths[rng.random(rows) < long_fraction] = cap
    return lengths.astype(np.int32)


def _slot_plan(plan_prompt_len: int, plan_tokens: int) -> dict[str, Any]:
    import jax

    from openrs_jax.core.model import abstract_model

    policy = shapes.load_policy(PLAN_MODEL, "bfloat16", sampler_options={"check_memory": False,
                                                                          "decode_attention": "xla"})
    config = policy.model_config
    per_slot = Engine(policy.sampler, slots=1).slot_bytes(plan_prompt_len, plan_tokens)
    weights = sum(x.size * 2 for x in jax.tree.leaves(abstract_model(config)))
    out: dict[str, Any] = {"plan_prompt_len": plan_prompt_len, "plan_tokens": plan_tokens,
                           "plan_slot_bytes_1.5b_bf16": per_slot, "plan_weights_bytes_1.5b_bf16": weights}
    for name, total in GPU_MEMORY.items():
        out[f"plan_slots_{name}"] = int((total * MEMORY_FRACTION - weights) // per_slot)
    return out


def _gpu_compile(target_name: str, slots: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    """The engine's programs for the 1.5B model compiled for one GPU target: memory per program."""
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from openrs_jax.bench.memory import compiled_memory
    from openrs_jax.bench.plan import compile_only_devices, load_target
    from openrs_jax.core.model import abstract_model

    target = load_target(target_name)
    devices, why = compile_only_devices(target, 1)
    if devices is None:
        raise ValueError(f"cannot compile for {target_name}: {why}")
    policy = shapes.load_policy(PLAN_MODEL, "bfloat16", devices=devices, prompt_bucket=128,
                                sampler_options={"check_memory": False})
    config, mesh, sampler = policy.model_config, policy.mesh, policy.sampler
    engine = Engine(sampler, slots=slots)
    placed = NamedSharding(mesh, PartitionSpec())
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placed),
                          nnx.to_pure_dict(nnx.state(abstract_model(config))))
    sampling = SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=new_tokens, eos_ids=(151643,), pad_id=0)
    out: dict[str, Any] = {"target": target_name, "device_kind": target.device_kind, "memory_bytes": target.memory_bytes,
                           "slots": slots, "decode_attention": sampler.attention.implementation}
    for name, compiled in engine.compile(params, slots, prompt_len, sampling).items():
        out[name] = compiled_memory(compiled)
    peak = max(out[k]["peak_bytes"] for k in ("admit", "decode") if k in out)
    out["peak_bytes"] = peak
    out["fits"] = peak <= target.memory_bytes
    return out


def run(args: argparse.Namespace) -> dict:
    """Runs the benchmark; returns the JSON fields (the dispatcher adds date, device, command)."""
    plan = _slot_plan(args.plan_prompt_len, args.plan_tokens)
    gpu = {}
    for name in filter(None, (t.strip() for t in args.gpu_targets.split(","))):
        key = {"h100": "h100_80gb", "a40": "a40_48gb"}.get(name)
        slots = plan.get(f"plan_slots_{key}", 16) if key else 16
        gpu[name] = _gpu_compile(name, slots, args.plan_prompt_len, args.plan_tokens)
    if args.no_cpu:
        return {**plan, "gpu_compile": gpu}
    policy = shapes.load_policy(args.model, args.dtype, prompt_bucket=args.prompt_len)
    config, sampler = policy.model_config, policy.sampler
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(3, config.vocab_size, size=(args.prompts, args.prompt_len)).tolist()
    g, rows = args.num_samples, args.prompts * args.num_samples
    short_max = args.short_max or max(1, args.cap // 16)
    stops = skewed_lengths(rows, args.cap, args.long_fraction, short_max, rng)
    eos = config.eos_token_id if isinstance(config.eos_token_id, int) else 2
    sampling = SamplingParams(temperature=args.temperature, max_new_tokens=args.cap, eos_ids=(eos,), pad_id=0)
    engine = Engine(sampler, slots=args.slots, chunk=args.chunk)
    weights = policy.sampler.prepare(policy.load_params(args.seed))
    per_batch = max(1, args.slots // g)  # prompts per static batch: slots rows in flight

    def static() -> int:
        tokens = 0
        for b in range(0, args.prompts, per_batch):
            batch = prompts[b: b + per_batch]
            out = sampler.generate(weights, batch, g, sampling, args.seed,
                                   stop_lengths=stops[b * g: (b + len(batch)) * g])
            tokens += int(out.lengths.sum())
        return tokens

    def continuous() -> int:
        requests = [Request(i, j, int(stops[i * g + j])) for i in range(args.prompts) for j in range(g)]
        return sum(len(c.token_ids) for c in engine.run(weights, prompts, requests, sampling, args.seed))

    def timed(fn) -> tuple[int, float]:
        t = time.perf_counter()
        tokens = fn()
        return tokens, time.perf_counter() - t

    static(), continuous()  # warm-up: compiles
    compiled = engine.num_compilations
    static_s, engine_s = [], []
    for _ in range(args.repeats):  # alternated: both see the same background load
        tokens_static, s = timed(static)
        static_s.append(s)
        tokens_engine, s = timed(continuous)
        engine_s.append(s)
    assert tokens_static == tokens_engine == int(np.minimum(stops, args.cap).sum()), (tokens_static, tokens_engine)
    static_rate = tokens_static / min(static_s)
    engine_rate = tokens_engine / min(engine_s)
    return {
        "model": str(args.model), "random_weights": policy.random_weights, **describe_model(config),
        "prompts": args.prompts, "num_samples": g, "rows": rows, "prompt_len": args.prompt_len, "cap": args.cap,
        "long_fraction": args.long_fraction, "short_max": short_max, "slots": args.slots, "chunk": args.chunk,
        "temperature": args.temperature, "dtype": args.dtype, "repeats": args.repeats,
        "tokens": tokens_engine, "mean_length": round(tokens_engine / rows, 1),
        "rows_at_cap": int((stops >= args.cap).sum()),
        "static_s": round(min(static_s), 3), "engine_s": round(min(engine_s), 3),
        "static_tokens_per_s": round(static_rate, 1), "engine_tokens_per_s": round(engine_rate, 1),
        "ratio": round(engine_rate / static_rate, 2),
        "engine_compilations": compiled, "engine_compilations_after_timed_runs": engine.num_compilations,
        **plan, **({"gpu_compile": gpu} if gpu else {}),
    }
