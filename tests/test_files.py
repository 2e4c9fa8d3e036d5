"""openrs_jax.files: JSONL round trips, error lines, torn logs, atomic replacement and file modes."""

from __future__ import annotations

import datetime
import json
import os
import stat

import pytest

from openrs_jax import files
from openrs_jax.files import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    iter_jsonl,
    json_line,
    read_json,
    read_jsonl,
    read_keyed_jsonl,
    write_jsonl,
)


def test_jsonl_round_trip_keeps_text_readable_and_one_record_per_line(tmp_path):
    records = [{"problem": "Найди $x$", "answer": "√2"}, {"n": 3, "x": 0.1, "nested": [1, None, True]},
               {"text": "a\u2028b\x85c\u2029d\ne"}, [1, 2], "plain"]
    path = tmp_path / "sub" / "rows.jsonl"  # the folder is created
    assert write_jsonl(path, iter(records)) == len(records)
    assert read_jsonl(path) == records
    raw = path.read_bytes().decode("utf-8")
    assert "Найди" in raw and "√2" in raw  # UTF-8, not \u escapes
    # Any line splitter (str.splitlines breaks at U+2028, U+2029, U+0085 too) sees one record a line.
    assert [json.loads(line) for line in raw.splitlines()] == records
    # Values JSON does not know (dates from parquet) are written as text.
    write_jsonl(path, [{"day": datetime.date(2024, 2, 29)}])
    assert read_jsonl(path) == [{"day": "2024-02-29"}]


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"a": 2}\r\n{"a": 3}')  # CRLF and no final newline read too
    assert list(iter_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2}), (5, {"a": 3})]


def test_a_bad_line_names_file_and_line_or_is_skipped(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3 is not valid JSON \(Expecting value: line 1 column 7"):
        read_jsonl(path)
    assert read_jsonl(path, skip_bad=True) == [{"a": 1}, {"a": 3}]


def test_a_line_cut_inside_a_character_is_one_bad_line(tmp_path):
    path = tmp_path / "details.jsonl"
    whole = json_line({"completion": "√2"}).encode("utf-8")
    path.write_bytes(b"\xef\xbb\xbf" + whole + whole[:-5])  # a byte-order mark; the last line torn inside "√"
    with pytest.raises(ValueError, match=r"details\.jsonl:2 is not valid JSON \('utf-8' codec can't decode"):
        read_jsonl(path)
    assert read_jsonl(path, skip_bad=True) == [{"completion": "√2"}]
    assert read_keyed_jsonl(path, lambda r: r["completion"]) == {"√2": {"completion": "√2"}}


def test_keyed_records_skip_torn_and_foreign_lines_later_lines_win(tmp_path):
    path = tmp_path / "rates.jsonl"
    assert read_keyed_jsonl(path, lambda r: r["key"]) == {}  # no file yet
    path.write_text('{"key": "a", "v": 1}\n[1, 2]\n{"other": 1}\n{"key": "b", "v": 2}\n{"key": "a", "v": 3}\n'
                    '{"key": "c", "v')
    assert read_keyed_jsonl(path, lambda r: r["key"]) == {"a": {"key": "a", "v": 3}, "b": {"key": "b", "v": 2}}
    # A key that cannot be computed (here int("x")) skips the line too.
    path.write_text('{"i": "1"}\n{"i": "x"}\n')
    assert read_keyed_jsonl(path, lambda r: int(r["i"])) == {1: {"i": "1"}}


def test_append_creates_extends_and_ends_a_torn_line_first(tmp_path):
    path = tmp_path / "log.jsonl"
    assert append_jsonl(path, []) == 0 and path.read_text() == ""  # created, like open(path, "a")
    assert append_jsonl(path, [{"step": 1}, {"step": 2}]) == 2
    assert append_jsonl(path, ({"step": s} for s in [3])) == 1
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}, {"step": 3}]
    # A run killed mid-append left half a line: the next record must not be glued to it.
    with path.open("a") as f:
        f.write('{"step": 4, "los')
    append_jsonl(path, [{"step": 4}])
    assert path.read_text().splitlines()[-2:] == ['{"step": 4, "los', '{"step": 4}']
    assert read_jsonl(path, skip_bad=True) == [{"step": s} for s in (1, 2, 3, 4)]


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [{"row": 0}, {"row": 1}])
    before = path.read_bytes()

    def rows_then_crash():
        yield {"row": 10}
        yield {"row": 11}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_jsonl(path, rows_then_crash())
    with pytest.raises(TypeError):  # a document json cannot write (a tuple key) fails before the rename
        atomic_write_json(path, {("tuple", "key"): 1})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.jsonl"]


def test_the_rename_is_the_only_moment_the_target_changes(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_json(path, {"old": True})
    seen = []

    def replace(src, dst):  # the new content is complete on disk, the target still old
        seen.append((json.loads(open(src, encoding="utf-8").read()), json.loads(open(dst, encoding="utf-8").read())))
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(path, {"new": True})
    assert seen == [({"new": True}, {"old": True})]
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_json_documents_are_indented_with_a_final_newline(tmp_path):
    path = atomic_write_json(tmp_path / "stats.json", {"rows": 3, "name": "é"})
    assert path.read_text(encoding="utf-8") == '{\n  "rows": 3,\n  "name": "é"\n}\n'
    assert atomic_write_json(path, {"a": 1}, indent=None).read_text() == '{"a": 1}\n'
    assert atomic_write_text(tmp_path / "t.txt", "x\ny").read_text() == "x\ny"


def test_a_json_document_is_read_or_refused_naming_its_file(tmp_path):
    path = atomic_write_json(tmp_path / "config.json", {"n": 1, "name": "Qwen2"})
    assert read_json(path) == {"n": 1, "name": "Qwen2"}
    assert read_json(tmp_path / "absent.json", optional=True) == {}
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON \(Expecting property name"):
        read_json(tmp_path / "bad.json", optional=True)
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(ValueError, match=r"latin1\.json is not valid JSON \('utf-8' codec can't decode"):
        read_json(tmp_path / "latin1.json")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_and_replaced_files_get_the_mode_open_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        (tmp_path / "existing.json").write_text("{}")
        (tmp_path / "existing.json").chmod(0o600)  # a replaced file takes the new file's mode, as before
        paths = [atomic_write_text(tmp_path / "a.txt", "a"), atomic_write_json(tmp_path / "existing.json", {}),
                 tmp_path / "b.jsonl", tmp_path / "c.jsonl"]
        write_jsonl(paths[2], [{}])
        append_jsonl(paths[3], [{}])
        with open(tmp_path / "reference", "w"):
            pass
        assert files.new_file_mode() == mode
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "reference").stat().st_mode) == mode
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in paths} == {p.name: oct(mode) for p in paths}


def test_a_resumed_run_log_keeps_the_steps_up_to_its_checkpoint(tmp_path):
    from openrs_jax.recipe.run_log import COMPLETIONS_FILE, METRICS_FILE, RunLog, read_metrics

    log = RunLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        log.log_metrics(step, {"reward": step / 10})
        log.log_completions(step, [{"completion": f"√{step}"}])
    with (tmp_path / METRICS_FILE).open("ab") as f:
        f.write(b'{"step": 4, "rew')  # killed mid-line
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3]  # a plot of a live run skips it
    log.truncate_after(2)
    log.log_metrics(3, {"reward": 0.5})
    assert read_metrics(tmp_path) == [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2},
                                      {"step": 3, "reward": 0.5}]
    assert read_jsonl(tmp_path / COMPLETIONS_FILE) == [{"step": s, "completion": f"√{s}"} for s in (1, 2)]
