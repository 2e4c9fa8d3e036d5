"""Every shared benchmark row: its gold written as a completion scores correct, shuffled golds do not.

A gold "written as a completion" is the worked solution itself for MATH-500 and Minerva (their
gold field is the solution), and the answer in the prompt's requested format
(`Therefore, the final answer is: $\\boxed{answer}$. ...`) for the answer-only tasks.

Exceptions (OlympiadBench under the paper's protocol only; 42 of 675 rows with math-verify
0.9.0, each explained by `olympiad_exception_reason`): the paper's lighteval gold extraction
cannot represent these golds, so no completion can match them:
- 21 multi-part answers stored as `69$,$84` (outer `$` stripped from `$69$,$84$`): boxed, the
  inner `$` break the prediction's LaTeX and the gold stays a raw string;
- 16 golds of which LaTeX extraction finds only a piece (`M=\\frac{9}{32} \\sqrt{2}` -> 9/32,
  `[\\frac{1}{2}, 8]` -> 1/2): the whole answer then differs from that piece;
- 5 golds that do not parse at all and so compare as strings, where the prediction's extracted
  string is normalised (`\\left(`/`\\right)` dropped, `1/3` -> `\\frac{1}{3}`, `6m` -> `6`).
Under `--scoring fixed` (golds boxed before extraction) every OlympiadBench row scores correct.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.conftest import shared_data
from openrs_jax.evaluation.scoring import (
    Gold, boxed_gold, extract_prediction, is_correct, prepare_gold,
)
from openrs_jax.evaluation.tasks import TASKS, load_task

pytestmark = pytest.mark.slow  # about 25 s: math-verify on 1,547 rows, most of it Minerva's long solutions

MIN_RATE = 0.99
MAX_SHUFFLED_RATE = 0.03  # shuffled rows still agree when two problems share an answer (e.g. 2)
MAX_SHUFFLED_PAIRS = 150


def final(answer: str) -> str:
    return f"Therefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct"


def gold_as_completion(task: str, gold: str, scoring: str) -> str:
    spec = TASKS[task]
    if not spec.answer_only:
        return gold
    return final(boxed_gold(gold)[len("$\\boxed{"):-2] if scoring == "fixed" else gold)


def olympiad_exception_reason(gold: Gold) -> str | None:
    """Why the paper's protocol cannot score this OlympiadBench gold, or None (no known defect)."""
    if "$" in gold.text:
        return "multi-part answer with inner $"
    if not gold.extracted:
        return "unparsed gold compared as a string"
    matched = str(gold.parsed[-1])
    if matched.replace(" ", "") != gold.text.replace(" ", ""):
        return "LaTeX extraction takes only part of the gold"
    return None


def rates(task: str, scoring: str) -> tuple[list[int], list[Gold], int, int]:
    """Failing rows with the gold as completion, the golds, shuffled hits and shuffled pairs."""
    spec = TASKS[task]
    problems = load_task(task, shared_data("benchmarks"))
    golds = [prepare_gold(p.gold, spec.gold_kind, answer_only=spec.answer_only, scoring=scoring) for p in problems]
    predictions: list[Any] = [extract_prediction(gold_as_completion(task, p.gold, scoring)) for p in problems]
    failing = [i for i, (g, pred) in enumerate(zip(golds, predictions)) if not is_correct(g, pred)]
    order = list(range(len(problems)))
    random.Random(0).shuffle(order)
    # A sample of mismatched pairs keeps the runtime down (symbolic comparisons are the slow part).
    pairs = [(i, j) for i, j in enumerate(order) if i != j][:MAX_SHUFFLED_PAIRS]
    shuffled_hits = sum(is_correct(golds[i], predictions[j]) for i, j in pairs)
    return failing, golds, shuffled_hits, len(pairs)


@pytest.mark.parametrize("task", ["aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench"])
def test_gold_as_completion_paper_protocol(task):
    failing, golds, hits, pairs = rates(task, "paper")
    n = len(golds)
    print(f"{task}: gold-as-completion {n - len(failing)}/{n}, shuffled {hits}/{pairs}")
    if task == "olympiadbench":
        reasons = [olympiad_exception_reason(golds[i]) for i in failing]
        counts = {r: reasons.count(r) for r in set(reasons)}
        print("olympiadbench exceptions:", counts)
        # Only the protocol's known defects (module docstring) may fail; anything else is our bug.
        assert None not in counts, [golds[i].text for i, r in zip(failing, reasons) if r is None]
        assert len(failing) <= 0.065 * n, counts
    else:
        assert len(failing) <= (1 - MIN_RATE) * n, [golds[i].text for i in failing]
    assert hits <= MAX_SHUFFLED_RATE * pairs


def test_gold_as_completion_fixed_olympiadbench():
    failing, golds, hits, pairs = rates("olympiadbench", "fixed")
    assert len(failing) <= (1 - MIN_RATE) * len(golds), [golds[i].text for i in failing]
    assert hits <= MAX_SHUFFLED_RATE * pairs
