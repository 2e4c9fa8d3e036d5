"""Mixing: a seeded draw of given counts from several sources into one training set.

open-rs was 3,000 open-s1 + 3,000 open-deepscaler + 1,000 easier raw DeepScaleR problems:

    --source open-s1=data/open-s1:3000 --source open-deepscaler=data/ods:3000 --source easy=data/easy:1000

Each source is drawn in its own seeded random order (seeded by the mix seed and the source's
name, so adding a source does not change what the others draw). A problem already taken, from
this or an earlier source, is skipped (normalised text; open-rs's last two sources both come
from DeepScaleR). The rows are shuffled together and written with the columns `MIX_COLUMNS`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from openrs_jax.curation.io import row_answer
from openrs_jax.curation.text import normalize

MIX_COLUMNS = ("problem", "solution", "answer", "source", "pass_rate")
_NAME = re.compile(r"^[\w.+-]+$")


@dataclass(frozen=True)
class MixSource:
    """One source of a mix: its name (the `source` column), dataset path or Hub name, row count."""

    name: str
    dataset: str
    count: int | None  # None: every row (after duplicates are skipped)


def parse_source(spec: str) -> MixSource:
    """`[NAME=]DATASET[:COUNT]`; COUNT is a number or `all` (the default); NAME defaults to the dataset's stem."""
    name, dataset = None, spec
    head, sep, tail = spec.partition("=")
    if sep and _NAME.match(head):
        name, dataset = head, tail
    count: int | None = None
    base, sep, last = dataset.rpartition(":")
    if sep and (last.isdigit() or last == "all"):
        dataset, count = base, None if last == "all" else int(last)
    if not dataset:
        raise ValueError(f"--source {spec!r} names no dataset; write [NAME=]DATASET[:COUNT]")
    if count is not None and count < 1:
        raise ValueError(f"--source {spec!r}: COUNT must be >= 1 (or 'all')")
    if name is None:
        path = Path(dataset.rstrip("/"))
        name = path.stem if path.suffix in (".json", ".jsonl", ".parquet") else path.name
    return MixSource(name, dataset, count)


def mix_row(row: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A row in the mix's columns; `pass_rate` is null where the source has none."""
    solution = row.get("solution")
    pass_rate = row.get("pass_rate")
    return {
        "problem": row.get("problem"),
        "solution": solution if isinstance(solution, str) and solution.strip() else None,
        "answer": row_answer(row),
        "source": source,
        "pass_rate": None if pass_rate is None else float(pass_rate),
    }


def mix(
    sources: Sequence[tuple[MixSource, Sequence[Mapping[str, Any]]]],
    seed: int = 0,
    skip_duplicates: bool = True,
    shuffle: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Draws each source's count in its seeded order; returns (rows, stats)."""
    names = [s.name for s, _ in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source names must differ, got {names}; name them with NAME=DATASET")
    taken: set[str] = set()
    rows: list[dict[str, Any]] = []
    per_source: dict[str, dict[str, Any]] = {}
    for source, source_rows in sources:
        want = len(source_rows) if source.count is None else source.count
        rng = np.random.default_rng([seed, zlib.crc32(source.name.encode("utf-8"))])
        order = rng.permutation(len(source_rows))
        picked, skipped = [], 0
        for i in order:
            if len(picked) == want:
                break
            key = normalize(str(source_rows[i].get("problem") or ""))
            if skip_duplicates and key in taken:
                skipped += 1
                continue
            taken.add(key)
            picked.append(mix_row(source_rows[i], source.name))
        if source.count is not None and len(picked) < want:
            raise ValueError(
                f"source {source.name!r} ({source.dataset}) has {len(picked)} usable rows of the {want} asked for "
                f"({len(source_rows)} rows, {skipped} already taken by this or an earlier source)"
            )
        per_source[source.name] = {
            "dataset": source.dataset, "rows_available": len(source_rows), "requested": source.count,
            "taken": len(picked), "skipped_duplicates": skipped,
            "with_pass_rate": sum(r["pass_rate"] is not None for r in picked),
        }
        rows.extend(picked)
    if shuffle:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    stats = {"rows_out": len(rows), "seed": seed, "skip_duplicates": skip_duplicates, "shuffle": shuffle,
             "sources": per_source}
    return rows, stats


def save_to_disk(rows: Sequence[Mapping[str, Any]], path: str | Path, show_progress: bool = True) -> Path:
    """The mix as a Hub-style dataset (`datasets.Dataset.save_to_disk`).

    `datasets.load_from_disk(path)` reads it back, `.push_to_hub(...)` publishes it (as the
    train split), and `openrs_jax.recipe.data.load_rows(path)` reads it for the trainer. A plain
    Dataset, not a DatasetDict: `load_rows` recognises a folder by its dataset_info.json.
    """
    import datasets

    if not show_progress:
        datasets.disable_progress_bars()
    features = datasets.Features({c: datasets.Value("float64" if c == "pass_rate" else "string") for c in MIX_COLUMNS})
    table = {c: [r.get(c) for r in rows] for c in MIX_COLUMNS}
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(path))
    return Path(path)
