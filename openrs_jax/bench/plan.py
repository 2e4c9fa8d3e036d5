"""GPU plan without a GPU: every program of one training step compiled for a GPU target.

    python -m openrs_jax.bench plan --config configs/exp2.py --model_config DIR \
        --target h100 --devices 1 [--micro_batch_size M] [--dump_hlo DIR] --out plan.json

With the gpu extra installed (`jax[cuda12]`), `jax.experimental.topologies` makes `--devices`
compile-only devices of the target (a `GpuTargetConfigProto` in openrs_jax/bench/targets/), and
the programs of a step (the rollout cast, the sampler's prefill and decode, the reference pass,
the update: the same ones `bench memory` builds) are compiled by the real GPU compiler at the
config's shapes. Nothing runs. Per program the plan reads XLA's memory analysis and, from the
optimized HLO (`openrs_jax.bench.hlo_cost`), bytes written and read and matmul FLOPs per call, and
estimates its time as a roofline: max(FLOPs / peak bf16 FLOP/s, bytes moved / bandwidth). The
decode loop counts the config's completion length of tokens; its per-call figures are per
generated token. Without the gpu extra, it says so and falls back to the same plan on emulated
CPU devices (the memory figures are then `bench memory`'s).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import jax

from openrs_jax.bench import hlo_cost, memory

GB = 1e9
TARGETS_DIR = Path(__file__).resolve().parent / "targets"
_CHILD_ENV = "OPENRS_PLAN_CHILD"  # set in the child process this command may start


@dataclasses.dataclass(frozen=True)
class Target:
    """A GPU to compile for: its GpuTargetConfigProto text and the roofline's two rates."""

    name: str
    text: str
    device_kind: str
    memory_bytes: int
    bandwidth_bytes_per_s: float
    peak_bf16_flops_per_s: float


def target_names() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.txtpb"))


def load_target(name: str) -> Target:
    """The target description `targets/NAME.txtpb`: the proto's device name, memory size and
    bandwidth, and the datasheet's dense bf16 peak from its `# plan.peak_bf16_flops_per_s:` line."""
    path = TARGETS_DIR / f"{name}.txtpb"
    if not path.is_file():
        raise ValueError(f"unknown GPU target {name!r}; valid: {', '.join(target_names())}")
    text = path.read_text()

    def field(pattern: str) -> str:
        m = re.search(pattern, text, re.MULTILINE)
        if not m:
            raise ValueError(f"{path} lacks {pattern!r}")
        return m.group(1)

    return Target(
        name=name,
        text=text,
        device_kind=field(r'^device_description_str:\s*"([^"]*)"'),
        memory_bytes=int(field(r"^\s*device_memory_size:\s*(\d+)")),
        bandwidth_bytes_per_s=float(field(r"^\s*memory_bandwidth:\s*(\d+)")),
        peak_bf16_flops_per_s=float(field(r"^#\s*plan\.peak_bf16_flops_per_s:\s*([\d.eE+]+)")),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    memory.add_step_arguments(parser, 1, "GPUs of the target to compile for")
    parser.add_argument("--target", required=True, choices=target_names(), help="GPU to compile for")
    parser.add_argument("--dump_hlo", type=Path, default=None,
                        help="directory to write each program's optimized HLO to (NAME.hlo.txt)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    memory.check_step_args(args)
    target = load_target(args.target)
    devices, why_not = compile_only_devices(target, args.devices)
    if devices is not None:
        return gpu_plan(args, target, devices, f"{target.device_kind} (compile-only)")
    if _cuda_plugin_installed() and not os.environ.get(_CHILD_ENV):
        # The plugin is there but did not start in this process (its CUDA version check needs a
        # GPU): a fresh process that keeps GPU backends off can still make compile-only devices.
        return _run_child(args, {"JAX_PLATFORMS": "cpu", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK": "1"})
    print(f"compile-only {target.name} devices are unavailable ({why_not}); install the gpu extra "
          f"(pip install -e '.[gpu]') for a GPU plan; falling back to the emulated-CPU plan", file=sys.stderr)
    fallback = f"emulated CPU devices: {why_not}"
    cpus = [d for d in jax.devices() if d.platform == "cpu"]
    if len(cpus) >= args.devices:
        return {**gpu_plan(args, target, cpus[: args.devices], "cpu (emulated)"), "fallback": fallback}
    if os.environ.get(_CHILD_ENV):
        raise ValueError(f"{args.devices} CPU devices requested but only {len(cpus)} are visible")
    return {**_run_child(args, memory.emulated_cpu_env(args.devices)), "fallback": fallback}


def _cuda_plugin_installed() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))


def compile_only_devices(target: Target, count: int) -> tuple[list[Any] | None, str]:
    """`count` compile-only devices of `target`, or None and the reason they cannot be made here."""
    try:
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(
            "openrs-plan", "cuda", topology=f"1x1x{count}", target_config=target.text
        )
        return list(topology.devices), ""
    except Exception as e:  # no CUDA plugin, or one that did not initialise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not _cuda_plugin_installed():
            reason = "jax[cuda12] is not installed"
        return None, reason


def _run_child(args: argparse.Namespace, env_updates: dict[str, str]) -> dict[str, Any]:
    """Re-runs this plan in a child process with `env_updates`; returns its result."""
    print(f"compiling in a child process with {' '.join(f'{k}={v}' for k, v in env_updates.items())}", file=sys.stderr)
    return memory.run_child("openrs_jax.bench.plan", memory.step_argv(args, "target", "dump_hlo"),
                            {**env_updates, _CHILD_ENV: "1"})


def roofline_s(cost: hlo_cost.Cost, target: Target) -> float:
    """max(FLOPs / peak, bytes moved / bandwidth): the time of a program that overlaps perfectly."""
    return max(cost.flops / target.peak_bf16_flops_per_s, cost.bytes_moved / target.bandwidth_bytes_per_s)


def program_entry(program: memory.StepProgram, target: Target, completion_length: int,
                  hlo_file: str | None) -> dict[str, Any]:
    """One program's plan.json entry: memory, bytes and FLOPs per call, roofline time per step."""
    text = program.compiled.as_text()
    # A loop without a proven trip count is the decode loop over tokens (it stops early when every
    # row has finished); it generates `tokens_per_iteration` tokens per iteration (finished rows are
    # checked that often), so it runs the config's completion length / tokens_per_iteration times.
    per_loop = max(1, program.tokens_per_iteration)
    cost = hlo_cost.program_cost(text, unknown_trip_count=-(-completion_length // per_loop))
    stats = memory.compiled_memory(program.compiled)
    entry: dict[str, Any] = {
        "phase": program.phase,
        "hlo": hlo_file,
        "calls_per_step": program.calls_per_step,
        "peak_bytes_per_device": stats.pop("peak_bytes"),
        **stats,  # argument, output, temp and alias bytes
    }
    per_call, largest_writes = cost.total, cost.largest_writes
    loop = cost.token_loop() if program.name == "decode" else None
    if loop is not None:
        per_call = hlo_cost.Cost()
        per_call.add(loop.per_iteration, 1.0 / per_loop)
        # Its largest writers ranked per loop iteration (per_loop tokens): the loop counted once.
        largest_writes = hlo_cost.program_cost(text, unknown_trip_count=1).largest_writes
        entry.update(per="generated token", loop_trip_count=loop.trip_count, loop_trip_count_known=loop.known,
                     tokens_per_loop_iteration=per_loop)
    else:
        entry["per"] = "call"
    seconds = roofline_s(cost.total, target)
    entry.update(
        bytes_written_per_call=int(per_call.bytes_written),
        bytes_read_per_call=int(per_call.bytes_read),
        flops_per_call=int(per_call.flops),
        kernels_per_call=int(per_call.kernels),
        estimated_s_per_step=seconds * program.calls_per_step,
        bound="compute" if cost.total.flops / target.peak_bf16_flops_per_s
        >= cost.total.bytes_moved / target.bandwidth_bytes_per_s else "memory",
        compile_s=program.compile_s,
        description=program.description,
        largest_writes=largest_writes,
    )
    return entry


def gpu_plan(args: argparse.Namespace, target: Target, devices: Sequence[Any], compiled_for: str) -> dict[str, Any]:
    """Compiles the step's programs for `devices` and writes the plan (and the HLO files)."""
    setup = memory.setup_from_args(args, devices)
    if args.dump_hlo is not None:
        args.dump_hlo.mkdir(parents=True, exist_ok=True)
    programs: dict[str, dict[str, Any]] = {}
    for program in memory.step_programs(setup):
        hlo_file = None
        if args.dump_hlo is not None:
            hlo_file = f"{program.name}.hlo.txt"
            (args.dump_hlo / hlo_file).write_text(program.compiled.as_text())
        entry = program_entry(program, target, setup.new_tokens, hlo_file)
        programs[program.name] = entry
        print(f"{program.name}: peak {entry['peak_bytes_per_device'] / GB:.2f} GB per device, "
              f"{entry['bytes_written_per_call'] / GB:.3g} GB written per {entry['per']}, "
              f"~{entry['estimated_s_per_step']:.3g} s per step (compiled in {program.compile_s} s)", file=sys.stderr)
        program.compiled = None  # free the executable before compiling the next one
    phases = memory.step_phase_peaks(setup, programs)
    step_peak = max(phases.values())
    return {
        "target": target.name,
        "device_kind": target.device_kind,
        "devices": args.devices,
        "compiled_for": compiled_for,
        **setup.fields(),
        "programs": programs,
        "step_peak_bytes_per_device": step_peak,
        "step_peak_phase": max(phases, key=phases.get),
        "phase_peak_bytes_per_device": phases,
        "estimated_step_s": sum(p["estimated_s_per_step"] for p in programs.values()),
        "fits": step_peak <= target.memory_bytes,
        "target_memory_bytes": target.memory_bytes,
        "budget_bytes_per_device": int(args.budget_gb * GB),
        "fits_budget": step_peak <= args.budget_gb * GB,
        "memory_bandwidth_bytes_per_s": target.bandwidth_bytes_per_s,
        "peak_bf16_flops_per_s": target.peak_bf16_flops_per_s,
    }


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def markdown_table(plans: Sequence[dict[str, Any]]) -> str:
    """The plans as one markdown table: a row per program, then a step row per plan."""
    lines = [
        "| target | program | calls per step | peak per device (temporaries) | bytes written per call | "
        "bytes read per call | FLOPs per call | roofline s per step | largest writer per call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in plans:
        where = f"{result['target']} x{result['devices']}, micro-batch {result['micro_batch_size']}"
        for name, p in result["programs"].items():
            per = " per token" if p.get("per") == "generated token" else ""
            top = p["largest_writes"][0] if p.get("largest_writes") else None
            writer = f"`{top['shape']}` x{top['runs_per_call']:g}" if top else ""
            lines.append(
                f"| {where} | {name} | {p['calls_per_step']} | {_size(p['peak_bytes_per_device'])} "
                f"({_size(p['temp_bytes'])}) | {_size(p['bytes_written_per_call'])}{per} | "
                f"{_size(p['bytes_read_per_call'])}{per} | {p['flops_per_call'] / 1e12:.3g} T{per} | "
                f"{p['estimated_s_per_step']:.3g} | {writer} |"
            )
        fits = "fits" if result["fits_budget"] else "does not fit"
        lines.append(
            f"| {where} | **step** | | **{_size(result['step_peak_bytes_per_device'])}** ({result['step_peak_phase']}; "
            f"{fits} {_size(result['budget_bytes_per_device'])}) | | | | **{result['estimated_step_s']:.3g}** | |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m openrs_jax.bench.plan table PLAN.json ...` prints the plans as a markdown table;
    with the plan's flags (the child process this command may start) it prints the plan as one JSON line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:
        print(markdown_table([json.loads(Path(f).read_text()) for f in argv[1:]]))
        return
    parser = argparse.ArgumentParser(prog="python -m openrs_jax.bench.plan")
    add_arguments(parser)
    print(json.dumps(run(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
