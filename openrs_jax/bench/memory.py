"""Memory plan: per-device bytes of the update, reference and rollout programs, compiled ahead of time.

    python -m openrs_jax.bench memory --config configs/exp2.py \
        --model DIR --devices 4 --out memory.json

Nothing is allocated: the programs are lowered from abstract shapes (`abstract_model`,
`jax.ShapeDtypeStruct`) at the run's real sizes and compiled for `--devices` devices, and
XLA's memory analysis is read back. Without that many accelerators the command re-runs
itself on emulated CPU devices (`--xla_force_host_platform_device_count`), so the plan can be
checked on a laptop; XLA:CPU's buffer assignment is then the estimate.

A program's peak is arguments + outputs + temporaries - aliased (donated) bytes. The step
estimate adds what stays resident meanwhile: the train state during rollouts and reference
passes, the frozen reference copy throughout.

The rollout figure is the larger peak of the sampler's two programs (`openrs_jax.core.sampling`:
prefill of the distinct prompts, then the decode loop over a KV cache of prompt +
completion slots for every row), lowered at the config's shapes with the bf16 rollout copy of
the parameters in its rollout placement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from openrs_jax.core import sharding
from openrs_jax.core.grpo import UpdateConfig, abstract_train_state, make_train_step, token_logprobs
from openrs_jax.core.model import KVCache, Qwen2Config, abstract_model

GB = 1e9


def add_step_arguments(parser: argparse.ArgumentParser, devices: int, devices_help: str) -> None:
    """The flags `memory` and `plan` share: the run config, the model, the devices and the budget."""
    from openrs_jax.cli import add_hidden_alias

    parser.add_argument("--config", required=True, help="run config file, e.g. configs/exp2.py")
    model = parser.add_argument(
        "--model", dest="model_config", default=None,  # required, checked by check_step_args (alias)
        help="model directory, config.json, builtin:tiny or preset:NAME (see bench.shapes) giving the shapes "
        "(required)",
    )
    add_hidden_alias(parser, "--model_config", model)  # the flag's name in earlier versions
    parser.add_argument("--devices", type=int, default=devices, help=devices_help)
    parser.add_argument(
        "--micro_batch_size", type=int, default=None,
        help="rows per accumulation step, all devices together (default: the config's, rounded up to a "
        "multiple of the data-parallel devices)",
    )
    parser.add_argument("--budget_gb", type=float, default=40.0, help="per-device goal to check against")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_step_arguments(parser, 4, "devices to compile for (emulated on CPU if absent)")


def step_argv(args: argparse.Namespace, *optional: str) -> list[str]:
    """The shared flags (and the `optional` ones that are set) as given, for a child process."""
    argv = ["--config", str(args.config), "--model", str(args.model_config), "--devices", str(args.devices),
            "--budget_gb", str(args.budget_gb)]
    for name in ("micro_batch_size", *optional):
        if getattr(args, name) is not None:
            argv += [f"--{name}", str(getattr(args, name))]
    return argv


def emulated_cpu_env(devices: int) -> dict[str, str]:
    """Environment variables that give a fresh process `devices` emulated CPU devices."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def run_child(module: str, argv: list[str], env_updates: dict[str, str]) -> dict[str, Any]:
    """Runs `python -m module *argv` with `env_updates`; returns the JSON line it prints last."""
    proc = subprocess.run([sys.executable, "-m", module, *argv], env={**os.environ, **env_updates},
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise ValueError(f"the child process `python -m {module}` failed (exit {proc.returncode}); "
                         "see the messages above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_step_args(args: argparse.Namespace) -> None:
    if args.model_config is None:
        raise ValueError("--model is required: a model directory, config.json, builtin:tiny or preset:1.5b")
    if args.devices < 1:
        raise ValueError(f"--devices must be >= 1, got {args.devices}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_step_args(args)
    if jax.device_count() >= args.devices:
        return memory_plan(args)
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s) here: compiling for "
          f"{args.devices} emulated CPU devices in a child process", file=sys.stderr)
    result = run_child("openrs_jax.bench.memory", step_argv(args), emulated_cpu_env(args.devices))
    return {**result, "emulated_devices": True}


def _valid_micro_batch(requested: int, rows: int, dp: int) -> int:
    """The smallest multiple of `requested` and `dp` that divides `rows` (else all rows)."""
    mb = math.lcm(requested, dp)
    return mb if rows % mb == 0 else rows


def compiled_memory(compiled: Any) -> dict[str, int]:
    """XLA's memory analysis of a compiled program, and its peak (see the module's docstring)."""
    m = compiled.memory_analysis()
    stats = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
    }
    stats["peak_bytes"] = stats["argument_bytes"] + stats["output_bytes"] + stats["temp_bytes"] - stats["alias_bytes"]
    return stats


def _bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded `ShapeDtypeStruct`s."""
    leaves = jax.tree.leaves(tree)
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize for x in leaves)


def _abstract(shape: tuple[int, ...], dtype: Any, mesh: jax.sharding.Mesh) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding.batch_sharding(mesh, len(shape)))


def _rollout_params(param_shapes: Any, mesh: jax.sharding.Mesh, dtype: str) -> Any:
    shardings = sharding.tree_shardings(param_shapes, mesh, fsdp=False)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype), sharding=sh),
                        param_shapes, shardings)


def _rollout_sampling(config: Qwen2Config, cfg: Any) -> Any:
    """The trainer's `SamplingParams` for run config `cfg`, stopping at the model config's EOS."""
    from openrs_jax.recipe.trainer import rollout_sampling

    eos = config.eos_token_id if config.eos_token_id is not None else 0
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
    return rollout_sampling(cfg, eos_ids, int(config.pad_token_id if config.pad_token_id is not None else eos_ids[0]))


@dataclasses.dataclass
class StepSetup:
    """A training step's shapes, abstract state and batch, placed on `mesh` (nothing allocated)."""

    cfg: Any
    model_config: Qwen2Config
    mesh: jax.sharding.Mesh
    rows: int
    prompt_len: int
    new_tokens: int
    micro_batch_size: int
    update_config: UpdateConfig
    graphdef: nnx.GraphDef
    state: Any  # TrainState of ShapeDtypeStructs
    batch: dict[str, Any]
    rollout_params: Any  # the bf16 rollout / reference copy
    sampler: Any  # the policy's Sampler (openrs_jax.core.sampling)

    @property
    def train_state_bytes(self) -> int:
        return _bytes_per_device(self.state)

    @property
    def reference_params_bytes(self) -> int:
        return _bytes_per_device(self.rollout_params) if self.cfg.grpo.beta > 0 else 0

    def fields(self) -> dict[str, Any]:
        """The result fields `memory` and `plan` share: the step's shapes and resident state."""
        return {
            "mesh": dict(self.mesh.shape),
            "num_params": self.model_config.num_params(),
            "rows": self.rows,
            "prompt_length": self.prompt_len,
            "completion_length": self.new_tokens,
            "micro_batch_size": self.micro_batch_size,
            "compute_dtype": self.cfg.model.compute_dtype,
            "remat": self.cfg.model.remat,
            "train_state_bytes_per_device": self.train_state_bytes,
            "reference_params_bytes_per_device": self.reference_params_bytes,
        }


def run_policy(cfg: Any, model_spec: str, devices: Sequence[jax.Device]) -> Any:
    """The `Policy` of a run config `cfg` (its dtypes, remat and mesh over `devices`) for the
    model spec; no weights are loaded."""
    from openrs_jax.bench import shapes
    from openrs_jax.recipe.trainer import rollout_prompt_bucket

    # The trainer's prompt bucket, so that the longest prompt keeps its length.
    bucket = rollout_prompt_bucket(cfg.data.max_prompt_length)
    return shapes.load_policy(model_spec, cfg.model.compute_dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat,
                              mesh=cfg.mesh.to_dict(), devices=list(devices), prompt_bucket=bucket,
                              sampler_options={"check_memory": False})


def setup_from_args(args: argparse.Namespace, devices: Sequence[jax.Device]) -> StepSetup:
    """The step of `--config` with `--model` over the first `--devices` of `devices`."""
    from openrs_jax.recipe.config import load_config

    cfg = load_config(args.config)
    return step_setup(cfg, run_policy(cfg, args.model_config, list(devices)[: args.devices]), args.micro_batch_size)


def step_setup(cfg: Any, policy: Any, micro_batch_size: int | None = None) -> StepSetup:
    """The abstract train state, batch and rollout copy of one step of run config `cfg` with
    `policy` (`run_policy`)."""
    model_config, mesh = policy.model_config, policy.mesh
    dp = sharding.data_parallel_size(mesh)
    rows = cfg.rollout.prompts_per_step * cfg.rollout.num_generations
    prompt_len, new_tokens = cfg.data.max_prompt_length, cfg.rollout.max_completion_length
    seq = prompt_len + new_tokens
    if rows % dp:
        raise ValueError(f"{rows} rows per step do not split over {dp} data-parallel devices")
    mb = micro_batch_size or _valid_micro_batch(cfg.grpo.micro_batch_size, rows, dp)
    update_config = dataclasses.replace(UpdateConfig.from_config(cfg), micro_batch_size=mb)
    graphdef, abstract_params = nnx.split(abstract_model(model_config))
    param_shapes = nnx.to_pure_dict(abstract_params)
    batch = {
        "input_ids": _abstract((rows, seq), jnp.int32, mesh),
        "attention_mask": _abstract((rows, seq), jnp.int32, mesh),
        "completion_mask": _abstract((rows, new_tokens), jnp.int32, mesh),
        "advantages": _abstract((rows,), jnp.float32, mesh),
        "ref_logps": _abstract((rows, new_tokens), jnp.float32, mesh) if cfg.grpo.beta > 0 else None,
        "old_logps": _abstract((rows, new_tokens), jnp.float32, mesh) if cfg.grpo.num_iterations > 1 else None,
    }
    return StepSetup(
        cfg=cfg, model_config=model_config, mesh=mesh, rows=rows, prompt_len=prompt_len, new_tokens=new_tokens,
        micro_batch_size=mb, update_config=update_config, graphdef=graphdef,
        state=abstract_train_state(param_shapes, update_config, mesh), batch=batch,
        rollout_params=_rollout_params(param_shapes, mesh, cfg.model.compute_dtype), sampler=policy.sampler,
    )


@dataclasses.dataclass
class StepProgram:
    """One compiled program of a training step."""

    name: str
    phase: str  # "rollout" | "reference" | "update" | "other"
    calls_per_step: int
    compiled: Any
    compile_s: float
    description: str = ""
    tokens_per_iteration: int = 1  # the decode: tokens generated per iteration of its token loop


def step_programs(setup: StepSetup) -> Iterator[StepProgram]:
    """Compiles, one at a time, every program one training step runs (as `trainer.Trainer` calls them):
    the rollout cast of the parameters, the sampler's prefill and decode, the reference (and, with
    num_iterations > 1, old-policy) log-probs, and the update."""
    cfg, mesh, mb, prompt_len = setup.cfg, setup.mesh, setup.micro_batch_size, setup.prompt_len
    batch = setup.batch

    def timed(name: str, phase: str, calls: int, make: Callable[[], Any], description: str = "") -> StepProgram:
        start = time.perf_counter()
        program = make()
        compiled = program.compile() if hasattr(program, "compile") else program
        return StepProgram(name, phase, calls, compiled, round(time.perf_counter() - start, 1), description)

    cast = jax.jit(sharding.rollout_params, static_argnames=("mesh", "dtype"))
    yield timed("rollout_params", "rollout", 1, lambda: cast.lower(setup.state.params, mesh, cfg.model.compute_dtype),
                "the train state's fp32 parameters cast to the rollout copy")
    # The sampler's own programs (`Sampler.compile`: the weights' layout, prefill, decode) as
    # `Sampler.generate` calls them for the step's prompts of the longest prompt bucket. One
    # compile builds all three (each takes the previous one's outputs): the first one's time has it.
    sampler_programs: dict[str, Any] = {}

    def sampler_program(name: str) -> Any:
        if not sampler_programs:
            sampler_programs.update(setup.sampler.compile(
                setup.rollout_params, cfg.rollout.prompts_per_step, cfg.rollout.num_generations, prompt_len,
                _rollout_sampling(setup.model_config, cfg)))
        return sampler_programs[name]

    for name in ("prepare", "prefill", "decode"):
        program = timed(name, "rollout", 1, lambda: sampler_program(name), "sampler (openrs_jax.core.sampling)")
        # The decode's token loop generates `check_every` tokens per iteration.
        program.tokens_per_iteration = setup.sampler.check_every if name == "decode" else 1
        yield program
    logprob_passes = {
        "reference": (cfg.grpo.beta > 0, setup.rollout_params, "reference log-probs (bf16 copy of the initial weights)"),
        "old_logprobs": (cfg.grpo.num_iterations > 1, setup.state.params, "old-policy log-probs (num_iterations > 1)"),
    }
    for name, (needed, params, description) in logprob_passes.items():
        if needed:
            yield timed(name, "reference", 1, lambda: token_logprobs.lower(
                setup.graphdef, params, batch["input_ids"], batch["attention_mask"], prompt_len,
                setup.update_config.logprob_chunk, micro_batch_size=mb, mesh=mesh,
            ), description)
    step = make_train_step(setup.graphdef, setup.update_config, mesh)
    yield timed("update", "update", cfg.grpo.num_iterations, lambda: step.lower(setup.state, batch),
                f"{setup.rows // mb} micro-batches of {mb} rows, AdamW")


def step_phase_peaks(setup: StepSetup, programs: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Bytes per device resident while each phase runs: the phase's largest program peak plus what
    else stays alive meanwhile (the train state outside the update, the frozen reference copy).

    programs: name -> {"phase", "peak_bytes_per_device", "argument_bytes"}, as `step_programs` names them.
    """
    peak = {name: int(p["peak_bytes_per_device"]) for name, p in programs.items()}
    args = {name: int(p["argument_bytes"]) for name, p in programs.items()}
    resident_ref, train_state = setup.reference_params_bytes, setup.train_state_bytes
    phases = {"update": peak["update"] + resident_ref}
    # The prefill's outputs (cache, logits) are the decode's donated inputs: the larger peak counts.
    sampler = [peak[n] for n, p in programs.items() if p["phase"] == "rollout" and n != "rollout_params"]
    phases["rollout"] = max(sampler) + train_state + resident_ref
    # These two take the train state's parameters as arguments, already counted in train_state.
    for name in ("rollout_params", "old_logprobs"):
        if name in programs:
            phases[name] = peak[name] - args[name] + train_state + resident_ref
    if "reference" in programs:
        phases["reference"] = peak["reference"] + train_state
    return phases


def memory_plan(args: argparse.Namespace, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Compiles the step's programs for `args.devices` devices and reads their memory."""
    devices = list(devices if devices is not None else jax.devices())
    if len(devices) < args.devices:
        raise ValueError(f"{args.devices} devices requested but only {len(devices)} are visible")
    setup = setup_from_args(args, devices)
    model_config, mb, dp = setup.model_config, setup.micro_batch_size, sharding.data_parallel_size(setup.mesh)
    result: dict[str, Any] = {
        "devices": args.devices,
        "compiled_for": devices[0].platform,
        **setup.fields(),
        "rows_per_device_per_micro_batch": mb / dp,
        "logprob_chunk": setup.update_config.logprob_chunk,
        "loss_aggregation": setup.update_config.loss_aggregation,
    }
    programs: dict[str, dict[str, Any]] = {}
    for program in step_programs(setup):
        stats = compiled_memory(program.compiled)
        programs[program.name] = {"phase": program.phase, "peak_bytes_per_device": stats["peak_bytes"],
                                  "argument_bytes": stats["argument_bytes"]}
        result[f"{program.name}_compile_s"] = program.compile_s
        result[f"{program.name}_memory"] = stats
        result[f"{program.name}_peak_bytes_per_device"] = stats["peak_bytes"]
        if program.phase == "rollout" and program.name != "rollout_params":
            result["rollout_program"] = program.description
        print(f"{program.name}: peak {stats['peak_bytes'] / GB:.2f} GB per device", file=sys.stderr)
    sampler = [n for n, p in programs.items() if p["phase"] == "rollout" and n != "rollout_params"]
    result["rollout_peak_bytes_per_device"] = max(result[f"{n}_peak_bytes_per_device"] for n in sampler)
    result["kv_cache_bytes_per_device"] = KVCache.num_bytes(model_config, setup.rows // dp,
                                                            setup.prompt_len + setup.new_tokens)
    phases = step_phase_peaks(setup, programs)
    result["step_peak_estimate_bytes_per_device"] = max(phases.values())
    result["step_peak_phase"] = max(phases, key=phases.get)
    result["budget_bytes_per_device"] = int(args.budget_gb * GB)
    result["fits_budget"] = all(
        result[k] < args.budget_gb * GB
        for k in ("update_peak_bytes_per_device", "rollout_peak_bytes_per_device", "step_peak_estimate_bytes_per_device")
    )
    return result


def main() -> None:
    """Child-process entry (`python -m openrs_jax.bench.memory`): prints the plan as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m openrs_jax.bench.memory")
    add_arguments(parser)
    args = parser.parse_args()
    print(json.dumps(memory_plan(args)))


if __name__ == "__main__":
    main()
