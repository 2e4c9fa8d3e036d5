"""Full GRPO optimizer steps, split into rollout, reward, reference and update; optionally against TRL.

    python -m openrs_jax.bench step --model DIR --tokenizer DIR --dataset FILE \
        --prompts_per_step 4 --num_generations 4 --max_new_tokens 64 --steps 3 [--compare_trl] --out step.json
    python -m openrs_jax.bench step --config configs/exp2.py --model preset:1.5b --steps 2 --out step.json
    python -m openrs_jax.bench step --model builtin:tiny --dataset builtin:sums --system_prompt "" \
        --reward_funcs accuracy --reward_weights 1.0 --prompt_len 16 --max_new_tokens 4 --out step.json

Times `--steps` optimizer steps after one warm-up step (which compiles) and reports medians:
`step_time_s` and its parts `rollout_s` (bf16/compute-dtype rollout copy + sampling),
`reward_s` (decoding and scoring, advantages), `reference_s` (reference log-probs; old
log-probs too when num_iterations > 1) and `update_s` (the jitted update with gradient
accumulation). Two engines:

- `trainer` (with `--dataset`): the product's own `GRPOTrainer.train_one_step()` on the first
  `--prompts_per_step` prompts of the dataset (every step uses the same prompts, so steps do
  the same work), rendered with the recipe's system prompt and scored by the configured reward
  functions in the reward pool. Needs the full install (ml_collections, math-verify) and a
  model directory with weights (a preset or config-only model gets random weights written to
  a temporary directory first).
- `synthetic` (without `--dataset`): the same step built from the same library pieces
  (`Sampler`, `sharding.rollout_params`, `token_logprobs`, `make_train_step`), on random
  prompt ids of `--prompt_len` tokens and a synthetic reward computed on the host from the
  token ids (no tokenizer, no math-verify: it runs on the GPU image). Its `reward_s` is
  therefore near zero; the rewards bench measures the real scoring cost.

EOS is ignored on both engines unless `--keep_eos`: every row decodes exactly
`--max_new_tokens` tokens, so the work per step is fixed. Figures added from the timings:
completion tokens/s, decode bandwidth use of the rollout (see `bench sampler`), model
FLOPs and MFU of the update (6 N + attention per token) and, counted separately, of the
forward-only reference pass (2 N + attention), and the runtime's peak device memory.

`--compare_trl` (trainer engine) also runs TRL's GRPOTrainer in the same process on the same
weights, tokenizer, prompts, G, lengths (EOS suppressed with `min_new_tokens`), sampling
settings, beta, clipping, micro-batch and reward functions, with `use_vllm=False`. After our
warm-up step, TRL trains `--steps` + 1 steps and each of our timed steps runs between two of
TRL's (outside TRL's timing), so both sides see the same background load on a shared
machine. It adds `trl_step_time_s` (median after TRL's warm-up step), TRL's split (rollout =
generate, reward = the reward functions, reference = the rest of TRL's batch preparation:
tokenising, the reference forward pass, advantages; update = the rest of the step), and
`ratio_vs_trl` = trl_step_time_s / step_time_s (> 1: we are faster; `ratio_vs_trl_best`
compares the fastest steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from openrs_jax.bench import shapes

# Completions are trained on their longest length rounded up to this (as the trainer does).
COMPLETION_BUCKET = 256
# Random prompt ids per row of the synthetic engine when neither --prompt_len nor --config says.
SYNTHETIC_PROMPT_LEN = 64

CONFIG_FIELDS: dict[str, shapes.FieldSource] = {
    "prompts_per_step": "prompts_per_step",
    "num_generations": "num_generations",
    "prompt_len": "max_prompt_length",
    "max_new_tokens": "max_completion_length",
    "micro_batch_size": "micro_batch_size",
    "beta": "beta",
    "loss_aggregation": "loss_aggregation",
    "remat": "remat",
    "dtype": "compute_dtype",
    "logprob_chunk": "logprob_chunk",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "mesh": "mesh",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m openrs_jax.bench step`."""
    parser.add_argument("--model", required=True,
                        help="model directory (with or without weights), config.json, builtin:tiny, or preset:NAME "
                        "(see bench.shapes)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory or builtin:tiny (trainer engine; default: --model)")
    parser.add_argument("--dataset", default=None,
                        help="JSON/JSONL/parquet of problems or builtin:sums: selects the trainer engine (real "
                        "prompts and rewards)")
    parser.add_argument("--engine", choices=("auto", "trainer", "synthetic"), default="auto",
                        help="auto: trainer with --dataset, synthetic without")
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64, help="completion tokens per row")
    parser.add_argument("--prompt_len", type=int, default=None,
                        help=f"synthetic engine: tokens per random prompt (default {SYNTHETIC_PROMPT_LEN}); trainer "
                        "engine: max_prompt_length (default: the recipe's 512, see docs/recipe.md section Prompts)")
    parser.add_argument("--micro_batch_size", type=int, default=None, help="rows per accumulation step (default: all)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--loss_aggregation", default="group_token_mean")
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    parser.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--logprob_chunk", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--mesh", default="fsdp=-1", help="mesh axes, e.g. 'fsdp=-1'")
    parser.add_argument("--learning_rate", type=float, default=1e-6)
    parser.add_argument("--reward_funcs", default="format,accuracy", help="trainer engine: reward functions")
    parser.add_argument("--reward_weights", default="1.0,2.0")
    parser.add_argument("--reward_num_workers", type=int, default=2)
    parser.add_argument("--system_prompt", default=None, help="trainer engine (default: the recipe's)")
    parser.add_argument("--keep_eos", action="store_true", help="stop rows at EOS (default: decode every token)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="per-device peak for MFU (default: known GPUs)")
    parser.add_argument("--no_copy_bandwidth", action="store_true", help="skip the copy-bandwidth measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare_trl", action="store_true", help="also time TRL's GRPOTrainer (trainer engine)")
    parser.add_argument("--trl_threads", type=int, default=None,
                        help="torch threads for TRL (default: torch's own, one per core; on a busy shared host "
                        "1 can be several times faster)")
    shapes.add_config_argument(parser, CONFIG_FIELDS)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _split(values: list[float]) -> tuple[float, list[float]]:
    """(warm-up value, timed values)."""
    return values[0], values[1:]


def synthetic_rewards(completion_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A cheap reward from token ids, varied within groups: 2 x [more than half of the tokens
    have even ids] + 1 x [the first token's id is a multiple of 3] (stands in for accuracy and
    format; it has no meaning, only a cost close to zero)."""
    mask = np.arange(completion_ids.shape[1])[None, :] < lengths[:, None]
    even = ((completion_ids % 2 == 0) & mask).sum(axis=1) > lengths / 2
    first = completion_ids[:, 0] % 3 == 0
    return (2.0 * even + 1.0 * first).astype(np.float32)


def build_batch(out: Any, advantages: np.ndarray) -> dict[str, np.ndarray]:
    """Prompt + completion rows trimmed to the longest completion, bucketed (as the trainer)."""
    longest = int(out.lengths.max()) if len(out.lengths) else 1
    t = min(-(-max(longest, 1) // COMPLETION_BUCKET) * COMPLETION_BUCKET, out.completion_ids.shape[1])
    completion_ids, completion_mask = out.completion_ids[:, :t], out.completion_mask[:, :t]
    return {
        "input_ids": np.concatenate([out.prompt_ids, completion_ids], axis=1).astype(np.int32),
        "attention_mask": np.concatenate([out.prompt_mask, completion_mask], axis=1).astype(np.int32),
        "completion_mask": completion_mask.astype(np.int32),
        "advantages": advantages.astype(np.float32),
    }


def forward_flops_per_token(config: Any, seq_len: int) -> float:
    """Model FLOPs of one forward-only token: a third of the training count (2 N + 4 L H d S)."""
    from openrs_jax.bench.update import train_flops_per_token

    return train_flops_per_token(config, seq_len) / 3.0


def _peak_flops(peak_tflops: float | None, dtype: str) -> float | None:
    import jax

    from openrs_jax.bench.update import PEAK_BF16_FLOPS

    if peak_tflops:
        return peak_tflops * 1e12
    if dtype != "bfloat16":
        return None
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in kind), None)


def phase_figures(
    config: Any, *, rows: int, prompt_len: int, completion_len: int, new_tokens: int, update_s: float,
    reference_s: float | None, decode_s: float | None, copy_bw: float | None, peak: float | None,
    devices: int,
) -> dict[str, Any]:
    """FLOPs, MFU and decode bandwidth use of one step's phases (update, reference, decode)."""
    from openrs_jax.bench.common import decode_bytes_per_step
    from openrs_jax.bench.update import train_flops_per_token

    seq = prompt_len + completion_len
    update_flops = train_flops_per_token(config, seq) * rows * seq
    out: dict[str, Any] = {
        "update_model_tflops": update_flops / 1e12,
        "update_tflops_per_s_per_device": update_flops / update_s / 1e12 / devices,
        "update_mfu": None if peak is None else update_flops / update_s / (peak * devices),
    }
    if reference_s:
        ref_flops = forward_flops_per_token(config, seq) * rows * seq
        out.update({
            "reference_model_tflops": ref_flops / 1e12,
            "reference_tflops_per_s_per_device": ref_flops / reference_s / 1e12 / devices,
            "reference_mfu": None if peak is None else ref_flops / reference_s / (peak * devices),
        })
    if decode_s and new_tokens > 1:
        traffic = decode_bytes_per_step(config, rows, prompt_len, new_tokens)
        step_s = decode_s / (new_tokens - 1)
        out.update({
            "decode_step_s": step_s,
            **traffic,
            "decode_bytes_per_s": traffic["decode_bytes_per_step"] / step_s / devices,
        })
        if copy_bw:
            out["decode_bandwidth_use"] = traffic["decode_bytes_per_step"] / devices / step_s / copy_bw
            out["decode_bandwidth_use_full_cache"] = (
                traffic["decode_bytes_per_step_full_cache"] / devices / step_s / copy_bw
            )
    return out


class _Recorder:
    """Wraps a callable and keeps the `timings` of each SampleOutput it returns."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn, self.timings = fn, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.fn(*args, **kwargs)
        self.timings.append(dict(out.timings))
        return out


# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------


def _phases(per_step: list[dict[str, float]]) -> dict[str, Any]:
    """Warm-up figures and medians of the timed steps."""
    keys = ("step_s", "rollout_s", "reward_s", "reference_s", "update_s", "decode_s", "prefill_s")
    first, timed = per_step[0], per_step[1:]
    out: dict[str, Any] = {"first_step_s": first["step_s"], "step_times_s": [s["step_s"] for s in timed]}
    for key in keys:
        if key in first:
            name = "step_time_s" if key == "step_s" else key
            out[name] = _median([s[key] for s in timed])
    out["step_time_min_s"] = min(s["step_s"] for s in timed)
    # What no phase covers (host work between phases), per step, then the median.
    parts = ("rollout_s", "reward_s", "reference_s", "update_s")
    out["other_s"] = _median([s["step_s"] - sum(s.get(k, 0.0) for k in parts) for s in timed])
    out["per_step"] = timed
    return out


def _make_mesh(spec: str) -> Any:
    """The mesh of `spec`; one with only fixed sizes may use fewer devices than there are."""
    import math

    import jax

    from openrs_jax.core import sharding

    sizes = sharding.parse_mesh_spec(spec)
    devices = jax.devices()
    if all(s > 0 for s in sizes.values()) and math.prod(sizes.values()) < len(devices):
        devices = devices[: math.prod(sizes.values())]
    return sharding.make_mesh(sizes, devices)


def run_synthetic(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    """Steps on random prompts with a host-side synthetic reward (no tokenizer, no math-verify)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from openrs_jax.core import sharding
    from openrs_jax.bench.common import describe_model
    from openrs_jax.core.grpo import UpdateConfig, create_train_state, group_advantages, make_train_step, token_logprobs
    from openrs_jax.core.model import abstract_model, params_of
    from openrs_jax.core.sampling import Sampler, SamplingParams

    p, g, n = args.prompts_per_step, args.num_generations, args.max_new_tokens
    rows = p * g
    model, random_weights = shapes.load_model(args.model, "float32", args.seed)
    config = model.config.replace(dtype=dtype, param_dtype="float32", remat=args.remat)
    params = params_of(model)
    del model
    graphdef = nnx.split(abstract_model(config))[0]
    mesh = _make_mesh(args.mesh)
    if rows % sharding.data_parallel_size(mesh):
        raise ValueError(f"{rows} rows do not split over {sharding.data_parallel_size(mesh)} data-parallel devices")
    update_config = UpdateConfig(
        num_generations=g, micro_batch_size=args.micro_batch_size, beta=args.beta,
        loss_aggregation=args.loss_aggregation, max_completion_length=n, logprob_chunk=args.logprob_chunk,
        learning_rate=args.learning_rate, warmup_ratio=0.0, max_steps=args.steps + 1,
    )
    state = create_train_state(params, update_config, mesh)
    del params
    ref_params = sharding.rollout_params(state.params, mesh, dtype) if args.beta > 0 else None
    train_step = make_train_step(graphdef, update_config, mesh)
    bucket = min(64, -(-args.prompt_len // 8) * 8)
    sampler = Sampler(config, mesh=mesh, prompt_bucket=bucket)
    eos = config.eos_token_id if config.eos_token_id is not None else 0
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    pad_id = int(config.pad_token_id if config.pad_token_id is not None else eos_ids[0])
    sampling = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=n,
        eos_ids=eos_ids if args.keep_eos else (), pad_id=pad_id,
    )
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(0, config.vocab_size, (p, args.prompt_len)).tolist()
    key = jax.random.key(args.seed)

    per_step, completion_tokens = [], []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        rollout_copy = sharding.rollout_params(state.params, mesh, dtype)
        out = sampler.generate(rollout_copy, prompts, g, sampling, jax.random.fold_in(key, i))
        del rollout_copy
        t1 = time.perf_counter()
        rewards = synthetic_rewards(out.completion_ids, out.lengths)
        advantages = np.asarray(group_advantages(jnp.asarray(rewards), g, scale=True))
        t2 = time.perf_counter()
        batch = sharding.shard_batch(build_batch(out, advantages), mesh)
        prompt_len = out.prompt_ids.shape[1]
        if ref_params is not None:
            batch["ref_logps"] = token_logprobs(
                graphdef, ref_params, batch["input_ids"], batch["attention_mask"], prompt_len,
                args.logprob_chunk, micro_batch_size=args.micro_batch_size, mesh=mesh,
            )
        jax.block_until_ready(batch)
        t3 = time.perf_counter()
        state, metrics = train_step(state, batch)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        t4 = time.perf_counter()
        completion_tokens.append(int(out.lengths.sum()))
        per_step.append({
            "step_s": t4 - t0, "rollout_s": t1 - t0, "reward_s": t2 - t1, "reference_s": t3 - t2,
            "update_s": t4 - t3, "prefill_s": out.timings["prefill_s"], "decode_s": out.timings["decode_s"],
            "loss": metrics["loss"], "kl": metrics.get("kl", 0.0),
        })
    return {
        "engine": "synthetic",
        "random_weights": random_weights,
        **describe_model(config),
        "remat": args.remat,
        "mesh": dict(mesh.shape),
        "prompt_len_bucketed": int(prompt_len),
        "completion_len_trained": int(batch["completion_mask"].shape[1]),
        "completion_tokens_per_step": completion_tokens[-1],
        "sampler_compilations": sampler.num_compilations,
        "_config": config,
        "_per_step": per_step,
    }


def _select_rows(dataset: str, tokenizer: Any, system_prompt: str, count: int, max_prompt_length: int) -> list[dict]:
    """The first `count` rows whose rendered prompt fits `max_prompt_length` tokens."""
    from openrs_jax.recipe import toy
    from openrs_jax.recipe.data import check_columns, load_rows
    from openrs_jax.recipe.prompts import render_prompt_ids

    # A local file or a built-in dataset: the bench never waits on the Hub.
    path = Path(toy.resolve(toy.check_name(dataset, "--dataset", "dataset"))).expanduser()
    if not path.exists():
        raise ValueError(f"--dataset {dataset} does not exist: give a JSON/JSONL/parquet file of problems "
                        f"or {', '.join(toy.BUILTIN_DATASETS)}")
    rows = load_rows(str(path))
    check_columns(rows, dataset)
    chosen = []
    for row in rows:
        if len(render_prompt_ids(tokenizer, row["problem"], system_prompt)) <= max_prompt_length:
            chosen.append(row)
            if len(chosen) == count:
                return chosen
    raise ValueError(f"{dataset} has fewer than {count} prompts of at most {max_prompt_length} tokens")


def _hf_directory(args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    """A Hugging Face directory with weights for the model spec (random weights written if needed)."""
    from openrs_jax.core.model import params_of, write_hf_directory
    from openrs_jax.core.model.io import is_hf_directory

    if not shapes.is_preset(args.model) and is_hf_directory(Path(args.model).expanduser()):
        return str(Path(args.model).expanduser()), False
    model, random_weights = shapes.load_model(args.model, "float32", args.seed)
    out = workdir / "model"
    write_hf_directory(out, params_of(model), model.config, dtype="float32")
    return str(out), random_weights


def default_prompt_len(engine: str) -> int:
    """--prompt_len when neither the flag nor --config gives it: real prompts (trainer engine) get
    the recipe's max_prompt_length, so a real dataset's prompts fit; random ones a short length."""
    if engine != "trainer":
        return SYNTHETIC_PROMPT_LEN
    shapes._ensure_ml_collections()
    from openrs_jax.recipe.config import base_config

    return int(base_config().data.max_prompt_length)


def run_trainer(args: argparse.Namespace, dtype: str, workdir: Path) -> dict[str, Any]:
    """Steps of the product's GRPOTrainer on the first prompts of a dataset."""
    if not shapes._ensure_ml_collections():
        raise ValueError("the trainer engine needs ml_collections (pip install ml-collections); "
                        "without it use the synthetic engine (no --dataset)")
    from openrs_jax.bench.common import describe_model
    from openrs_jax.recipe.config import SYSTEM_PROMPT, base_config
    from openrs_jax.core.tokenizer import load_tokenizer
    from openrs_jax.recipe.trainer import GRPOTrainer

    hf_dir, random_weights = _hf_directory(args, workdir)
    from openrs_jax.recipe import toy

    # builtin:tiny ships its tokenizer; the random weights written to hf_dir have none.
    tokenizer_dir = toy.resolve(toy.check_name(args.tokenizer, "--tokenizer", "model")) if args.tokenizer else (
        toy.resolve(args.model) if toy.is_builtin_model(args.model) else hf_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    system_prompt = SYSTEM_PROMPT if args.system_prompt is None else args.system_prompt
    rows = _select_rows(args.dataset, tokenizer, system_prompt, args.prompts_per_step, args.prompt_len)
    data_file = workdir / "prompts.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    funcs = tuple(f.strip() for f in args.reward_funcs.split(",") if f.strip())
    weights = tuple(float(w) for w in args.reward_weights.split(",") if w.strip())
    c = base_config()
    c.model.path, c.model.tokenizer_path, c.data.dataset = hf_dir, tokenizer_dir, str(data_file)
    c.data.system_prompt = system_prompt
    c.rewards.funcs, c.rewards.weights, c.rewards.num_workers = funcs, weights, args.reward_num_workers
    c.rollout.prompts_per_step, c.rollout.num_generations = args.prompts_per_step, args.num_generations
    c.grpo.micro_batch_size = args.micro_batch_size or args.prompts_per_step * args.num_generations
    c.data.max_prompt_length, c.rollout.max_completion_length = args.prompt_len, args.max_new_tokens
    c.rollout.temperature, c.rollout.top_p, c.rollout.top_k = args.temperature, args.top_p, args.top_k
    c.grpo.learning_rate, c.grpo.beta, c.grpo.loss_aggregation = args.learning_rate, args.beta, args.loss_aggregation
    c.grpo.max_steps = args.steps + 1
    c.model.compute_dtype, c.model.param_dtype, c.model.remat = dtype, "float32", args.remat
    c.grpo.logprob_chunk = args.logprob_chunk
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1
    c.run.seed = args.seed
    c.run.output_dir = str(workdir / "run")
    c.run.tensorboard, c.run.log_completions, c.run.save_steps = False, 0, 10**6
    c.lock()
    trainer = GRPOTrainer(c)
    try:
        if not args.keep_eos:
            trainer.sampling = dataclasses.replace(trainer.sampling, eos_ids=())
        recorder = _Recorder(trainer.sampler.generate)
        trainer.sampler.generate = recorder  # instance attribute: the trainer's calls go through it
        per_step: list[dict[str, Any]] = []
        completion_tokens: list[int] = []

        def one_step() -> None:
            m = trainer.train_one_step()
            timings = recorder.timings[-1]
            completion_tokens.append(int(round(m["completion_length"] * args.prompts_per_step * args.num_generations)))
            per_step.append({
                "step_s": m["time/step_s"], "rollout_s": m["time/rollout_s"], "reward_s": m["time/reward_s"],
                "reference_s": m["time/reference_s"], "update_s": m["time/update_s"],
                "prefill_s": timings["prefill_s"], "decode_s": timings["decode_s"],
                "loss": m["loss"], "kl": m.get("kl", 0.0), "reward": m["reward"],
                "completion_length": m["completion_length"],
            })

        one_step()  # warm-up: compiles
        prompt_lengths = [len(e.prompt_ids) for e in trainer.dataset.examples]
        info: dict[str, Any] = {
            "engine": "trainer",
            "random_weights": random_weights,
            **describe_model(trainer.model_config),
            "remat": args.remat,
            "mesh": dict(trainer.mesh.shape),
            "tokenizer": str(tokenizer_dir),
            "dataset": str(args.dataset),
            "reward_funcs": list(funcs),
            "reward_weights": list(weights),
            "prompt_tokens": prompt_lengths,
            "prompt_len_bucketed": -(-max(prompt_lengths) // trainer.sampler.prompt_bucket) * trainer.sampler.prompt_bucket,
            "completion_len_trained": min(-(-args.max_new_tokens // COMPLETION_BUCKET) * COMPLETION_BUCKET,
                                          args.max_new_tokens),
            "_config": trainer.model_config,
            "_hf_dir": hf_dir,
            "_tokenizer_dir": tokenizer_dir,
            "_rows": rows,
            "_system_prompt": system_prompt,
            "_funcs": funcs,
            "_weights": weights,
        }
        if args.compare_trl:
            from openrs_jax.bench.common import device_memory

            info["_memory"] = device_memory()  # before torch shares the process

            def between_trl_steps() -> None:
                if len(per_step) < args.steps + 1:
                    one_step()

            # Our timed steps run between TRL's, so that both see the same load from other jobs.
            info["_trl"] = run_trl(args, info, workdir, between_trl_steps)
        while len(per_step) < args.steps + 1:
            one_step()
        info.update({
            "completion_tokens_per_step": completion_tokens[-1],
            "sampler_compilations": trainer.sampler.num_compilations,
            "_per_step": per_step,
        })
        return info
    finally:
        trainer.close()


# ---------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------


def _trl_reward(name: str) -> Callable[..., list[float]]:
    """One of our reward functions with TRL's calling convention (in-process, as TRL runs them)."""
    from openrs_jax.recipe.rewards import get_reward_function

    fn = get_reward_function(name)

    def reward(prompts: list, completions: list, gold: list[str], **kwargs: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(x) for x in fn(texts, gold)]

    reward.__name__ = name
    return reward


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def run_trl(
    args: argparse.Namespace, ours: dict[str, Any], workdir: Path, between_steps: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same weights, tokenizer, prompts and settings; per-step times.

    `between_steps` runs after each TRL step (outside its timing): our steps, interleaved.
    `--trl_threads` sets torch's threads for the run (restored afterwards).
    """
    import torch

    threads_before = torch.get_num_threads()
    if args.trl_threads:
        torch.set_num_threads(args.trl_threads)
    try:
        return _run_trl(args, ours, workdir, between_steps)
    finally:
        torch.set_num_threads(threads_before)


def _run_trl(
    args: argparse.Namespace, ours: dict[str, Any], workdir: Path, between_steps: Callable[[], None],
) -> dict[str, Any]:
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    from openrs_jax.recipe.prompts import build_messages, render_prompt_ids
    from openrs_jax.recipe.rewards import gold_from_row
    from openrs_jax.core.tokenizer import load_tokenizer

    rows, system_prompt = ours["_rows"], ours["_system_prompt"]
    g, p, n = args.num_generations, args.prompts_per_step, args.max_new_tokens
    total = p * g
    mb = args.micro_batch_size or total
    tokenizer = AutoTokenizer.from_pretrained(ours["_tokenizer_dir"])
    ours_tok = load_tokenizer(ours["_tokenizer_dir"])
    messages = [build_messages(r["problem"], system_prompt) for r in rows]
    prompts_match = all(
        _chat_ids(tokenizer, m) == render_prompt_ids(ours_tok, r["problem"], system_prompt)
        for m, r in zip(messages, rows)
    )
    dataset = datasets.Dataset.from_list([{"prompt": m, "gold": gold_from_row(r)} for m, r in zip(messages, rows)])
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[ours["dtype"]]
    settings = dict(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=mb,
        gradient_accumulation_steps=total // mb,
        num_generations=g,
        max_completion_length=n,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        beta=args.beta,
        epsilon=0.2,
        num_iterations=1,
        loss_type="dapo",
        scale_rewards="group",
        reward_weights=list(ours["_weights"]),
        learning_rate=args.learning_rate,
        max_grad_norm=1.0,
        weight_decay=0.0,
        max_steps=args.steps + 1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_vllm=False,
        bf16=ours["dtype"] == "bfloat16",
        model_init_kwargs={"dtype": torch_dtype},
        disable_tqdm=True,
        log_completions=False,
        seed=args.seed,
        dataloader_num_workers=0,
        use_cpu=True,
    )
    # transformers 5 renamed gradient_checkpointing (the old name still works, with a warning).
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    settings[checkpointing] = args.remat != "none"
    if not args.keep_eos:
        settings["generation_kwargs"] = {"min_new_tokens": n}  # no EOS before n tokens: every row has n
    config = trl.GRPOConfig(**settings)

    class StepTimer(TrainerCallback):
        """Step times from one step's end to the next, less what runs between them."""

        def __init__(self) -> None:
            self.start = 0.0
            self.durations: list[float] = []
            self.parts: list[dict[str, float]] = [{}]

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.durations.append(time.perf_counter() - self.start)
            self.parts.append({})
            between_steps()
            self.start = time.perf_counter()

    timer = StepTimer()
    trainer = trl.GRPOTrainer(
        model=ours["_hf_dir"], reward_funcs=[_trl_reward(f) for f in ours["_funcs"]], args=config,
        train_dataset=dataset, processing_class=tokenizer, callbacks=[timer],
    )

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                part = timer.parts[-1]
                part[name] = part.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    # Instance attributes shadow the methods: TRL's own calls go through the timers.
    trainer._generate_single_turn = timed("rollout_s", trainer._generate_single_turn)
    trainer._calculate_rewards = timed("reward_s", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("prepare_s", trainer._generate_and_score_completions)
    trainer.train()
    per_step = []
    for step_s, part in zip(timer.durations, timer.parts):
        prepare = part.get("prepare_s", 0.0)
        per_step.append({
            "step_s": step_s,
            "rollout_s": part.get("rollout_s", 0.0),
            "reward_s": part.get("reward_s", 0.0),
            # Tokenising, the reference forward pass and advantages: the rest of the preparation.
            "reference_s": prepare - part.get("rollout_s", 0.0) - part.get("reward_s", 0.0),
            "update_s": step_s - prepare,
        })
    logs = [h for h in trainer.state.log_history if "loss" in h]
    lengths = [h.get("completions/mean_length") for h in logs]
    timed_steps = per_step[1:]
    result = {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "trl_settings": {k: v for k, v in settings.items() if k not in ("output_dir", "model_init_kwargs")},
        "trl_prompts_match_ours": prompts_match,
        "trl_first_step_s": per_step[0]["step_s"] if per_step else None,
        "trl_step_times_s": [s["step_s"] for s in timed_steps],
        "trl_step_time_s": _median([s["step_s"] for s in timed_steps]),
        "trl_step_time_min_s": min((s["step_s"] for s in timed_steps), default=float("nan")),
        "trl_completion_mean_length": lengths,
        "trl_per_step": timed_steps,
    }
    for key in ("rollout_s", "reward_s", "reference_s", "update_s"):
        result[f"trl_{key}"] = _median([s[key] for s in timed_steps])
    del trainer
    return result


# ---------------------------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark; returns the JSON fields (the dispatcher adds date, device, command)."""
    import jax

    from openrs_jax.bench.common import copy_bandwidth, device_memory

    shapes.apply_run_config(args)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.num_generations < 2:
        raise ValueError("--num_generations must be >= 2 (GRPO compares completions of one prompt)")
    rows = args.prompts_per_step * args.num_generations
    if args.micro_batch_size is not None and rows % args.micro_batch_size:
        raise ValueError(f"--micro_batch_size {args.micro_batch_size} must divide {rows} rows")
    engine = args.engine if args.engine != "auto" else ("trainer" if args.dataset else "synthetic")
    if engine == "trainer" and not args.dataset:
        raise ValueError("the trainer engine needs --dataset (a JSON/JSONL/parquet file of problems)")
    if args.compare_trl and engine != "trainer":
        raise ValueError("--compare_trl needs the trainer engine: give --dataset and --tokenizer")
    if args.prompt_len is None:
        args.prompt_len = default_prompt_len(engine)
    platform = jax.devices()[0].platform
    dtype = args.dtype or ("bfloat16" if platform == "gpu" else "float32")
    copy = None if args.no_copy_bandwidth else copy_bandwidth()

    with tempfile.TemporaryDirectory(prefix="openrs-bench-step-") as tmp:
        workdir = Path(tmp)
        if engine == "trainer":
            ours = run_trainer(args, dtype, workdir)
        else:
            ours = run_synthetic(args, dtype)
        memory = ours.pop("_memory", None) or device_memory()
        trl_result = ours.pop("_trl", None)
        config, per_step = ours.pop("_config"), ours.pop("_per_step")
        phases = _phases(per_step)
        devices = jax.device_count()
        result: dict[str, Any] = {
            "model": str(args.model),
            **{k: v for k, v in ours.items() if not k.startswith("_")},
            "prompts_per_step": args.prompts_per_step,
            "num_generations": args.num_generations,
            "rows": rows,
            "max_new_tokens": args.max_new_tokens,
            "eos_ignored": not args.keep_eos,
            "micro_batch_size": args.micro_batch_size or rows,
            "beta": args.beta,
            "loss_aggregation": args.loss_aggregation,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "steps": args.steps,
            "run_config": args.config,
            **phases,
            "completion_tokens_per_s": ours["completion_tokens_per_step"] / phases["step_time_s"],
            **phase_figures(
                config, rows=rows, prompt_len=ours["prompt_len_bucketed"],
                completion_len=ours["completion_len_trained"], new_tokens=args.max_new_tokens,
                update_s=phases["update_s"], reference_s=phases.get("reference_s") if args.beta > 0 else None,
                decode_s=phases.get("decode_s"), copy_bw=copy["copy_bandwidth_bytes_per_s"] if copy else None,
                peak=_peak_flops(args.peak_tflops, dtype), devices=devices,
            ),
            **(copy or {}),
            **memory,
        }
        if trl_result is not None:
            result.update(trl_result)
            result["ratio_vs_trl"] = trl_result["trl_step_time_s"] / result["step_time_s"]
            # Fastest step against fastest step: less sensitive to other jobs on a shared machine.
            result["ratio_vs_trl_best"] = trl_result["trl_step_time_min_s"] / result["step_time_min_s"]
            for key in ("rollout_s", "reward_s", "reference_s", "update_s"):
                if result.get(key):
                    result[f"ratio_vs_trl_{key[:-2]}"] = trl_result[f"trl_{key}"] / result[key]
    return result
