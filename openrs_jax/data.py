"""Training data: load maths problems, render and tokenize prompts, and a resumable seeded order.

A dataset is a Hub name (`datasets.load_dataset`) or a local path: a JSON / JSONL / parquet
file, a folder holding `<split>.jsonl` (what `python -m openrs_jax.curate` writes), or a
`datasets.save_to_disk` folder. Rows need `problem` and `solution` or `answer`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from openrs_jax.errors import UserError
from openrs_jax.hub import require_hub

log = logging.getLogger("openrs_jax.data")

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclasses.dataclass(frozen=True)
class Example:
    """One training problem: its text, its gold (for rewards), and its tokenized prompt."""

    index: int  # row number in the loaded dataset
    problem: str
    gold: str
    prompt_ids: tuple[int, ...]


@dataclasses.dataclass
class PromptDataset:
    examples: list[Example]
    total_rows: int
    dropped_too_long: int
    max_prompt_tokens: int

    def __len__(self) -> int:
        return len(self.examples)


def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        return json.loads(text)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n} is not valid JSON ({e})") from None
    return rows


def _read_local(path: Path, split: str) -> list[dict[str, Any]]:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(f"dataset {path} has no split {split!r} (splits: {', '.join(ds)})")
                ds = ds[split]
            return [dict(r) for r in ds]
        for name in (f"{split}.jsonl", f"{split}.json", f"{split}.parquet", "data.jsonl"):
            if (path / name).is_file():
                return _read_local(path / name, split)
        raise UserError(f"dataset folder {path} holds no {split}.jsonl, {split}.json, {split}.parquet or data.jsonl")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".json", ".jsonl"):
        return _read_json_rows(path)
    raise UserError(f"dataset file {path} must end in {', '.join(LOCAL_SUFFIXES)}")


def load_rows(dataset_name: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local file/folder or a Hub dataset, as plain dicts."""
    path = Path(dataset_name).expanduser()
    if path.exists():
        rows = _read_local(path, split)
    elif path.suffix in LOCAL_SUFFIXES or dataset_name.startswith((".", "/", "~")):
        raise UserError(f"dataset file {path} does not exist: check dataset_name")
    else:
        require_hub(f"dataset {dataset_name!r}", "give a local copy: a JSON/JSONL/parquet file or a folder with "
                    f"{split}.jsonl (dataset_name in training, --input in curate)")
        try:
            import datasets

            rows = [dict(r) for r in datasets.load_dataset(dataset_name, split=split)]
        except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
            raise UserError(
                f"could not load dataset {dataset_name!r} split {split!r} from the Hugging Face Hub "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "check the name, or give a local JSON/JSONL/parquet path as dataset_name"
            ) from None
    if not rows:
        raise UserError(f"dataset {dataset_name!r} (split {split!r}) is empty")
    return rows


def check_columns(rows: list[Mapping[str, Any]], dataset_name: str) -> None:
    """Requires `problem` and one of `solution`/`answer` (named in the error with what was found)."""
    columns = set(rows[0])
    if "problem" not in columns or not ({"solution", "answer"} & columns):
        need = ["problem"] if "problem" not in columns else []
        if not ({"solution", "answer"} & columns):
            need.append("solution or answer")
        raise UserError(
            f"dataset {dataset_name!r} lacks the column(s) {' and '.join(need)} "
            f"(it has: {', '.join(sorted(columns))}); rename its columns to problem and solution/answer"
        )


def build_dataset(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    system_prompt: str | None,
    max_prompt_length: int,
    dataset_name: str = "dataset",
) -> PromptDataset:
    """Renders every problem through the chat template and drops prompts longer than the limit."""
    from openrs_jax.prompts import render_prompt_ids
    from openrs_jax.rewards.gold import gold_from_row

    rows = list(rows)
    check_columns(rows, dataset_name)
    examples, dropped, longest = [], 0, 0
    for i, row in enumerate(rows):
        ids = render_prompt_ids(tokenizer, row["problem"], system_prompt)
        if len(ids) > max_prompt_length:
            dropped += 1
            continue
        longest = max(longest, len(ids))
        examples.append(Example(index=i, problem=row["problem"], gold=gold_from_row(row), prompt_ids=tuple(ids)))
    if dropped:
        log.warning("dropped %d of %d prompts longer than max_prompt_length=%d", dropped, len(rows), max_prompt_length)
    if not examples:
        raise UserError(
            f"every prompt of {dataset_name!r} is longer than max_prompt_length={max_prompt_length} tokens; "
            "raise max_prompt_length or shorten the system prompt"
        )
    return PromptDataset(examples=examples, total_rows=len(rows), dropped_too_long=dropped, max_prompt_tokens=longest)


@dataclasses.dataclass
class PromptOrder:
    """A seeded shuffle of `size` items per epoch; `epoch` and `offset` are all its state.

    Saving (epoch, offset) in a checkpoint makes a resumed run draw exactly the prompts the
    uninterrupted run would have drawn.
    """

    size: int
    seed: int
    epoch: int = 0
    offset: int = 0

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def next_indices(self, n: int) -> list[int]:
        """The next n indices, continuing into the next epoch's shuffle when one ends."""
        out: list[int] = []
        while len(out) < n:
            perm = self._permutation(self.epoch)
            take = min(n - len(out), self.size - self.offset)
            out.extend(int(i) for i in perm[self.offset : self.offset + take])
            self.offset += take
            if self.offset == self.size:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: Mapping[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
