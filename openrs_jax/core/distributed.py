"""Multi-process runs: one training job over several processes (and machines) with `jax.distributed`.

JAX's multi-controller runtime is the engine: every process runs the same program, the mesh
spans all processes' devices, and XLA's collectives move data. This module only adds the glue
the trainer needs around it:

- `maybe_initialize` joins the job before anything touches a device, from the config keys
  (`coordinator_address`, `num_processes`, `process_id`), the environment
  (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) or a scheduler JAX
  detects itself (SLURM, Open MPI). CPU processes get gloo collectives.
- Host-side work split by rows: `process_rows` says which rows (whole groups) this process
  scores; `gather_scores` all-gathers the reward numbers so every process holds the same batch.
- `any_process` agrees on a stop flag; `is_writer` names the one process that writes logs.
- `abort` turns a failed collective (a peer died) into one clear line and an immediate exit,
  instead of the runtime's shutdown barrier waiting for the heartbeat timeout and aborting.

A peer that dies while this process waits outside a collective is caught by the coordination
service's heartbeat: the runtime terminates this process after `heartbeat_timeout_s`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


log = logging.getLogger("openrs_jax.core.distributed")

# Environment variables that configure a job explicitly (as the config keys do).
ENV_ADDRESS, ENV_NUM, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
# Schedulers whose settings `jax.distributed.initialize()` reads by itself: (size variable, name).
# SLURM_STEP_NUM_TASKS, not SLURM_NTASKS: only `srun` sets it, so a plain `python` inside a
# multi-task allocation stays a single process instead of waiting for peers that never start.
SCHEDULERS = (("SLURM_STEP_NUM_TASKS", "SLURM"), ("OMPI_COMM_WORLD_SIZE", "Open MPI"))
# The `ScoreResult` counters that add up over processes (its `seconds` is the slowest process's).
SUMMED_COUNTERS = ("timeouts", "errors", "worker_restarts", "unparsable_golds")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def maybe_initialize(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    *,
    heartbeat_timeout_s: int = 100,
    init_timeout_s: int = 300,
) -> bool:
    """Joins a multi-process job when one is configured; returns whether it did.

    Arguments win over the environment; with neither, a SLURM or Open MPI job of more than one
    task is auto-detected by JAX. A single process (the default) initializes nothing. Must run
    before the first use of a device: JAX cannot join a job once its backend has started.
    """
    address = coordinator_address or os.environ.get(ENV_ADDRESS, "")
    count = num_processes or _env_int(ENV_NUM, 0)
    index = process_id if process_id >= 0 else _env_int(ENV_ID, -1)
    timeouts = dict(heartbeat_timeout_seconds=int(heartbeat_timeout_s), initialization_timeout=int(init_timeout_s))
    if address or count > 1:
        if not address or count < 1 or not 0 <= index < count:
            raise ValueError(
                f"incomplete multi-process settings: coordinator_address={address!r}, num_processes={count}, "
                f"process_id={index}; give all three (config keys or {ENV_ADDRESS}/{ENV_NUM}/{ENV_ID}), "
                "with 0 <= process_id < num_processes"
            )
        if count == 1:
            return False
        kwargs: dict[str, Any] = dict(coordinator_address=address, num_processes=count, process_id=index)
    else:
        scheduler = next((name for var, name in SCHEDULERS if _env_int(var, 1) > 1), None)
        if scheduler is None:
            return False
        log.info("joining the %s job's processes (settings detected by jax.distributed)", scheduler)
        kwargs = {}
    if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        # CPU processes need a cross-process collectives library (GPUs use NCCL regardless).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**kwargs, **timeouts)
    except Exception as e:  # noqa: BLE001 - the runtime raises several types; all mean "could not join"
        raise ValueError(
            f"could not join the multi-process job ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
            f"check that every process was started with the same coordinator address and process count "
            f"within init_timeout_s={init_timeout_s}"
        ) from None
    log.info("process %d of %d: %d local devices, %d in all", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the run's logs, exports and plots (process 0)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any one (a collective: call it everywhere)."""
    if not is_multiprocess():
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def process_rows(num_groups: int, group_size: int) -> range:
    """Rows (whole groups of `group_size`) this process decodes and scores: a contiguous share."""
    groups = np.array_split(np.arange(num_groups), jax.process_count())[jax.process_index()]
    if groups.size == 0:
        return range(0)
    return range(int(groups[0]) * group_size, (int(groups[-1]) + 1) * group_size)


def _allgather_rows(local: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Concatenates every process's rows (float64 kept exact: gathered as int32 pairs)."""
    width = max(counts)
    padded = np.zeros((width, local.shape[1]), np.float64)
    padded[: len(local)] = local
    # Without x64, JAX would cast float64 to float32; the bits travel as int32 instead.
    gathered = np.asarray(multihost_utils.process_allgather(padded.view(np.int32)))
    gathered = gathered.view(np.float64).reshape(len(counts), width, local.shape[1])
    return np.concatenate([gathered[p, :n] for p, n in enumerate(counts)])


def gather_scores(local: Any, num_groups: int, group_size: int) -> Any:
    """The whole batch's `ScoreResult` from each process's share (`process_rows`).

    Only numbers travel: per-row totals and per-function rewards, failed-row flags and the
    counters (summed; seconds is the slowest process's).
    """
    if not is_multiprocess():
        return local
    from dataclasses import replace

    names = list(local.rewards)
    counts = [len(g) * group_size for g in np.array_split(np.arange(num_groups), jax.process_count())]
    failed = np.zeros(len(local.total))
    failed[[r for r in local.failed_rows if r < len(failed)]] = 1.0
    rows = np.stack([np.asarray(local.total, np.float64), *(np.asarray(local.rewards[k], np.float64) for k in names),
                     failed], axis=1).reshape(len(local.total), len(names) + 2)
    counters = np.array([[*(getattr(local, name) for name in SUMMED_COUNTERS), local.seconds]], np.float64)
    everything = _allgather_rows(rows, counts)
    totals = _allgather_rows(counters, [1] * len(counts))
    # Shares are contiguous and in process order, so the concatenation is in row order.
    return replace(
        local,
        total=everything[:, 0].tolist(),
        rewards={k: everything[:, 1 + i].tolist() for i, k in enumerate(names)},
        failed_rows=[int(r) for r in np.flatnonzero(everything[:, -1])],
        **{name: int(totals[:, i].sum()) for i, name in enumerate(SUMMED_COUNTERS)},
        seconds=float(totals[:, -1].max()),
    )


def abort(error: BaseException, *, output_dir: str = "", step: int | None = None) -> None:
    """Ends this process at once after a failed cross-process operation, with one clear line.

    `os._exit` skips `jax.distributed.shutdown`, whose barrier would otherwise wait for the
    dead peer until the heartbeat timeout and then abort with a C++ stack trace.
    """
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    where = f" at step {step}" if step is not None else ""
    resume = f" in {output_dir}" if output_dir else ""
    print(
        f"error: process {jax.process_index()} of {jax.process_count()} lost the other processes of this job{where} "
        f"({type(error).__name__}: {first}); another process stopped or died (see its log). "
        f"Rerun all processes with --config.run.resume=True to continue from the last checkpoint{resume}",
        file=sys.stderr, flush=True,
    )
    logging.shutdown()
    sys.stdout.flush()
    os._exit(3)
