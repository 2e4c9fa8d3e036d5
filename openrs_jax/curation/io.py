"""Reading curation inputs and writing step outputs: `train.jsonl`, a report, `stats.json`.

Every step writes into its own output folder:
- `train.jsonl`: the rows kept, one JSON object a line; the folder is a dataset that
  `openrs_jax.recipe.data.load_rows(folder, "train")` (and so `python -m openrs_jax.train`) reads;
- a report of what was dropped and why (`dropped.jsonl`, `matches.jsonl`, ...);
- `stats.json`: counts, settings and timing of the step.
Files are replaced atomically (`openrs_jax.files`), so an interrupted step never leaves a
half-written dataset behind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from openrs_jax.recipe import toy
from openrs_jax.curation.text import last_boxed
from openrs_jax.recipe.data import check_columns, load_rows
from openrs_jax.files import atomic_write_json, write_jsonl

TRAIN_FILE = "train.jsonl"
STATS_FILE = "stats.json"


def read_rows(dataset: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a dataset (local file or folder, Hub name, or `builtin:sums`) with the columns training needs."""
    rows = load_rows(toy.resolve(dataset), split)
    check_columns(rows, dataset)
    return rows


def row_answer(row: Mapping[str, Any]) -> str | None:
    """The short answer of a row: its `answer`, else the last `\\boxed{}` of its `solution`."""
    answer = row.get("answer")
    if answer is not None and str(answer).strip():
        return str(answer).strip()
    solution = row.get("solution")
    return last_boxed(solution) if isinstance(solution, str) else None


def write_dataset(output_dir: Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """`output_dir/train.jsonl`: the folder then loads as a dataset with a train split."""
    path = Path(output_dir) / TRAIN_FILE
    write_jsonl(path, rows)
    return path


def write_stats(output_dir: Path, stats: Mapping[str, Any]) -> Path:
    """`output_dir/stats.json`."""
    return atomic_write_json(Path(output_dir) / STATS_FILE, stats)


def progress(iterable: Iterable[Any], enabled: bool, desc: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm bar over `iterable` when enabled (it writes to stderr, leaving stdout for results)."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="row", dynamic_ncols=True)
