"""Benchmark registry: task name -> Hub dataset, fields and gold kind; loading from the Hub or JSONL.

The Hub ids, splits and fields are those of the datasets the paper's lighteval run used;
`--data_dir DIR` reads `DIR/<task>.jsonl` files with the same fields instead (the project's
shared benchmark files have exactly this layout).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrs_jax.evaluation.scoring import GoldKind
from openrs_jax.files import read_jsonl


@dataclass(frozen=True)
class TaskSpec:
    """Where a benchmark lives and how its rows are read."""

    name: str
    hub_id: str
    split: str
    problem_field: str
    gold_field: str
    gold_kind: GoldKind  # the extraction the paper applied to the gold
    answer_only: bool  # the gold field holds only the final answer (no worked solution)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("aime24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", "expr", True),
        TaskSpec("amc23", "knoveleng/AMC-23", "train", "problem", "answer", "expr", True),
        TaskSpec("math500", "HuggingFaceH4/MATH-500", "test", "problem", "solution", "latex", False),
        TaskSpec("minerva", "knoveleng/Minerva-Math", "train", "problem", "solution", "latex", False),
        TaskSpec("olympiadbench", "knoveleng/OlympiadBench", "train", "question", "answer", "latex", True),
        # Not in the paper: scored like AIME24.
        TaskSpec("aime25", "yentinglin/aime_2025", "train", "problem", "answer", "expr", True),
    )
}
PAPER_TASKS: tuple[str, ...] = ("aime24", "math500", "amc23", "minerva", "olympiadbench")


@dataclass(frozen=True)
class Problem:
    """One benchmark row: its row number, problem text and gold text."""

    index: int
    problem: str
    gold: str


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except (KeyError, TypeError):  # TypeError: not even a string (a list in a completions file)
        raise ValueError(f"unknown task {name!r}: choose from {', '.join(TASKS)}") from None


def parse_task_names(text: str | Iterable[str]) -> list[str]:
    """'aime24,math500' (or a list) -> checked, de-duplicated task names in the given order."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n).strip() for n in text]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise ValueError(f"no task given: choose from {', '.join(TASKS)}")
    for name in names:
        get_task(name)
    return names


def _load_hub(spec: TaskSpec) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as e:
        raise ValueError("loading benchmarks from the Hub needs the `datasets` package (or pass --data_dir)") from e
    try:
        dataset = datasets.load_dataset(spec.hub_id, split=spec.split)
    except Exception as e:  # network, auth and missing-split errors come in many types
        raise ValueError(
            f"cannot load {spec.hub_id} (split {spec.split}) for task {spec.name} from the Hugging Face Hub "
            f"({type(e).__name__}: {e}); offline, pass --data_dir DIR holding {spec.name}.jsonl"
        ) from e
    return [dict(row) for row in dataset]


def load_task(name: str, data_dir: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """The rows of a task, from `data_dir/<name>.jsonl` or else from its Hub dataset.

    `limit` keeps the first rows (a quick check during training); `Problem.index` is the row number.
    """
    spec = get_task(name)
    if data_dir is not None:
        path = Path(data_dir).expanduser() / f"{name}.jsonl"
        if not path.is_file():
            raise ValueError(f"{path} not found: --data_dir must hold <task>.jsonl files ({name}.jsonl for {name})")
        rows, where = read_jsonl(path), str(path)
    else:
        rows, where = _load_hub(spec), f"{spec.hub_id} ({spec.split})"
    if limit is not None:
        rows = rows[: max(0, limit)]
    if not rows:
        raise ValueError(f"{where} has no rows for task {name}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: row {i} is {type(row).__name__}, not a JSON object with named fields")
        for field in (spec.problem_field, spec.gold_field):
            if row.get(field) is None:
                raise ValueError(
                    f"{where}: row {i} has no {field!r} field (task {spec.name} reads "
                    f"{spec.problem_field!r} and {spec.gold_field!r})"
                )
    # Golds may be stored as numbers (AMC on some mirrors): the metric reads text.
    return [Problem(i, str(row[spec.problem_field]), str(row[spec.gold_field])) for i, row in enumerate(rows)]
