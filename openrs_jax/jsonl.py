"""Reading JSONL files that an interrupted run may have left with a torn last line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


def read_keyed_jsonl(path: str | Path, key: Callable[[dict[str, Any]], K]) -> dict[K, dict[str, Any]]:
    """Records of `path` by `key(record)` (later lines win). Lines that do not parse, or whose
    key cannot be computed (a torn last line, a foreign line), are skipped; no file -> {}."""
    records: dict[K, dict[str, Any]] = {}
    path = Path(path)
    if not path.is_file():
        return records
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
                records[key(record)] = record
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
    return records
