"""Update throughput: the jitted GRPO update on a random batch, in tokens/s and MFU.

    python -m openrs_jax.bench update --model DIR --rows 24 --prompt_len 64 \
        --completion_len 192 --micro_batch_size 6 --out update.json

The model comes from DIR (weights, or only a config.json: random weights of that shape).
Times `--steps` updates after one warm-up (compilation) and reports the median. Tokens are
whole sequences (prompt + completion) per second. MFU = model FLOPs / step time / peak, with
the PaLM count 6 N + 12 L H d_head S per token (N = parameters used in matmuls; remat
recomputation not counted), where the device's bf16 peak is known (or `--peak_tflops`).

`--config configs/exp2.py` takes the shapes from a run config (see `bench.shapes`; flags win),
`--model` also takes presets (`preset:1.5b`). `--reference` also times the forward-only
reference log-prob pass over the same rows (bf16/compute-dtype copy, 2 N + attention FLOPs
per token, counted apart from the update). The runtime's peak device memory is reported.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from openrs_jax.bench import shapes
from openrs_jax.bench.common import describe_model, device_memory, time_calls
from openrs_jax.core import sharding
from openrs_jax.core.grpo import UpdateConfig, create_train_state, group_advantages, make_train_step

# Dense bf16 tensor-core peaks (FLOP/s) by device-kind substring, from the vendors' data sheets.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower (756e12): pass --peak_tflops there
    "A100": 312e12,
    "L40S": 362e12,
    "A40": 149.7e12,
    "L4": 121e12,
}


# Where `--config` finds the flags of `add_update_arguments` (see bench.shapes).
UPDATE_FIELDS: dict[str, shapes.FieldSource] = {
    "dtype": "model.compute_dtype",
    "remat": "model.remat",
    "micro_batch_size": "grpo.micro_batch_size",
    "beta": "grpo.beta",
    "loss_aggregation": "grpo.loss_aggregation",
    "mesh": shapes.mesh_spec,
}


def add_update_arguments(parser: argparse.ArgumentParser) -> None:
    """The update's settings, which `bench step` takes too."""
    parser.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    parser.add_argument("--micro_batch_size", type=int, default=None, help="rows per accumulation step (default: all)")
    parser.add_argument("--beta", type=float, default=0.04, help="KL weight (> 0 feeds reference log-probs)")
    parser.add_argument("--loss_aggregation", default="group_token_mean")
    parser.add_argument("--mesh", default="fsdp=-1", help="mesh axes, e.g. 'fsdp=-1' or 'data=2,fsdp=-1'")
    parser.add_argument("--peak_tflops", type=float, default=None, help="per-device peak for MFU (default: known GPUs)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory or config.json (random weights then)")
    parser.add_argument("--rows", type=int, default=24, help="completions per update (prompts x generations)")
    parser.add_argument("--num_generations", type=int, default=6)
    parser.add_argument("--prompt_len", type=int, default=64)
    parser.add_argument("--completion_len", type=int, default=192)
    add_update_arguments(parser)
    parser.add_argument("--steps", type=int, default=5, help="timed updates after the warm-up")
    parser.add_argument("--reference", action="store_true", help="also time the forward-only reference log-prob pass")
    shapes.add_config_argument(parser, {**CONFIG_FIELDS, **UPDATE_FIELDS})


# Flags that `--config RUN_CONFIG` fills (see bench.shapes).
CONFIG_FIELDS = {
    "rows": shapes.rows,
    "num_generations": "rollout.num_generations",
    "prompt_len": "data.max_prompt_length",
    "completion_len": "rollout.max_completion_length",
}


def train_flops_per_token(config: Any, seq_len: int) -> float:
    """Model FLOPs of one training token (forward + backward): 6 N_matmul + 12 L H d_head S."""
    emb = config.vocab_size * config.hidden_size
    matmul = config.num_params() - emb * (1 if config.tie_word_embeddings else 2) - config.hidden_size + emb
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    return 6.0 * matmul + attention


def forward_flops_per_token(config: Any, seq_len: int) -> float:
    """Model FLOPs of one forward-only token (reference and old log-probs): 2 N_matmul + 4 L H d_head S."""
    return train_flops_per_token(config, seq_len) / 3.0


def peak_flops(peak_tflops: float | None, dtype: str) -> float | None:
    """Per-device peak FLOP/s for MFU: `--peak_tflops`, else a known GPU's bf16 peak (None otherwise)."""
    if peak_tflops:
        return peak_tflops * 1e12
    if dtype != "bfloat16":
        return None
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in kind), None)


def flops_fields(prefix: str, flops: float, seconds: float, peak: float | None, devices: int) -> dict[str, Any]:
    """`{prefix}_model_tflops`, `{prefix}_tflops_per_s_per_device` and `{prefix}_mfu` of a pass."""
    return {
        f"{prefix}_model_tflops": flops / 1e12,
        f"{prefix}_tflops_per_s_per_device": flops / seconds / 1e12 / devices,
        f"{prefix}_mfu": None if peak is None else flops / seconds / (peak * devices),
    }


def random_batch(rows: int, prompt_len: int, completion_len: int, vocab: int, g: int, seed: int = 0) -> dict:
    """Ids, masks with ragged completion lengths, group advantages and reference log-probs."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(completion_len // 2, completion_len + 1, rows)
    completion = (np.arange(completion_len)[None, :] < lengths[:, None]).astype(np.int32)
    attention = np.concatenate([np.ones((rows, prompt_len), np.int32), completion], axis=1)
    rewards = rng.integers(0, 2, rows).astype(np.float32)
    return {
        "input_ids": rng.integers(0, vocab, (rows, prompt_len + completion_len)).astype(np.int32),
        "attention_mask": attention,
        "completion_mask": completion,
        "advantages": np.asarray(group_advantages(jnp.asarray(rewards), g, scale=True)),
        # Near a random model's log-probs, so the KL term has a realistic size.
        "ref_logps": (-np.log(vocab) + rng.normal(0.0, 0.1, (rows, completion_len))).astype(np.float32),
        "old_logps": None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    shapes.apply_run_config(args)

    if args.rows % args.num_generations:
        raise ValueError(f"--rows {args.rows} must be a multiple of --num_generations {args.num_generations}")
    policy = shapes.load_policy(args.model, args.dtype or "auto", param_dtype="float32", remat=args.remat,
                                mesh=args.mesh, devices=jax.devices())
    config, graphdef, mesh, random_weights = policy.model_config, policy.graphdef, policy.mesh, policy.random_weights
    dtype = config.dtype
    params = policy.load_params()
    update_config = UpdateConfig(
        num_generations=args.num_generations, micro_batch_size=args.micro_batch_size, beta=args.beta,
        loss_aggregation=args.loss_aggregation, max_completion_length=args.completion_len,
        warmup_ratio=0.0, max_steps=10**6,
    )
    state = create_train_state(params, update_config, mesh)
    del params
    batch = random_batch(args.rows, args.prompt_len, args.completion_len, config.vocab_size, args.num_generations)
    if args.beta == 0:
        batch["ref_logps"] = None
    batch = sharding.shard_batch(batch, mesh)
    step = make_train_step(graphdef, update_config, mesh)

    metrics: Any = None

    def one_step() -> None:
        nonlocal state, metrics
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)

    first_s = time_calls(one_step, 1)[0]
    times = time_calls(one_step, args.steps)
    step_s = statistics.median(times)

    seq = args.prompt_len + args.completion_len
    tokens = args.rows * seq
    flops = train_flops_per_token(config, seq) * tokens
    peak = peak_flops(args.peak_tflops, dtype)
    result = {
        "model": str(args.model),
        "random_weights": random_weights,
        **describe_model(config),
        "remat": args.remat,
        "mesh": dict(mesh.shape),
        "rows": args.rows,
        "prompt_len": args.prompt_len,
        "completion_len": args.completion_len,
        "micro_batch_size": args.micro_batch_size or args.rows,
        "beta": args.beta,
        "loss_aggregation": args.loss_aggregation,
        "first_step_s": first_s,
        "step_times_s": times,
        "step_time_s": step_s,
        "tokens_per_s": tokens / step_s,
        "completion_tokens_per_s": float(np.asarray(batch["completion_mask"]).sum()) / step_s,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops_per_device": flops / step_s / 1e12 / jax.device_count(),
        "peak_tflops_per_device": None if peak is None else peak / 1e12,
        "mfu": None if peak is None else flops / step_s / (peak * jax.device_count()),
        "loss": float(metrics["loss"]),
        "grad_norm": float(metrics["grad_norm"]),
    }
    if getattr(args, "reference", False):
        result.update(_time_reference(args, graphdef, state, batch, mesh, dtype, config, seq, peak))
    result.update(device_memory())
    return result


def _time_reference(args: argparse.Namespace, graphdef: Any, state: Any, batch: dict, mesh: Any, dtype: str,
                    config: Any, seq: int, peak: float | None) -> dict[str, Any]:
    """Median time, FLOPs and MFU of the forward-only log-prob pass (the reference pass)."""
    from openrs_jax.core.grpo import token_logprobs

    ref = sharding.rollout_params(state.params, mesh, dtype)

    def call() -> None:
        jax.block_until_ready(token_logprobs(
            graphdef, ref, batch["input_ids"], batch["attention_mask"], args.prompt_len,
            micro_batch_size=args.micro_batch_size, mesh=mesh,
        ))

    call()  # compiles
    times = time_calls(call, args.steps)
    ref_s = statistics.median(times)
    flops = forward_flops_per_token(config, seq) * args.rows * seq
    return {"reference_times_s": times, "reference_s": ref_s,
            **flops_fields("reference", flops, ref_s, peak, jax.device_count())}
