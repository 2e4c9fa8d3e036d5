"""Process-pool reward scorer for training: long-lived workers, per-completion timeouts.

Why processes: math-verify times out with ``signal.alarm``, which only works in a process's
main thread, and a pathological completion can hang sympy in C code where no signal helps.
So spawned (or forkserver) workers score the completions (``RewardSet.score_row``), the
caller kills a worker whose completion exceeds ``timeout_s`` and starts a replacement
(``pool.py``). Training never stalls longer than the timeout and never crashes because of a
completion: such rows score 0 and are counted in the ``ScoreResult``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from openrs_jax.recipe.rewards.batch import RewardSet, ScoreResult, check_batch, normalize_config
from openrs_jax.recipe.rewards.pool import MAIN_GUARD_EXIT, WorkerPool


class RewardScorer:
    """Score rollout batches with weighted rewards in a pool of worker processes.

    Args:
        reward_funcs: names (see ``REWARD_FUNCTIONS``; or ``"module:function"``), or a
            {name: weight} mapping.
        reward_weights: one weight per function (default 1.0 each).
        reward_params: {name: {param: value}}; entries for unused functions are checked too.
        num_workers: worker processes; 0 scores in this process (no timeouts; for debugging).
        timeout_s: per-completion limit; a completion over it scores 0 and its worker is replaced.
        mp_context: "spawn" or "forkserver" (fork after JAX has started is unsafe).
        startup_timeout_s: limit for a new worker to import and report ready.
    """

    def __init__(
        self,
        reward_funcs: Sequence[str] | Mapping[str, float],
        reward_weights: Sequence[float] | None = None,
        reward_params: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        num_workers: int = 2,
        timeout_s: float = 30.0,
        mp_context: str = "spawn",
        startup_timeout_s: float = 120.0,
    ):
        # A spawned worker imports the caller's script while multiprocessing bootstraps it
        # ("_inheriting"): without a `__main__` guard that script creates a scorer in every
        # worker. Leave quietly (no traceback per worker); the caller sees the status and names the fix.
        if getattr(mp.current_process(), "_inheriting", False):
            raise SystemExit(MAIN_GUARD_EXIT)
        if mp_context not in ("spawn", "forkserver"):
            raise ValueError(f"mp_context must be 'spawn' or 'forkserver', got {mp_context!r}")
        if num_workers < 0 or timeout_s <= 0 or startup_timeout_s <= 0:
            raise ValueError("num_workers must be >= 0 and the timeouts > 0")
        config, weights = normalize_config(reward_funcs, reward_weights, reward_params)
        self.reward_set = RewardSet(config, weights)  # validates in the caller
        self._pool = WorkerPool(
            mp.get_context(mp_context), config, weights, num_workers, float(timeout_s), float(startup_timeout_s)
        )
        self._closed = False
        self._lock = threading.Lock()

    @property
    def worker_pids(self) -> list[int | None]:
        """PIDs of the current worker processes (changes when a worker is replaced)."""
        return [w.process.pid for w in self._pool.workers]

    def score(
        self, completions: Sequence[str], solutions: Sequence[str], num_generations: int = 1,
        lengths: Sequence[int] | None = None,
    ) -> ScoreResult:
        """Score a batch: rows are consecutive groups of ``num_generations`` completions.

        ``solutions[i]`` is the gold text of row i (use ``gold_from_row`` for answer-only data);
        ``lengths[i]`` its completion's token count (needed by ``soft_overlong``).
        """
        with self._lock:  # one batch at a time: the workers' state is not shared between calls
            if self._closed:
                raise RuntimeError("RewardScorer is closed")
            if not self._pool.workers:
                return self.reward_set.score_in_process(completions, solutions, num_generations, lengths)
            check_batch(completions, solutions, num_generations)
            start = time.perf_counter()
            rows, timed_out, lost, restarts = self._pool.run(completions, solutions, num_generations)
        return self.reward_set.combine(
            completions,
            solutions,
            rows,
            num_generations,
            timed_out=timed_out,
            lost=lost,
            worker_restarts=restarts,
            seconds=time.perf_counter() - start,
            lengths=lengths,
        )

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._pool.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # half-built, or at interpreter exit
            self.close()
