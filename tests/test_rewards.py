"""Reward functions (docs/recipe.md section Rewards) and the process-pool scorer.

Expected values are worked out by hand from the recipe's formulas; for accuracy, from the
recipe's math-verify configs (notably malformed_operators=False and
try_extract_without_anchor=False in the answer config).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from openrs_jax.recipe.rewards.verify import TIMEOUT_OPTIONAL
from openrs_jax.recipe.rewards import (
    REWARD_FUNCTIONS,
    RewardScorer,
    get_reward_function,
    gold_from_row,
    score_batch,
    wrap_answer,
)



def shared_file(relative: str) -> Path:
    from tests.conftest import shared_data

    return shared_data(*relative.split("/"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Test-only rewards, loaded by the workers through the "module:function" import path.
def fault_reward(completions: list[str], solutions: list[str]) -> list[float]:
    """1.0, except: "HANG" sleeps, "RAISE..." raises, "CRASH" kills the worker process."""
    text = completions[0]
    if text == "HANG":
        time.sleep(600)
    if text.startswith("RAISE"):
        raise RuntimeError("injected failure")
    if text == "CRASH":
        os._exit(3)
    return [1.0]


FAULT = f"{__name__}:fault_reward"
LEGACY = not TIMEOUT_OPTIONAL  # math-verify 0.5.2 (pip install -e ".[paper]")

G5 = "$\\boxed{5}$"

# (gold, completion, expected accuracy, why)
ACCURACY_CASES = [
    ("$\\boxed{\\frac{1}{2}}$", "so $\\boxed{\\frac{2}{4}}$", 1.0, "equivalent fractions"),
    ("$\\boxed{\\frac{1}{2}}$", "The answer is $\\boxed{0.5}$", 1.0, "fraction vs decimal"),
    ("$\\boxed{\\frac{1}{2}}$", "\\boxed{1/2}", 1.0, "slash fraction"),
    ("$\\boxed{\\frac{1}{2}}$", "\\boxed{\\dfrac{1}{2}}", 1.0, "dfrac"),
    ("$\\boxed{\\frac{1}{2}}$", "\\boxed{\\frac12}", 0.0, "malformed \\frac12 not repaired (recipe config)"),
    ("$\\boxed{\\frac{1}{3}}$", "\\boxed{0.333}", 0.0, "decimal too short: rounding to 6 places"),
    ("$\\boxed{\\frac{1}{3}}$", "\\boxed{0.3333333}", 1.0, "decimal equal after rounding"),
    ("$\\boxed{-\\frac{3}{4}}$", "\\boxed{\\frac{-3}{4}}", 1.0, "negative fraction, sign inside"),
    ("$\\boxed{-\\frac{3}{4}}$", "\\boxed{-0.75}", 1.0, "negative decimal"),
    ("$\\boxed{-\\frac{1}{2}}$", "\\boxed{\\frac{1}{-2}}", 1.0, "sign in the denominator"),
    ("$\\boxed{-\\frac{3}{4}}$", "\\boxed{\\frac{3}{4}}", 0.0, "sign lost"),
    ("$\\boxed{2\\sqrt{2}}$", "\\boxed{\\sqrt{8}}", 1.0, "radical simplification"),
    ("$\\boxed{\\frac{\\sqrt{3}}{3}}$", "\\boxed{\\frac{1}{\\sqrt{3}}}", 1.0, "rationalised denominator"),
    ("$\\boxed{\\sqrt{2}}$", "\\boxed{2^{1/2}}", 1.0, "radical as a power"),
    ("$\\boxed{2\\sqrt{2}}$", "\\boxed{2.8284}", 0.0, "decimal approximation off at 6 places"),
    ("$\\boxed{\\sqrt{2}}$", "\\boxed{\\sqrt 2}", 0.0, "malformed \\sqrt 2 not repaired (recipe config)"),
    ("$\\boxed{(1, 3]}$", "\\boxed{(1,3]}", 1.0, "same half-open interval"),
    ("$\\boxed{(1, 3]}$", "\\boxed{[1,3]}", 0.0, "closed vs half-open"),
    ("$\\boxed{(1, 3]}$", "\\boxed{(1,3)}", 0.0, "open vs half-open"),
    ("$\\boxed{[2, \\infty)}$", "\\boxed{x \\geq 2}", 1.0, "interval vs inequality"),
    ("$\\boxed{(-\\infty, 0) \\cup (1, \\infty)}$", "\\boxed{(-\\infty,0)\\cup(1,\\infty)}", 1.0, "union"),
    ("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "\\boxed{(3, \\frac{\\pi}{2})}", 1.0, "tuple, \\left/\\right"),
    ("$\\boxed{(3, \\frac{\\pi}{2})}$", "\\boxed{(\\frac{\\pi}{2}, 3)}", 0.0, "tuple order matters"),
    ("$\\boxed{(1, 2, 3)}$", "\\boxed{(3,2,1)}", 0.0, "3-tuple order matters"),
    # math-verify 0.5.2 (the original's pin) does not join them yet: it takes the last box.
    (G5, "First \\boxed{3} then \\boxed{5}", float(LEGACY), "boxed='all' joins boxes of one sentence: {3, 5}"),
    ("$\\boxed{3, 5}$", "First \\boxed{3} then \\boxed{5}", float(not LEGACY), "... which matches a set gold"),
    (G5, "First $\\boxed{3}$.\n\nThen finally $\\boxed{5}$", 1.0, "separate boxes: the last one"),
    ("$\\boxed{3}$", "First $\\boxed{3}$.\n\nThen finally $\\boxed{5}$", 0.0, "... not the first"),
    (G5, "Answer 5\n</think>\nSo $\\boxed{5}$", 1.0, "answer after </think>"),
    (G5, "so \\boxed{5}\n</think>\nthe answer is 4", 1.0, "boxed before </think>, none after"),
    (G5, "so \\boxed{5}\n</think>\nThe answer is \\boxed{3}", 0.0, "the later box wins"),
    (G5, "", 0.0, "empty text"),
    (G5, "答案是 $\\boxed{5}$", 1.0, "Chinese text"),
    (G5, "Ответ: $\\boxed{6}$", 0.0, "Russian text, wrong value"),
    (G5, "<think>\nhmm\n</think>\n<answer>\n\\boxed{5}\n</answer>", 1.0, "boxed inside <answer>"),
    (G5, "<answer>\n5\n</answer>", 0.0, "bare answer in tags: no anchor, no box"),
    (G5, "The final answer is $5$", 1.0, "'final answer is' anchor"),
    (G5, "The answer is 5", 0.0, "no LaTeX, no anchor"),
    ("$\\boxed{x = 5}$", "\\boxed{5}", 1.0, "equation gold vs value"),
    ("$\\boxed{\\text{(C)}}$", "\\boxed{C}", 1.0, "multiple-choice letter"),
    ("5", "\\boxed{5}", 1.0, "unparsable gold: reward 1.0 (the recipe's skip)"),
    ("no math here", "\\boxed{7}", 1.0, "unparsable gold"),
]


@pytest.mark.parametrize("gold,completion,expected,why", ACCURACY_CASES, ids=[c[3] for c in ACCURACY_CASES])
def test_accuracy(gold: str, completion: str, expected: float, why: str) -> None:
    assert get_reward_function("accuracy")([completion], [gold]) == [expected], why


def test_unparsable_gold_reward_is_configurable() -> None:
    acc = get_reward_function("accuracy", unparsable_gold_reward=0.0)
    assert acc(["\\boxed{5}"], ["5"]) == [0.0]
    assert acc(["\\boxed{5}"], [wrap_answer("5")]) == [1.0]  # wrapping makes it parse


@pytest.mark.parametrize(
    "text,expected",
    [
        ("reasoning\n</think>\nanswer", 1.0),
        ("\n</think>\n", 1.0),
        ("<think>\na\n</think>\n<answer>\nb\n</answer>", 1.0),
        ("思考\n</think>\n答案", 1.0),
        ("", 0.0),
        ("reasoning</think>answer", 0.0),  # no newlines around the tag
        ("reasoning\n</think>answer", 0.0),
        ("a\n</think>\nb\n</think>\n", 0.0),  # duplicated
        ("no tags at all", 0.0),
    ],
)
def test_format(text: str, expected: float) -> None:
    assert get_reward_function("format")([text]) == [expected]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", 0.0),
        ("a\n</think>\nb", 0.5),  # the usual completion: <think>\n is in the prompt
        ("<think>\na\n</think>\nb", 1.0),
        ("<think>\n<think>\na\n</think>\n", 0.5),  # duplicated open tag
        ("<think>\na\n</think>\n\n</think>\n", 0.5),  # duplicated close tag
        ("<think>a</think>", 0.0),  # tags without the newlines
    ],
)
def test_tag_count(text: str, expected: float) -> None:
    assert get_reward_function("tag_count")([text]) == [expected]


EXP3 = dict(min_value_wrong=0.0, max_value_wrong=-0.5, min_value_correct=0.5, max_value_correct=1.0)
RIGHT = "\\boxed{5}"  # 9 characters, correct against G5
WRONG = "\\boxed{4}"  # 9 characters, wrong


@pytest.mark.parametrize(
    "text,params,expected",
    [
        # Defaults: min_w -1, max_w -0.5, min_c 0.5, max_c 1, max_len 1000.
        ("", {}, -1.0),  # L = 0, wrong: c = 1 -> min_value_wrong
        ("", EXP3, 0.0),  # L = 0 with the Exp3 values
        (RIGHT, {"max_len": 9}, 0.5),  # L = max_len: c = -1 -> min_value_correct
        (WRONG, {"max_len": 9}, -0.5),  # L = max_len, wrong -> max_value_wrong
        (RIGHT, {"max_len": 18}, 0.75),  # c = cos(pi/2) = 0 -> midpoint
        (WRONG, {"max_len": 18}, -0.75),
        (WRONG, {**EXP3, "max_len": 18}, -0.25),
        (RIGHT, {"max_len": 6}, 0.75),  # L > max_len: cos(1.5 pi) = 0, no clamp
        ("x" + RIGHT, {"max_len": 5}, 1.0),  # L = 2 max_len: cos(2 pi) = 1, back at the top
        (RIGHT, {"max_len": 3584}, 0.5 + 0.25 * (1 + math.cos(math.pi * 9 / 3584))),
    ],
)
def test_cosine(text: str, params: dict, expected: float) -> None:
    assert get_reward_function("cosine", **params)([text], [G5]) == pytest.approx([expected], abs=1e-12)


def test_cosine_unparsable_gold() -> None:
    assert get_reward_function("cosine")([WRONG], ["5"]) == [1.0]


def test_cosine_and_length_use_the_boxed_true_config() -> None:
    # The recipe's boxed=True normalisation (cosine, length) differs from accuracy's
    # boxed="all": in math-verify 0.9 a \text{} answer boxed inside $...$ extracts as "\boxed{".
    text, gold = "The answer is $\\boxed{\\text{(C)}}$.", "$\\boxed{\\text{(C)}}$"
    assert get_reward_function("accuracy")([text], [gold]) == [1.0]
    assert get_reward_function("cosine", max_len=len(text))([text], [gold]) == [-0.5]  # wrong, L = max_len
    assert get_reward_function("length")([text, text + " "], [gold] * 2) == [0.0, -0.5]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", 0.0),
        ("Step 1: a\nStep 2: b\nStep 3: c", 1.0),
        ("First, x. Second, y.", 2 / 3),
        ("1. a\n2. b\n3. c", 1 / 3),  # no MULTILINE: ^\d+\. only at the very start
        ("intro\n- a\n- b\n* c\n* d", 1.0),  # 4 matches, capped at 1
        ("Next, we add. Finally, done.", 2 / 3),
        ("Step 1 without a colon", 0.0),
        ("首先，我们计算。然后，完成。", 0.0),
    ],
)
def test_reasoning_steps(text: str, expected: float) -> None:
    assert get_reward_function("reasoning_steps")([text]) == pytest.approx([expected])


def test_length_group() -> None:
    # Lengths 9 (right), 17 (right), 13 (wrong), 15 (wrong): min 9, max 17, range 8.
    texts = [RIGHT, "x" * 8 + RIGHT, "x" * 4 + WRONG, "x" * 6 + WRONG]
    # lam = 0.5 - (L - 9) / 8 = 0.5, -0.5, 0.0, -0.25; wrong rows get min(0, lam).
    assert get_reward_function("length")(texts, [G5] * 4) == [0.5, -0.5, 0.0, -0.25]


def test_length_wrong_short_is_capped_at_zero() -> None:
    texts = [WRONG, "x" * 8 + RIGHT]  # the wrong one is shortest: lam 0.5 -> min(0, 0.5) = 0
    assert get_reward_function("length")(texts, [G5] * 2) == [0.0, -0.5]


def test_length_all_equal_and_unparsable_gold() -> None:
    length = get_reward_function("length")
    assert length([RIGHT, WRONG, RIGHT], [G5] * 3) == [0.0, 0.0, 0.0]
    # Unparsable gold counts as correct (not penalised), as in the original.
    assert length([WRONG, "xx" + WRONG], ["5", "5"]) == [0.5, -0.5]


@pytest.mark.parametrize(
    "text,params,expected",
    [
        ("", {}, 0.0),
        ("one two", {}, 0.0),  # fewer words than n
        ("a b c", {}, 0.0),  # one 3-gram, unique
        ("a a a a", {}, -0.5),  # 2 trigrams, 1 unique: (1 - 1/2) * -1
        ("The cat the CAT the cat", {}, -0.5),  # lowercased: 4 trigrams, 2 unique
        ("a\nb   c", {}, 0.0),  # any whitespace splits words
        ("答案答案答案", {}, 0.0),  # one "word"
        ("a b a b", {"ngram_size": 1}, -0.5),  # 4 unigrams, 2 unique
        ("a b a b", {"ngram_size": 1, "max_penalty": -2.0}, -1.0),
        ("a b c d e f", {"ngram_size": 2}, 0.0),
    ],
)
def test_repetition_penalty(text: str, params: dict, expected: float) -> None:
    assert get_reward_function("repetition_penalty", **params)([text]) == pytest.approx([expected])


def test_registry_lists_the_seven_functions() -> None:
    assert sorted(REWARD_FUNCTIONS) == sorted(
        ["accuracy", "format", "tag_count", "cosine", "reasoning_steps", "length", "repetition_penalty",
         "soft_overlong"]  # the recipe's seven and DAPO's token-count reward
    )
    assert REWARD_FUNCTIONS["cosine"].defaults["min_value_wrong"] == -1.0
    assert REWARD_FUNCTIONS["cosine"].defaults["max_len"] == 1000
    assert REWARD_FUNCTIONS["repetition_penalty"].defaults == {"ngram_size": 3, "max_penalty": -1.0}


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: get_reward_function("acuracy"), "valid: accuracy, cosine, format"),
        (lambda: get_reward_function("cosine", maxlen=10), "valid: min_value_wrong=-1.0"),
        (lambda: get_reward_function("format", weight=1), "valid: none"),
        (lambda: get_reward_function("repetition_penalty", max_penalty=0.5), "must be <= 0"),
        (lambda: get_reward_function("cosine", max_len=0), "max_len must be > 0"),
        (lambda: get_reward_function("no_such_module_xyz:f"), "cannot import"),
        (lambda: get_reward_function("accuracy")(["a"]), "needs the gold"),
        (lambda: score_batch(["a"] * 3, ["b"] * 3, 2, ["format"]), "divide the batch"),
        (lambda: score_batch(["a"], [None], 1, ["accuracy"]), "use gold_from_row"),
        (lambda: score_batch(["a"], ["b"], 1, ["format", "accuracy"], [1.0]), "2 reward functions but 1"),
        (lambda: score_batch(["a"], ["b"], 1, ["format"], None, {"cosin": {}}), "unknown reward function 'cosin'"),
        (lambda: score_batch(["a"], ["b"], 1, ["format", "format"]), "duplicate"),
        (lambda: RewardScorer(["format"], mp_context="fork", num_workers=0), "spawn"),
    ],
)
def test_config_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_gold_from_row() -> None:
    assert gold_from_row({"solution": "so $\\boxed{2}$", "answer": "2"}) == "so $\\boxed{2}$"
    assert gold_from_row({"solution": None, "answer": "\\frac{1}{2}"}) == "$\\boxed{\\frac{1}{2}}$"
    assert gold_from_row({"answer": 7}) == "$\\boxed{7}$"
    with pytest.raises(ValueError, match="neither"):
        gold_from_row({"solution": "", "answer": None})


def test_score_batch_weights_groups_and_counters(caplog: pytest.LogCaptureFixture) -> None:
    completions = ["a\n</think>\n" + RIGHT, "a\n</think>\n" + WRONG, "xx" + RIGHT, RIGHT]
    solutions = [G5, G5, "5", "5"]  # second group: unparsable gold
    caplog.set_level(logging.WARNING)
    res = score_batch(completions, solutions, 2, {"format": 1.0, "accuracy": 2.0, "length": 0.5})
    assert res.rewards["format"] == [1.0, 1.0, 0.0, 0.0]
    assert res.rewards["accuracy"] == [1.0, 0.0, 1.0, 1.0]
    # Groups are scored apart: equal lengths in group 1; in group 2 both count as correct.
    assert res.rewards["length"] == [0.0, 0.0, -0.5, 0.5]
    assert res.total == [3.0, 1.0, 1.75, 2.25]
    assert (res.unparsable_golds, res.errors, res.timeouts) == (2, 0, 0)
    assert sum("gold did not parse" in r.message for r in caplog.records) == 1  # once per gold
    # math-verify's per-call warnings are silenced.
    assert not [r for r in caplog.records if r.name.startswith(("math_verify", "latex2sympy2"))]
    metrics = res.metrics()
    assert metrics["rewards/accuracy"] == 0.75 and metrics["reward"] == 2.0


def test_score_batch_off_the_main_thread() -> None:
    # signal.alarm is unavailable in threads: scoring must still work (without math-verify timeouts).
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=score_batch([RIGHT], ["$\\boxed{5.0}$"], 1, ["accuracy"])))
    thread.start()
    thread.join()
    assert out["r"].rewards["accuracy"] == [1.0] and out["r"].errors == 0


def test_custom_reward_in_process_counts_errors() -> None:
    res = score_batch(["ok", "RAISE"], ["", ""], 1, ["format", FAULT])
    assert res.rewards[FAULT] == [1.0, 0.0]
    assert res.errors == 1 and res.failed_rows == [1]


# ----------------------------------------------------------------------------- process pool


@pytest.fixture(scope="module")
def pool():
    with RewardScorer(["format", "accuracy"], [1.0, 2.0], num_workers=2, timeout_s=30.0) as scorer:
        yield scorer


def test_pool_matches_hand_worked_accuracy(pool: RewardScorer) -> None:
    golds = [c[0] for c in ACCURACY_CASES]
    texts = [c[1] for c in ACCURACY_CASES]
    res = pool.score(texts, golds, 1)
    assert res.rewards["accuracy"] == [c[2] for c in ACCURACY_CASES]
    assert res.total == pytest.approx(score_batch(texts, golds, 1, ["format", "accuracy"], [1.0, 2.0]).total)
    assert (res.timeouts, res.errors, res.worker_restarts, res.unparsable_golds) == (0, 0, 0, 2)


def test_pool_handles_texts_larger_than_its_send_budget(pool: RewardScorer) -> None:
    big = "word " * 60_000 + "\n</think>\n\\boxed{5}"  # 300 kB, several times PREFETCH_BYTES
    res = pool.score([big, big, "\\boxed{4}", big], [G5] * 4, 2)
    assert res.total == [3.0, 3.0, 0.0, 3.0] and res.errors == 0


def test_math500_golds_against_themselves_and_others(pool: RewardScorer) -> None:
    rows = read_jsonl(shared_file("benchmarks/math500.jsonl"))
    sols = [r["solution"] for r in rows]
    n = len(sols)
    assert n == 500
    others = sols[1:] + sols[:1]  # each row against the next row's solution
    res = pool.score(sols + sols, sols + others, 1)
    acc = res.rewards["accuracy"]
    self_rate, other_rate = sum(acc[:n]) / n, sum(acc[n:]) / n
    print(f"\nMATH-500 accuracy reward: self {self_rate:.3f}, against the next row {other_rate:.3f}, "
          f"{res.seconds:.1f}s for {2 * n} rows on {len(pool.worker_pids)} workers")
    assert res.unparsable_golds == 0 and res.errors == 0 and res.timeouts == 0
    assert self_rate >= 0.98
    assert other_rate <= 0.01
    # Every self-miss is a gold boxed with a malformed operator (\frac43, \sqrt2): the gold
    # parser repairs it, the recipe's answer config (malformed_operators=False) does not.
    import re

    malformed = re.compile(r"\\frac\s*\d|\\frac\{[^{}]*\}\s*\d|\\sqrt\s*\d")
    misses = [rows[i]["answer"] for i in range(n) if acc[i] != 1.0]
    assert all(malformed.search(a) for a in misses), misses


def test_answer_only_golds_parse_once_wrapped() -> None:
    rows = [r for r in read_jsonl(shared_file("train/deepscaler_sample.jsonl")) if not r.get("solution")][:200]
    golds = [gold_from_row(r) for r in rows]
    res = score_batch([f"</think>\n$\\boxed{{{r['answer']}}}$" for r in rows], golds, 1, ["accuracy"])
    assert res.unparsable_golds == 0
    assert sum(res.rewards["accuracy"]) / len(rows) >= 0.95


@pytest.fixture(scope="module")
def fault_pool():
    with RewardScorer(["format", FAULT], num_workers=2, timeout_s=2.0) as scorer:
        yield scorer


def test_pool_hang_raise_and_crash_score_zero(fault_pool: RewardScorer) -> None:
    ok = "fine\n</think>\n"
    # Hang and crash lead their groups: the rows queued behind them must be rescored elsewhere.
    texts = ["HANG", ok, "RAISE\n</think>\n", ok, "CRASH", ok, ok, ok]
    start = time.monotonic()
    res = fault_pool.score(texts, [""] * len(texts), 2)
    elapsed = time.monotonic() - start
    assert res.rewards[FAULT] == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    # A raising function loses only its own value; a hang or crash loses the whole row.
    assert res.rewards["format"] == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert res.timeouts == 1
    assert res.errors == 2  # the raise and the crash
    assert res.worker_restarts == 2  # the hung worker and the crashed one
    assert res.failed_rows == [0, 2, 4]
    # Bounded by the 2 s timeout plus replacement start-ups, never by the 600 s sleep.
    assert elapsed < 20, elapsed
    again = fault_pool.score([ok, ok], ["", ""], 1)  # the pool keeps working
    assert again.total == [2.0, 2.0] and again.worker_restarts == 0


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    # A killed child stays a zombie until multiprocessing reaps it: dead means gone or state Z.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)


def test_pool_replaces_a_killed_worker(fault_pool: RewardScorer) -> None:
    fault_pool.score(["a", "b"], ["", ""], 1)  # make sure both workers are up
    victim = fault_pool.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    _wait_dead(victim)
    res = fault_pool.score(["x\n</think>\n"] * 4, [""] * 4, 1)
    assert res.total == [2.0] * 4
    assert res.worker_restarts == 1 and res.errors == 0
    assert victim not in fault_pool.worker_pids


def test_in_process_scorer_and_close() -> None:
    with RewardScorer(["format"], num_workers=0) as scorer:
        assert scorer.score(["a\n</think>\n", "b"], ["", ""], 2).total == [1.0, 0.0]
    with pytest.raises(RuntimeError, match="closed"):
        scorer.score(["a"], [""], 1)


def test_reward_benchmark_runs(tmp_path: Path) -> None:
    from openrs_jax.bench.rewards import run_reward_benchmark

    out = tmp_path / "rewards.json"
    res = run_reward_benchmark(8, 1, 500, out, reward_funcs=("format", "accuracy"), repeats=1)
    assert json.loads(out.read_text())["num_completions"] == 8
    assert res["same_as_in_process"] and res["timeouts_errors_restarts"] == 0
    assert res["completions_per_s"] > 0 and 400 < res["mean_chars"] < 700
