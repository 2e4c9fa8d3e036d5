"""Deduplication within a source and against other sources, on normalised problem text.

Two problems are duplicates when their normalised texts are equal (`text.normalize`: case,
LaTeX markup, spacing and punctuation do not count). Within the input the first occurrence is
kept; a row that also appears in one of the `against` sources is dropped, since that source
keeps it. Optionally, `near_threshold` also drops near-duplicates: rows whose word n-gram
containment with an earlier kept row (or an `against` row) reaches the threshold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openrs_jax.curation.text import NgramIndex, normalize

WITHIN = "within"
ACROSS = "across"


@dataclass
class DedupResult:
    kept: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # lines of duplicates.jsonl

    def stats(self) -> dict[str, Any]:
        kinds = Counter(d["kind"] for d in self.duplicates)
        near = Counter(d["kind"] for d in self.duplicates if d["near"])
        return {
            "rows_in": len(self.kept) + len(self.duplicates),
            "rows_out": len(self.kept),
            "dropped": len(self.duplicates),
            "within": kinds.get(WITHIN, 0),
            "across": kinds.get(ACROSS, 0),
            "near": sum(near.values()),
            "across_by_source": dict(Counter(d["duplicate_of"]["source"] for d in self.duplicates
                                             if d["kind"] == ACROSS)),
            # By the rows' own `source` column, where they have one: "dropped row's -> kept row's".
            "by_source_column": dict(Counter(f"{d['source_column']} -> {d['duplicate_of']['source_column']}"
                                             for d in self.duplicates if d["source_column"] is not None)),
        }


def dedup(
    rows: Iterable[Mapping[str, Any]],
    name: str = "input",
    against: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    near_threshold: float | None = None,
    n: int = 8,
) -> DedupResult:
    """Drops rows of `rows` that repeat an earlier row or a row of an `against` source.

    `against` maps a source name to its rows; `near_threshold` (in (0, 1]) turns on n-gram
    near-duplicate detection with word n-grams of size `n`.
    """
    if near_threshold is not None and not 0 < near_threshold <= 1:
        raise ValueError(f"--near_threshold must be in (0, 1], got {near_threshold}")
    if against and name in against:
        raise ValueError(f"the input and an --against source are both named {name!r}: give them different names")
    rows = list(rows)
    sources = {**(against or {}), name: rows}
    seen: dict[str, tuple[str, int]] = {}  # normalised text -> (source, row)
    index = NgramIndex(n) if near_threshold is not None else None
    for source, other_rows in (against or {}).items():
        for j, row in enumerate(other_rows):
            problem = str(row.get("problem") or "")
            seen.setdefault(normalize(problem), (source, j))
            if index is not None:
                index.add((source, j), problem)

    result = DedupResult()
    for i, row in enumerate(rows):
        problem = str(row.get("problem") or "")
        key = normalize(problem)
        first, score, near = seen.get(key), 1.0, False
        if first is None and index is not None:
            hit = index.best(problem)
            if hit is not None and hit.score >= near_threshold:
                first, score, near = hit.doc, hit.score, True
        if first is not None:
            source, j = first
            result.duplicates.append({
                "index": i, "kind": WITHIN if source == name else ACROSS, "near": near, "score": round(score, 4),
                "source_column": row.get("source"),
                "duplicate_of": {"source": source, "index": j, "source_column": sources[source][j].get("source")},
                "problem": problem[:200],
            })
            continue
        seen[key] = (name, i)
        if index is not None:
            index.add((name, i), problem)
        result.kept.append(dict(row))
    return result

