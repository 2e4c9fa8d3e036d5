"""Worker processes for reward scoring and the dispatch loop of one batch.

Design (why it is robust):
- Each worker has its own socket pair, no shared queue: a killed worker cannot leave a lock
  held that would block the others, and its death shows as EOF on its own connection.
- A new worker reports "ready" after its imports, so start-up never counts against a row.
- A worker scores its rows in order and answers one message per row. The row at the head of
  its queue is the one running; it started when the previous answer arrived. A head row over
  the time limit gets the worker killed (rows behind it go back to the queue).
- Work is handed out a group (num_generations rows of one prompt) at a time: the group's
  completions often share an answer and always share the gold, so one worker's parse caches
  serve them all (splitting groups across workers cost about 40% more CPU). An idle worker
  steals not-yet-sent rows from the busiest one, so a slow group does not hold the batch.
- A few rows are sent ahead per worker so it never idles waiting for the caller to wake up
  (the caller may be a busy trainer), but only up to a byte budget well under the socket
  buffer: a send then never blocks, even on a hung worker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import signal
import time
import warnings
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from openrs_jax.recipe.rewards.batch import RewardConfig, RewardSet, RowResult

logger = logging.getLogger(__name__)

PREFETCH_ROWS = 4  # rows in flight per worker, the running one included
PREFETCH_BYTES = 64 * 1024  # bytes queued behind the running row (socket buffers are ~200 KiB)
MAX_START_FAILURES = 5  # in a row, with no worker up: then rows score 0 instead of waiting
# Exit status of a worker that found itself re-running a script with no `__main__` guard.
MAIN_GUARD_EXIT = 87
MAIN_GUARD_MESSAGE = (
    "RewardScorer: its worker processes cannot start because they re-run your script, which creates "
    "the scorer at top level; put the script's code under `if __name__ == \"__main__\":` "
    "(or use num_workers=0)"
)


def worker_main(conn: Connection, config: RewardConfig, weights: tuple[float, ...]) -> None:
    """Worker process: build the reward set, say ready, then answer one message per row."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    warnings.simplefilter("ignore")  # sympy/latex2sympy warnings, once per completion
    try:
        rset = RewardSet(config, weights)
    except Exception as err:  # reported: the caller counts a failed start
        conn.send(("failed", repr(err)))
        return
    if rset.uses_gold:
        _warm_up(rset)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the caller is gone
            return
        if msg is None:
            return
        index, completion, solution = msg
        conn.send(("row", index, rset.score_row(completion, solution)))


# Common answer shapes: the LaTeX parser (ANTLR) builds its prediction cache on first use,
# which makes a cold worker several times slower on its first hundreds of completions.
_WARM_UP_ANSWERS = (
    "\\frac{1}{2}", "-\\frac{3}{4}", "0.75", "2\\sqrt{3}", "\\frac{\\sqrt{2}}{2}", "(1, 3]",
    "[2, \\infty)", "(3, \\frac{\\pi}{2})", "x^2 + 2x + 1", "x = 5", "12\\pi", "\\text{(C)}", "10\\%",
)


def _warm_up(rset: RewardSet) -> None:
    """Score a few typical rows before reporting ready (start-up time, not a row's time)."""
    for answer in _WARM_UP_ANSWERS:
        rset.score_row(f"so\n</think>\nThe answer is $\\boxed{{{answer}}}$.", f"$\\boxed{{{answer}}}$")


class Worker:
    """Caller-side handle of one worker: process, connection, queued rows."""

    def __init__(self, ctx: Any, config: RewardConfig, weights: tuple[float, ...]):
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=worker_main, args=(child_end, config, weights), daemon=True, name="reward-worker"
        )
        self.process.start()
        child_end.close()  # so that the caller sees EOF when the worker dies
        self.conn: Connection = parent_end
        self.ready = False
        self.assigned: deque[int] = deque()  # rows handed to this worker, not yet sent
        self.inflight: deque[tuple[int, int]] = deque()  # (row, message bytes); head is running
        self.since = time.monotonic()  # start-up began, or the head row started

    def can_take(self, nbytes: int) -> bool:
        """Whether a message of nbytes can be queued behind the running row without a send that could block
        (an idle worker is waiting in recv: it reads any size at once)."""
        return not self.inflight or sum(n for _, n in list(self.inflight)[1:]) + nbytes <= PREFETCH_BYTES

    def stop(self) -> None:
        """Ask an idle worker to exit (a busy one is killed by ``kill``)."""
        if not self.inflight:
            with contextlib.suppress(OSError):  # already gone
                self.conn.send(None)

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.join(timeout=5)
        finally:
            self.conn.close()


class WorkerPool:
    """Worker processes, replaced when they die or hang, and the dispatch of one batch over them."""

    def __init__(
        self, ctx: Any, config: RewardConfig, weights: tuple[float, ...], size: int, timeout_s: float,
        startup_timeout_s: float,
    ):
        self._new_worker = functools.partial(Worker, ctx, config, weights)
        self.workers = [self._new_worker() for _ in range(size)]
        self.timeout_s, self.startup_timeout_s = timeout_s, startup_timeout_s
        self.start_failures = 0  # in a row, across batches

    def run(
        self, completions: Sequence[str], solutions: Sequence[str], num_generations: int
    ) -> tuple[list[RowResult | None], list[int], list[int], int]:
        """Score one batch: (rows, timed-out rows, lost rows, worker restarts); a failed row's entry is None."""
        self.completions, self.solutions = completions, solutions
        n = len(completions)
        self.rows: list[RowResult | None] = [None] * n
        # Groups not yet handed to a worker (rows of a failed worker come back as one group).
        self.pending: deque[list[int]] = deque(
            list(range(i, min(i + num_generations, n))) for i in range(0, n, num_generations)
        )
        self.timed_out: list[int] = []
        self.lost: list[int] = []  # rows whose worker died under them
        self.restarts = 0
        for k, w in enumerate(self.workers):  # replace workers that died between calls
            if w.ready and not w.process.is_alive():
                self._restart(k, "died while idle")
        while self.pending or any(w.inflight or w.assigned for w in self.workers):
            if self.start_failures >= MAX_START_FAILURES and not any(w.ready for w in self.workers):
                self._give_up()
                continue
            self._dispatch()
            self._wait()
            self._enforce_timeouts()
        return self.rows, self.timed_out, self.lost, self.restarts

    def close(self) -> None:
        """Stop the workers: idle ones are asked to exit, then all are killed after a short wait."""
        for w in self.workers:
            w.stop()
        deadline = time.monotonic() + 2.0
        for w in self.workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
            w.kill()
        self.workers = []

    def _give_up(self) -> None:
        rows = [i for group in self.pending for i in group]
        for w in self.workers:
            rows.extend(w.assigned)
            w.assigned.clear()
        logger.error("reward workers keep failing to start; %d rows score 0", len(rows))
        self.lost.extend(rows)
        self.pending.clear()

    def _dispatch(self) -> None:
        for k, w in enumerate(self.workers):
            if not w.ready:
                continue
            if not w.assigned and len(w.inflight) <= 1:  # about to run dry: more work
                if self.pending:
                    w.assigned.extend(self.pending.popleft())
                else:
                    self._steal_for(w)
            while w.assigned and len(w.inflight) < PREFETCH_ROWS:
                i = w.assigned[0]
                data = pickle.dumps((i, self.completions[i], self.solutions[i]), pickle.HIGHEST_PROTOCOL)
                if not w.can_take(len(data)):
                    break
                try:
                    w.conn.send_bytes(data)
                except OSError:  # the worker died: row i was never sent
                    self._died(k)
                    break
                w.assigned.popleft()
                if not w.inflight:
                    w.since = time.monotonic()
                w.inflight.append((i, len(data)))

    def _steal_for(self, thief: Worker) -> None:
        victim = max(self.workers, key=lambda v: len(v.assigned))
        for _ in range((len(victim.assigned) + 1) // 2):  # from the tail: the victim keeps its next rows in order
            thief.assigned.appendleft(victim.assigned.pop())

    def _wait(self) -> None:
        active = [w for w in self.workers if w.inflight or not w.ready]
        if not active:
            return
        deadline = min(w.since + (self.timeout_s if w.ready else self.startup_timeout_s) for w in active)
        handles = [w.conn for w in active] + [w.process.sentinel for w in active]
        ready = set(wait(handles, max(0.0, deadline - time.monotonic())))
        for w in active:
            k = self.workers.index(w)
            if w.conn in ready:
                self._receive(k)
            elif w.process.sentinel in ready:
                self._died(k)

    def _receive(self, k: int) -> None:
        w = self.workers[k]
        try:
            while w.conn.poll():  # drain: several rows may have finished
                msg = w.conn.recv()
                if msg[0] == "row" and w.inflight and w.inflight[0][0] == msg[1]:
                    w.inflight.popleft()
                    self.rows[msg[1]] = msg[2]
                    w.since = time.monotonic()  # the next queued row starts now
                elif msg[0] == "ready":
                    w.ready, w.since = True, time.monotonic()
                    self.start_failures = 0
                elif msg[0] == "failed":
                    logger.error("reward worker failed to start: %s", msg[1])
                    self._died(k)
                    return
        except (EOFError, OSError):
            self._died(k)

    def _died(self, k: int) -> None:
        w = self.workers[k]
        if w.inflight:
            logger.warning("reward worker died while scoring row %d; replacing it", w.inflight[0][0])
            self.lost.append(w.inflight.popleft()[0])  # scores 0, counted as an error
        elif not w.ready:
            w.process.join(timeout=5)
            if w.process.exitcode == MAIN_GUARD_EXIT:
                raise SystemExit(MAIN_GUARD_MESSAGE)  # one line, and every retry would fail alike
            self.start_failures += 1
        self._restart(k, "died")

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        for k, w in enumerate(self.workers):
            if w.inflight and now - w.since > self.timeout_s:
                row = w.inflight.popleft()[0]
                logger.warning("reward row %d exceeded %.1fs; killing its worker", row, self.timeout_s)
                self.timed_out.append(row)
                self._restart(k, "timeout")
            elif not w.ready and now - w.since > self.startup_timeout_s:
                self.start_failures += 1
                self._restart(k, "start-up timeout")

    def _restart(self, k: int, why: str) -> None:
        w = self.workers[k]
        # Rows behind the one that ran (already taken off) never started: back, as one group.
        unstarted = [row for row, _ in w.inflight] + list(w.assigned)
        if unstarted:
            self.pending.appendleft(unstarted)
        logger.info("replacing reward worker %d (%s)", k, why)
        w.kill()
        self.workers[k] = self._new_worker()
        self.restarts += 1
