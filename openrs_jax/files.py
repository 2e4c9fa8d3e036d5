"""Reading and writing the project's files: JSONL records and whole files replaced atomically.

One JSON line format everywhere (`json_line`): UTF-8 text, non-ASCII kept readable, values JSON
does not know (dates, numpy scalars from parquet rows) written as `str`.

Whole files are written to a temporary file in the same folder and renamed over the target, so a
reader, or a run that crashes mid-write, sees the old file or the new one, never a part. New files
get the mode `open()` gives them (0o666 less the umask), whoever writes them.

Logs that grow (metrics, pass rates, evaluation details) are appended to instead; a run killed
mid-append can leave a torn last line, which `read_keyed_jsonl` and `read_jsonl(skip_bad=True)`
skip and the next `append_jsonl` starts a new line after.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar


K = TypeVar("K", bound=Hashable)


# Characters that JSON leaves raw in strings but `str.splitlines()` breaks lines at: escaped, so
# that any reader splitting the file into lines sees one record per line.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def json_line(record: Any) -> str:
    """One JSONL line (with its newline) of `record`."""
    return json.dumps(record, ensure_ascii=False, default=str).translate(_LINE_BREAKS) + "\n"


# ----------------------------------------------------------------------------- reading


def read_json(path: str | Path, *, optional: bool = False) -> Any:
    """The content of a JSON file; with `optional`, {} when the file is absent. A file that is not
    UTF-8 JSON raises `ValueError` naming it."""
    path = Path(path)
    if optional and not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def iter_jsonl(path: str | Path, *, skip_bad: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of `path`, numbered from 1.

    A line that is not JSON raises `ValueError` naming the file and line, or with `skip_bad` (a
    file an interrupted run appended to) is skipped.
    """
    path = Path(path)
    # Bytes, decoded line by line: a line cut inside a UTF-8 character (a killed append) is one
    # bad line, not an error for the whole file; a byte-order mark is accepted.
    with path.open("rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip(b"\r\n"))  # so an error's column counts on this line
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                if skip_bad:
                    continue
                raise ValueError(f"{path}:{line_no} is not valid JSON ({e})") from None
            yield line_no, value


def read_jsonl(path: str | Path, *, skip_bad: bool = False) -> list[Any]:
    """The values of the non-blank lines of `path` (see `iter_jsonl`)."""
    return [value for _, value in iter_jsonl(path, skip_bad=skip_bad)]


def read_keyed_jsonl(path: str | Path, key: Callable[[dict[str, Any]], K]) -> dict[K, dict[str, Any]]:
    """Records of a file that runs append to and resume from, by `key(record)` (later lines win).

    Lines that do not parse, or whose key cannot be computed (a torn last line, a foreign line),
    are skipped; no file -> {}.
    """
    records: dict[K, dict[str, Any]] = {}
    if not Path(path).is_file():
        return records
    for _, record in iter_jsonl(path, skip_bad=True):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            records[key(record)] = record
    return records


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[IO[str]]:
    """A text file that replaces `path` when the block ends without an error; on an error
    `path` is left as it was and the temporary file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # a fresh name per writer: two processes writing one target never share a temporary file
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # Mode 0o666 is reduced by the umask, exactly as for `open()`.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Replaces `path` by `text` (UTF-8) atomically; creates missing folders."""
    path = Path(path)
    with _replacing(path) as f:
        f.write(text)
    return path


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Replaces `path` by one JSON document (indented for reading, with a final newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Replaces `path` by one line per record atomically (records are streamed, not held);
    returns how many were written."""
    count = 0
    with _replacing(Path(path)) as f:
        for record in records:
            f.write(json_line(record))
            count += 1
    return count


def append_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Appends one line per record to `path` (created if missing) in one write, and returns how
    many. A torn last line left by a killed run is ended first, so it cannot swallow the first
    new record."""
    lines = [json_line(r) for r in records]
    with open(path, "a+b") as f:
        if lines and f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write("".join(lines).encode("utf-8"))
    return len(lines)


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process umask (for files that a library
    creates with another mode)."""
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask
