"""Dataset curation (`python -m openrs_jax.curate`): format filter, decontamination, dedup, mix.

Counts on the shared data were measured once and are asserted exactly; planted rows are
checked by position, against hand-made expectations. The difficulty filter has its own file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import shared_data
from openrs_jax import curate
from openrs_jax.curation.decontaminate import Decontaminator, load_benchmarks
from openrs_jax.curation.dedup import dedup
from openrs_jax.curation.format_filter import format_filter
from openrs_jax.curation.mix import MixSource, mix, parse_source
from openrs_jax.curation.text import NgramIndex, last_boxed, normalize, normalize_answer, words
from openrs_jax.recipe.data import check_columns, load_rows

# Row ranges of the shared training file, by its `source` column.
AIME = slice(0, 975)
MATH = slice(975, 8445)
SUBSET = slice(8445, 9248)


@pytest.fixture(scope="module")
def train_rows() -> list[dict]:
    path = shared_data("train", "deepscaler_sample.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def benchmarks_dir() -> Path:
    return shared_data("benchmarks")


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_cli(*argv: str) -> dict:
    return curate.main([*argv, "--no_progress"])


# ----------------------------------------------------------------------------- text


def test_normalisation_ignores_markup_but_not_content():
    a = "Find $\\dfrac{1}{2}x$ when   x=1,000!"
    b = "find \\(\\frac{1}{2} x\\) when x = 1000."
    assert normalize(a) == normalize(b) == "find frac 1 2 x when x 1000"
    assert normalize("Find $x+1$.") != normalize("Find $x+2$.")
    assert words("$\\left( a_1 \\right)$") == ["a", "1"]


def test_last_boxed_and_answer_normalisation():
    assert last_boxed("so $\\boxed{\\frac{1}{2}}$ or \\boxed{\\sqrt{a_{1}}}.") == "\\sqrt{a_{1}}"
    assert last_boxed("\\fbox{363}") == "363"
    assert last_boxed("no box") is None and last_boxed("\\boxed{1") is None
    assert normalize_answer("015") == normalize_answer("$15$") == "15"
    assert normalize_answer("\\dfrac{1}{2}") == normalize_answer("\\frac{1}{2}")
    assert normalize_answer("12") != normalize_answer("21")


def test_ngram_index_containment():
    index = NgramIndex(n=3)
    index.add("a", "one two three four five six")
    index.add("b", "alpha beta gamma delta")
    # 4 trigrams in the query, 3 of them in "a" (4 trigrams): 3 / min(4, 4).
    hit = index.best("one two three four five seven")
    assert hit.doc == "a" and hit.shared == 3 and hit.score == pytest.approx(0.75)
    # A copy inside a longer text: containment of the smaller set is 1.
    assert index.best("so alpha beta gamma delta it is").score == 1.0
    assert index.best("nothing in common here") is None
    assert index.query("one two", 0.0) == []  # shorter than n


# ----------------------------------------------------------------------------- format filter


def test_format_filter_counts_on_real_rows(train_rows, tmp_path):
    # 75 AIME rows (with worked solutions; rows 957, 965 and 974 have no \boxed) + 125 MATH rows
    # (answer only). Measured: every gold parses; 974 (\fbox{363}) parses as a solution, 957 and
    # 965 fall back to their answer, so their solution is cleared.
    rows = train_rows[900:1100]
    result = format_filter(rows)
    assert result.stats() == {
        "rows_in": 200, "rows_out": 200,
        "dropped": {"no_problem": 0, "no_gold": 0, "no_boxed": 0, "unparsable": 0},
        "gold_from": {"solution": 73, "answer": 127}, "solutions_cleared": 2,
    }
    cleared = [i for i, (a, b) in enumerate(zip(rows, result.kept)) if a["solution"] and b["solution"] is None]
    assert [900 + i for i in cleared] == [957, 965]


def test_format_filter_drops_planted_rows_with_reasons(train_rows, tmp_path):
    good = train_rows[8445:8449]  # DeepScaleR rows with \boxed solutions
    planted = [
        {"problem": "  ", "solution": "\\boxed{1}", "answer": "1"},  # no problem
        {"problem": "What is 1+1?", "solution": None, "answer": None},  # no gold
        {"problem": "What is 1+1?", "solution": "The answer is two.", "answer": None},  # no \boxed
        {"problem": "What is 1+1?", "solution": "So $\\boxed{}$.", "answer": "}{"},  # nothing parses
        {"problem": "What is 1+1?", "solution": "The answer is two.", "answer": "2"},  # kept on the answer
    ]
    path = write_jsonl(tmp_path / "in.jsonl", good[:2] + planted + good[2:])
    stats = run_cli("format", "--input", path, "--output_dir", str(tmp_path / "out"))
    assert stats["rows_in"] == 9 and stats["rows_out"] == 5
    assert stats["dropped"] == {"no_problem": 1, "no_gold": 1, "no_boxed": 1, "unparsable": 1}
    dropped = [json.loads(line) for line in (tmp_path / "out" / "dropped.jsonl").read_text().splitlines()]
    assert [(d["index"], d["reason"]) for d in dropped] == [
        (2, "no_problem"), (3, "no_gold"), (4, "no_boxed"), (5, "unparsable")]
    kept = load_rows(str(tmp_path / "out"), "train")  # the trainer's loader reads the folder
    check_columns(kept, "out")
    assert [r["problem"] for r in kept] == [r["problem"] for r in good[:2]] + ["What is 1+1?"] + [
        r["problem"] for r in good[2:]]
    assert kept[2]["solution"] is None and kept[2]["answer"] == "2"
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["step"] == "format"


# ----------------------------------------------------------------------------- decontamination


def reword(problem: str, word_index: int) -> str:
    """A light rewording: a lead-in, other verbs, no `$`, \\dfrac, one content word replaced."""
    text = problem.replace("Find", "Determine").replace("What is", "Compute").replace("$", "")
    text = text.replace("\\frac", "\\dfrac")
    tokens = text.split(" ")
    alpha = [i for i, t in enumerate(tokens) if t.isalpha() and len(t) > 3]
    tokens[alpha[word_index % len(alpha)]] = "certain"
    return "Solve the following. " + " ".join(tokens)


# (benchmark, row) of the planted copies: one per benchmark.
PLANTED = [("aime24", 3), ("aime25", 3), ("amc23", 3), ("math500", 5), ("minerva", 3), ("olympiadbench", 3)]


def test_decontamination_finds_planted_rewordings_only(train_rows, benchmarks_dir, tmp_path):
    bench = {(b.task, b.index): b for b in load_benchmarks(benchmarks_dir)}
    clean = train_rows[8445:8745]  # DeepScaleR rows: measured to overlap no benchmark
    rows = list(clean)
    positions = {}
    for k, (task, i) in enumerate(PLANTED):
        b = bench[(task, i)]
        pos = 37 * k + 11
        rows.insert(pos, {"problem": reword(b.problem, k), "solution": None, "answer": b.answer or "1"})
        positions[pos] = (task, i)
    # Exact copies up to case and markup: a short MATH-500 problem (too short for 8-grams).
    rows.insert(5, {"problem": "SIMPLIFY \\(\\sqrt{242}\\)", "solution": None, "answer": "11\\sqrt2"})
    positions = {(p + 1 if p >= 5 else p): v for p, v in positions.items()}
    positions[5] = ("math500", 31)
    path = write_jsonl(tmp_path / "train.jsonl", rows)

    stats = run_cli("decontaminate", "--input", path, "--output_dir", str(tmp_path / "out"),
                    "--benchmarks_dir", str(benchmarks_dir))
    matches = [json.loads(line) for line in (tmp_path / "out" / "matches.jsonl").read_text().splitlines()]
    assert {m["index"]: (m["benchmark"], m["benchmark_index"]) for m in matches} == positions
    assert all(m["kind"] == "ngram" for m in matches if m["index"] != 5)
    assert next(m for m in matches if m["index"] == 5)["kind"] == "exact"
    assert stats["rows_in"] == len(rows) and stats["rows_out"] == len(rows) - 7
    assert stats["by_benchmark"] == {"aime24": 1, "aime25": 1, "amc23": 1, "math500": 2, "minerva": 1,
                                     "olympiadbench": 1}
    kept = load_rows(str(tmp_path / "out"))
    assert [r["problem"] for r in kept] == [r["problem"] for r in clean]


def test_decontamination_answer_rule(benchmarks_dir):
    bench = [b for b in load_benchmarks(benchmarks_dir, ["math500"]) if b.index == 3]
    # Reworded: 4 of the benchmark's 8 bigrams remain, under the threshold but over the answer
    # threshold: only an equal answer makes it a match.
    text = "How many distinct positive whole-number factors does 196 possess?"
    finder = Decontaminator(bench, n=2, threshold=0.9, answer_threshold=0.3)
    assert finder.index.best(text).score == 0.5
    assert finder.find(text, "9").kind == "ngram+answer"
    assert finder.find(text, "10") is None
    assert Decontaminator(bench, n=2, threshold=0.9, answer_threshold=None).find(text, "9") is None


def test_decontamination_counts_on_the_real_file(train_rows, benchmarks_dir):
    # Measured on all 9,248 rows with the defaults (8-grams, 0.5, 0.3): the six AIME problems
    # that MATH-500 reuses verbatim, and MATH training problems sharing a MATH-500 template.
    result = Decontaminator(load_benchmarks(benchmarks_dir)).run(train_rows)
    stats = result.stats()
    assert stats["dropped"] == 62
    assert stats["by_kind"] == {"exact": 6, "ngram": 52, "ngram+answer": 4}
    assert stats["by_benchmark"] == {"math500": 61, "olympiadbench": 1}
    exact = sorted((m.index, m.benchmark.index) for m in result.matches if m.kind == "exact")
    assert exact == [(1, 489), (177, 101), (302, 292), (560, 412), (725, 285), (786, 80)]
    assert all(m.answer_match for m in result.matches if m.kind == "exact")


def test_benchmark_dir_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        load_benchmarks(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no .jsonl"):
        load_benchmarks(tmp_path)
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])
    with pytest.raises(ValueError, match="'problem' or 'question'"):
        load_benchmarks(tmp_path)


# ----------------------------------------------------------------------------- dedup


def test_dedup_planted_duplicates(train_rows, tmp_path):
    base = train_rows[8445:8545]
    other = train_rows[8545:8565]
    rows = list(base)
    # Within: row 10 again with other case, spacing and `$`; row 20 again verbatim.
    rows.insert(50, {**base[10], "problem": base[10]["problem"].upper().replace("$", "  ")})
    rows.append(dict(base[20]))
    # Across: rows of the other source.
    rows.insert(30, dict(other[3]))
    rows.append({**other[7], "problem": other[7]["problem"].replace("\\frac", "\\dfrac") + " "})
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    other_path = write_jsonl(tmp_path / "other.jsonl", other)

    stats = run_cli("dedup", "--input", path, "--name", "mine", "--against", f"theirs={other_path}",
                    "--output_dir", str(tmp_path / "out"))
    assert (stats["rows_in"], stats["rows_out"], stats["within"], stats["across"]) == (104, 100, 2, 2)
    dups = [json.loads(line) for line in (tmp_path / "out" / "duplicates.jsonl").read_text().splitlines()]
    found = {d["index"]: (d["kind"], d["duplicate_of"]["source"], d["duplicate_of"]["index"]) for d in dups}
    assert found == {30: ("across", "theirs", 3), 51: ("within", "mine", 10),
                     102: ("within", "mine", 20), 103: ("across", "theirs", 7)}
    assert [r["problem"] for r in load_rows(str(tmp_path / "out"))] == [r["problem"] for r in base]


def test_dedup_counts_on_the_real_file(train_rows):
    # Measured: 394 repeats, nearly all MATH problems that are also AIME problems.
    stats = dedup(train_rows, "deepscaler").stats()
    assert (stats["dropped"], stats["within"], stats["across"]) == (394, 394, 0)
    assert stats["by_source_column"] == {
        "deepscaler/math -> deepscaler/aime": 358, "deepscaler/math -> deepscaler/math": 8,
        "deepscaler/subset -> deepscaler/aime": 1, "deepscaler/subset -> deepscaler/subset": 27}


def test_dedup_near_duplicates():
    rows = [{"problem": "a b c d e f g h i j"}, {"problem": "a b c d e f g h i k"}, {"problem": "z y x w"}]
    assert dedup(rows).stats()["dropped"] == 0
    result = dedup(rows, near_threshold=0.5, n=3)
    assert [d["index"] for d in result.duplicates] == [1] and result.duplicates[0]["near"]


# ----------------------------------------------------------------------------- mix


def test_parse_source():
    assert parse_source("open-s1=data/s1:3000") == MixSource("open-s1", "data/s1", 3000)
    assert parse_source("data/easy.jsonl") == MixSource("easy", "data/easy.jsonl", None)
    assert parse_source("org/name:all") == MixSource("name", "org/name", None)
    with pytest.raises(ValueError, match="COUNT"):
        parse_source("x=data:0")


@pytest.fixture
def mix_sources(train_rows, tmp_path) -> list[str]:
    aime = write_jsonl(tmp_path / "aime.jsonl", train_rows[AIME][:200])
    math = write_jsonl(tmp_path / "math.jsonl", [{**r, "pass_rate": 0.5} for r in train_rows[MATH][:200]])
    # Shares its first 100 rows with `math`: the mix must not take one problem twice.
    easy = write_jsonl(tmp_path / "easy.jsonl", train_rows[MATH][:100] + train_rows[SUBSET][:100])
    return [f"s1={aime}:30", f"ds={math}:30", f"easy={easy}:20"]


def test_seeded_mix_reproduces_exactly(mix_sources, tmp_path):
    args = [arg for spec in mix_sources for arg in ("--source", spec)]
    stats = run_cli("mix", *args, "--seed", "3", "--output_dir", str(tmp_path / "a"))
    run_cli("mix", *args, "--seed", "3", "--output_dir", str(tmp_path / "b"))
    run_cli("mix", *args, "--seed", "4", "--output_dir", str(tmp_path / "c"))
    a, b, c = ((tmp_path / d / "train.jsonl").read_bytes() for d in "abc")
    assert a == b and a != c
    rows = load_rows(str(tmp_path / "a"))
    check_columns(rows, "mix")
    assert all(list(r) == ["problem", "solution", "answer", "source", "pass_rate"] for r in rows)
    assert [sum(r["source"] == s for r in rows) for s in ("s1", "ds", "easy")] == [30, 30, 20]
    assert len({normalize(r["problem"]) for r in rows}) == 80
    assert all(r["pass_rate"] == 0.5 for r in rows if r["source"] == "ds")
    assert all(r["pass_rate"] is None for r in rows if r["source"] != "ds")
    assert all(r["answer"] for r in rows)
    assert stats["sources"]["easy"]["taken"] == 20 and stats["rows_out"] == 80


def test_mix_draw_of_a_source_does_not_depend_on_the_others(train_rows):
    a = [{"problem": f"a{i}", "answer": "1"} for i in range(50)]
    b = [{"problem": f"b{i}", "answer": "1"} for i in range(50)]
    alone, _ = mix([(MixSource("b", "b", 10), b)], seed=1, shuffle=False)
    both, _ = mix([(MixSource("a", "a", 10), a), (MixSource("b", "b", 10), b)], seed=1, shuffle=False)
    assert both[10:] == alone


def test_mix_errors_and_hub_dataset(mix_sources, tmp_path):
    easy = mix_sources[2].split("=", 1)[1].rsplit(":", 1)[0]
    with pytest.raises(SystemExit):  # 200 rows, 100 of them taken by "ds" first
        run_cli("mix", "--source", f"ds={easy}:100", "--source", f"easy={easy}:101",
                "--output_dir", str(tmp_path / "x"))
    stats = run_cli("mix", "--source", mix_sources[0], "--save_to_disk", "--output_dir", str(tmp_path / "h"))
    hub = load_rows(stats["hf_dataset"], "train")
    assert hub == load_rows(str(tmp_path / "h"))


def test_cli_reports_user_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("format", "--input", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "o"))
    assert exit_info.value.code == 2
    assert re.search(r"error: dataset file .*missing.jsonl does not exist", capsys.readouterr().err)
