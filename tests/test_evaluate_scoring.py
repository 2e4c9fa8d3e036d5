"""Hand-checked scoring cases, one group per kind of gold (docs/recipe.md section Evaluation).

Each expectation was decided by hand from the maths (is the completion's final answer the gold?),
except the cases marked "paper protocol", which pin how the paper's lighteval extraction treats
OlympiadBench golds (see openrs_jax/evaluation/scoring.py).
"""

from __future__ import annotations

import threading

import pytest

from openrs_jax.evaluation.scoring import boxed_gold, prepare_gold, score_completion
from openrs_jax.evaluation.tasks import TASKS


def final(answer: str) -> str:
    """A completion in the format the evaluation prompt asks for."""
    return f"Some reasoning.\n\nTherefore, the final answer is: $\\boxed{{{answer}}}$. I hope it is correct"


def correct(completion: str, gold: str, task: str, scoring: str = "paper") -> bool:
    spec = TASKS[task]
    g = prepare_gold(gold, spec.gold_kind, answer_only=spec.answer_only, scoring=scoring)
    return score_completion(completion, g)[0]


# AIME / AMC: integer golds extracted as expressions; "025" is 25.
INTEGER_CASES = [
    (final("25"), "025", True),
    (final("025"), "025", True),
    (final("25.0"), "025", True),
    (final("26"), "025", False),
    (final("250"), "025", False),
    ("Therefore, the final answer is: 25. I hope it is correct", "025", True),  # unboxed
    ("Adding these up, the answer is 73.", "073", True),  # unboxed, no format at all
    ("<think>\nmaybe \\boxed{7}?\n</think>\n\nSo the final answer is $\\boxed{25}$.", "025", True),
    ("First I got \\boxed{25}.\n\nWait, that is wrong.\n\nFinal answer: \\boxed{3}", "025", False),
    ("", "025", False),
    ("I do not know.", "025", False),
    (final("-1"), "-1", True),
    (final("1"), "-1", False),
]


@pytest.mark.parametrize("completion,gold,expected", INTEGER_CASES)
@pytest.mark.parametrize("task", ["aime24", "amc23"])
def test_integer_golds(completion, gold, expected, task):
    assert correct(completion, gold, task) is expected


MATH500_GOLD_POLAR = (
    "We have that $r = \\sqrt{0^2 + 3^2} = 3.$ ... Therefore, the polar coordinates are "
    "$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$"
)
MATH500_CASES = [
    (final("\\frac{14}{3}"), "so $x = \\boxed{\\frac{14}{3}}$.", True),
    (final("\\dfrac{14}{3}"), "so $x = \\boxed{\\frac{14}{3}}$.", True),
    (final("4\\frac{2}{3}"), "so $x = \\boxed{\\frac{14}{3}}$.", True),  # mixed number
    (final("4.66667"), "so $x = \\boxed{\\frac{14}{3}}$.", True),  # equal at 5 decimals
    (final("4.6667"), "so $x = \\boxed{\\frac{14}{3}}$.", False),
    (final("\\frac{3}{14}"), "so $x = \\boxed{\\frac{14}{3}}$.", False),
    (final("\\left( 3, \\frac{\\pi}{2} \\right)"), MATH500_GOLD_POLAR, True),
    (final("(3, \\pi/2)"), MATH500_GOLD_POLAR, True),
    (final("(3, \\pi)"), MATH500_GOLD_POLAR, False),
    (final("[-2, 5)"), "The domain is $\\boxed{[-2,5)}$.", True),
    (final("(-2, 5)"), "The domain is $\\boxed{[-2,5)}$.", False),
    (final("x^2+2x+1"), "It is $\\boxed{(x+1)^2}$.", True),
    (final("\\text{(C)}"), "The answer is $\\boxed{\\text{(C)}}$.", True),
    (final("10\\%"), "That is $\\boxed{10\\%}$.", True),
    (final("\\sqrt{2}/2"), "$\\boxed{\\frac{\\sqrt{2}}{2}}$", True),
    (final("\\sqrt{3}/2"), "$\\boxed{\\frac{\\sqrt{2}}{2}}$", False),
]


@pytest.mark.parametrize("completion,gold,expected", MATH500_CASES)
@pytest.mark.parametrize("task", ["math500", "minerva"])
def test_latex_solution_golds(completion, gold, expected, task):
    assert correct(completion, gold, task) is expected


# OlympiadBench golds are answer-only LaTeX with their `$` stripped.
OLYMPIAD_CASES = [
    # gold, completion answer, paper protocol, fixed mode
    ("2", "2", True, True),
    ("2", "3", False, False),
    ("\\frac{1}{2 n+2}", "\\frac{1}{2 n+2}", True, True),
    # Paper protocol: the gold does not parse, so only the identical string matches.
    ("\\frac{1}{2 n+2}", "\\frac{1}{2n+2}", False, True),
    ("\\frac{1}{2 n+2}", "\\frac{1}{2(n+1)}", False, True),
    # Intervals. Paper protocol: the gold extracts to its first \frac only (1/2).
    ("[\\frac{1}{2}, 8]", "[\\frac{1}{2}, 8]", False, True),
    ("[\\frac{1}{2}, 8]", "[0.5, 8]", False, True),
    ("[\\frac{1}{2}, 8]", "(0.5, 8)", False, False),
    ("[\\frac{1}{2}, 8]", "\\frac{1}{2}", True, False),
    ("$(-\\infty, 0) \\cup\\{1\\}$.", "(-\\infty, 0) \\cup \\{1\\}", True, True),
    # Expressions and equations.
    ("M=\\frac{9}{32} \\sqrt{2}", "\\frac{9\\sqrt{2}}{32}", False, True),
    ("2^{1009}", "2^{1009}", True, True),
    ("\\binom{2n}{n}", "\\binom{2n}{n}", True, True),
    # Multi-part answers whose inner `$` survived the dataset's stripping.
    ("69$,$84", "69, 84", False, True),
    ("69$,$84", "84, 69", False, True),
    ("69$,$84", "69", False, False),
]


@pytest.mark.parametrize("gold,answer,paper,fixed", OLYMPIAD_CASES)
def test_olympiadbench_golds(gold, answer, paper, fixed):
    assert correct(final(answer), gold, "olympiadbench", "paper") is paper
    assert correct(final(answer), gold, "olympiadbench", "fixed") is fixed


def test_boxed_gold():
    assert boxed_gold("69$,$84") == "$\\boxed{69,84}$"
    assert boxed_gold(" \\frac{1}{2} ") == "$\\boxed{\\frac{1}{2}}$"


def test_prediction_text_is_recorded():
    g = prepare_gold("025", "expr", answer_only=True)
    assert score_completion(final("25"), g) == (True, "25")
    assert score_completion("nothing", g) == (False, "")


def test_scoring_off_the_main_thread():
    # signal.alarm is unavailable in threads: scoring must still work there (without timeouts).
    out = {}
    t = threading.Thread(target=lambda: out.update(ok=correct(final("\\frac{14}{3}"), "$\\boxed{14/3}$", "math500")))
    t.start()
    t.join()
    assert out["ok"] is True


def test_unknown_scoring_mode():
    with pytest.raises(ValueError, match="scoring"):
        prepare_gold("1", "expr", answer_only=True, scoring="lenient")  # type: ignore[arg-type]
