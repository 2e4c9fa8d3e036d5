"""Decontamination: drop training problems that overlap the evaluation benchmarks.

A training row matches a benchmark row when (checked in this order, the first that holds is
reported):
- `exact`: their normalised problem texts are equal (`text.normalize`: case, LaTeX markup,
  spacing and punctuation do not count); this also catches problems too short for n-grams;
- `ngram`: the containment of their word n-gram sets (shared n-grams over the smaller set) is
  at least `threshold`: a benchmark problem copied with light rewording, or inside a longer one;
- `ngram+answer`: the containment is at least the lower `answer_threshold` and the two short
  answers are equal as normalised text (a reworded copy keeps its answer; a templated sibling
  problem with other numbers usually does not).

On the 9,248 DeepScaleR rows of the shared data, with the defaults (8-grams, 0.5, 0.3), this
flags 62 rows, all but one against MATH-500: 9 AIME problems that MATH-500 reuses (6 verbatim)
and 53 MATH training problems written from the same template as a MATH-500 one ("Determine the
number of ways to arrange the letters of the word ..."). `matches.jsonl` lists each match with
its score, for review.

Benchmarks come from a folder of `<name>.jsonl` files (problem field `problem` or `question`,
answer from `answer` or the last `\\boxed{}` of `solution`), or from the Hub datasets of the
evaluation tasks (`openrs_jax.evaluation.tasks`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrs_jax.curation.io import row_answer
from openrs_jax.curation.text import NgramIndex, normalize, normalize_answer
from openrs_jax.recipe.data import load_rows

PROBLEM_FIELDS = ("problem", "question")
ID_FIELDS = ("id", "unique_id", "idx")


@dataclass(frozen=True)
class BenchmarkRow:
    """One benchmark problem: its task, row number in the task's file, id field, text and answer."""

    task: str
    index: int
    id: Any
    problem: str
    answer: str | None


def benchmark_rows(task: str, rows: Sequence[Mapping[str, Any]], where: str) -> list[BenchmarkRow]:
    """Benchmark rows from plain dicts: problem in `problem` or `question`, answer as `row_answer`."""
    field_name = next((f for f in PROBLEM_FIELDS if f in rows[0]), None) if rows else None
    if field_name is None:
        have = ", ".join(sorted(rows[0])) if rows else "no rows"
        raise ValueError(f"{where}: benchmark rows need a 'problem' or 'question' field (it has: {have})")
    out = []
    for i, row in enumerate(rows):
        if row.get(field_name):
            row_id = next((row[k] for k in ID_FIELDS if k in row), i)  # the row number where it has no id
            out.append(BenchmarkRow(task, i, row_id, str(row[field_name]), row_answer(row)))
    return out


def load_benchmarks(benchmarks_dir: str | Path | None, tasks: Sequence[str] | None = None) -> list[BenchmarkRow]:
    """Benchmark rows from `benchmarks_dir/<task>.jsonl` files, or from the Hub without a folder.

    With a folder, `tasks` picks files by name (default: every `*.jsonl` in it). Without one,
    `tasks` are evaluation task names (default: all of `openrs_jax.evaluation.tasks.TASKS`).
    """
    if benchmarks_dir is not None:
        folder = Path(benchmarks_dir).expanduser()
        if not folder.is_dir():
            raise ValueError(f"--benchmarks_dir {folder} is not a folder of <task>.jsonl files")
        names = list(tasks) if tasks else sorted(p.stem for p in folder.glob("*.jsonl"))
        if not names:
            raise ValueError(f"--benchmarks_dir {folder} holds no .jsonl files")
        out: list[BenchmarkRow] = []
        for name in names:
            path = folder / f"{name}.jsonl"
            if not path.is_file():
                raise ValueError(f"{path} not found: --benchmarks_dir must hold {name}.jsonl for task {name}")
            out.extend(benchmark_rows(name, load_rows(str(path)), str(path)))
        return out
    from openrs_jax.evaluation.tasks import TASKS, load_task
    from openrs_jax.hub import require_hub

    names = list(tasks or TASKS)
    require_hub(f"the benchmarks ({', '.join(names)})", "give --benchmarks_dir, a folder of <task>.jsonl files")
    out = []
    for name in names:
        spec = TASKS.get(name)
        if spec is None:
            raise ValueError(f"unknown task {name!r}: choose from {', '.join(TASKS)}, or give --benchmarks_dir")
        for p in load_task(name):
            answer = p.gold if spec.answer_only else row_answer({"solution": p.gold})
            out.append(BenchmarkRow(name, p.index, p.index, p.problem, answer))
    return out


@dataclass(frozen=True)
class Match:
    """A training row found in a benchmark, and how."""

    index: int  # training row number
    kind: str  # "exact", "ngram" or "ngram+answer"
    score: float  # n-gram containment (1.0 for exact)
    benchmark: BenchmarkRow
    answer_match: bool | None  # None: one of the answers is unknown

    def record(self, problem: str) -> dict[str, Any]:
        """A line of `matches.jsonl`."""
        b = self.benchmark
        return {
            "index": self.index, "kind": self.kind, "score": round(self.score, 4),
            "answer_match": self.answer_match, "benchmark": b.task, "benchmark_index": b.index,
            "benchmark_id": b.id, "problem": problem, "benchmark_problem": b.problem,
        }


@dataclass
class DecontaminationResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    matches: list[Match] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return {
            "rows_in": len(self.kept) + len(self.matches),
            "rows_out": len(self.kept),
            "dropped": len(self.matches),
            "by_kind": dict(Counter(m.kind for m in self.matches)),
            "by_benchmark": dict(Counter(m.benchmark.task for m in self.matches)),
            "benchmark_rows_matched": len({(m.benchmark.task, m.benchmark.index) for m in self.matches}),
        }


def _answers_equal(a: str | None, b: str | None) -> bool | None:
    if a is None or b is None:
        return None
    return normalize_answer(a) == normalize_answer(b)


class Decontaminator:
    """Benchmark problems indexed once; `find(problem, answer)` says which one a row copies."""

    def __init__(self, benchmarks: Sequence[BenchmarkRow], n: int = 8, threshold: float = 0.5,
                 answer_threshold: float | None = 0.3):
        if not 0 < threshold <= 1:
            raise ValueError(f"--threshold must be in (0, 1], got {threshold}")
        if answer_threshold is not None and not 0 < answer_threshold <= threshold:
            raise ValueError(f"--answer_threshold must be in (0, threshold={threshold}], got {answer_threshold}")
        self.benchmarks = list(benchmarks)
        self.threshold = threshold
        self.answer_threshold = answer_threshold
        self.index = NgramIndex(n)
        self.exact: dict[str, int] = {}
        for k, b in enumerate(self.benchmarks):
            self.index.add(k, b.problem)
            key = normalize(b.problem)
            if key:  # a problem of symbols only has no words to compare
                self.exact.setdefault(key, k)

    def find(self, problem: str, answer: str | None, index: int = -1) -> Match | None:
        """The benchmark row that `problem` copies, or None."""
        key = normalize(problem)
        k = self.exact.get(key) if key else None
        if k is not None:
            b = self.benchmarks[k]
            return Match(index, "exact", 1.0, b, _answers_equal(answer, b.answer))
        low = self.threshold if self.answer_threshold is None else self.answer_threshold
        for hit in self.index.query(problem, low):  # best first
            b = self.benchmarks[hit.doc]
            same = _answers_equal(answer, b.answer)
            if hit.score >= self.threshold:
                return Match(index, "ngram", hit.score, b, same)
            if same:
                return Match(index, "ngram+answer", hit.score, b, same)
        return None

    def run(self, rows: Iterable[Mapping[str, Any]]) -> DecontaminationResult:
        """Splits rows into the kept ones and the matches."""
        result = DecontaminationResult()
        for i, row in enumerate(rows):
            match = self.find(str(row.get("problem") or ""), row_answer(row), i)
            if match is None:
                result.kept.append(dict(row))
            else:
                result.matches.append(match)
        return result
