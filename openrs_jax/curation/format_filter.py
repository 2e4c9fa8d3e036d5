"""Format filter: keep rows whose gold answer the accuracy reward can read.

A row is kept when its `solution` holds a `\\boxed{}` (or `\\fbox{}`) answer that math-verify
parses with the recipe's gold config, or else when its `answer` parses (wrapped as
`$\\boxed{answer}$`, as `gold_from_row` does). A row whose gold does not parse would score
the recipe's "unparsable gold" reward on every completion: no learning signal, wasted samples.

The trainer takes `solution` as the gold whenever it is present, so a kept row whose solution
fails but whose answer parses has its `solution` set to null: training then uses the answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openrs_jax.curation.io import progress
from openrs_jax.curation.text import BOXED
from openrs_jax.recipe.rewards.gold import gold_parses, wrap_answer

# Why a row is dropped.
NO_PROBLEM = "no_problem"  # empty or missing problem text
NO_GOLD = "no_gold"  # neither a solution nor an answer
NO_BOXED = "no_boxed"  # a solution without \boxed{}, and no answer that parses
UNPARSABLE = "unparsable"  # a boxed solution or an answer is there, but math-verify reads nothing
REASONS = (NO_PROBLEM, NO_GOLD, NO_BOXED, UNPARSABLE)


def _text(value: Any) -> str | None:
    """A non-blank string value, or None."""
    return None if value is None or not str(value).strip() else str(value)


@dataclass(frozen=True)
class FormatCheck:
    """The verdict on one row: dropped for `reason`, or kept with its gold taken from `gold_from`."""

    reason: str | None  # None: kept
    gold_from: str | None = None  # "solution" or "answer"


def check_row(row: Mapping[str, Any]) -> FormatCheck:
    """Whether a row's gold parses, and from which column."""
    if _text(row.get("problem")) is None:
        return FormatCheck(NO_PROBLEM)
    solution, answer = _text(row.get("solution")), _text(row.get("answer"))
    if solution is None and answer is None:
        return FormatCheck(NO_GOLD)
    boxed = solution is not None and BOXED.search(solution) is not None
    if boxed and gold_parses(solution):
        return FormatCheck(None, "solution")
    if answer is not None and gold_parses(wrap_answer(answer)):
        return FormatCheck(None, "answer")
    return FormatCheck(NO_BOXED if solution is not None and not boxed else UNPARSABLE)


@dataclass
class FormatResult:
    """Rows kept (in input order), dropped rows with their reasons, and counts."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # {"index", "reason", "problem"}
    gold_from: Counter[str] = field(default_factory=Counter)
    solutions_cleared: int = 0  # kept on their answer: solution set to null

    def stats(self) -> dict[str, Any]:
        reasons = Counter(d["reason"] for d in self.dropped)
        return {
            "rows_in": len(self.kept) + len(self.dropped),
            "rows_out": len(self.kept),
            "dropped": {reason: reasons.get(reason, 0) for reason in REASONS},
            "gold_from": dict(self.gold_from),
            "solutions_cleared": self.solutions_cleared,
        }


def check_rows(rows: Sequence[Mapping[str, Any]], num_workers: int = 0) -> Iterator[FormatCheck]:
    """`check_row` over rows, in order; with num_workers > 0 in that many spawned processes.

    math-verify takes milliseconds per gold, minutes for a large dataset in one process.
    """
    if num_workers <= 0:
        yield from map(check_row, rows)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: forking a process that has started JAX or threads is unsafe.
    with ProcessPoolExecutor(num_workers, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(check_row, [dict(r) for r in rows], chunksize=64)


def format_filter(rows: Sequence[Mapping[str, Any]], num_workers: int = 0, show_progress: bool = False) -> FormatResult:
    """Checks every row; keeps those whose gold parses (in input order)."""
    result = FormatResult()
    checks = progress(check_rows(rows, num_workers), show_progress, "format", total=len(rows))
    for index, (row, check) in enumerate(zip(rows, checks)):
        if check.reason is not None:
            result.dropped.append(
                {"index": index, "reason": check.reason, "problem": str(row.get("problem") or "")[:200]}
            )
            continue
        kept = dict(row)
        if check.gold_from == "answer" and _text(row.get("solution")) is not None:
            kept["solution"] = None  # the trainer would read the unparsable solution as the gold
            result.solutions_cleared += 1
        result.gold_from[check.gold_from] += 1
        result.kept.append(kept)
    return result
