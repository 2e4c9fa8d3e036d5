"""Answer checking equivalent to the paper's lighteval extractive match (docs/recipe.md section Evaluation).

The paper scored with lighteval's `multilingual_extractive_match_metric` (fallback_mode
"first_match", precision 5):
- prediction: math-verify extraction with [ExprExtractionConfig(), LatexExtractionConfig(
  boxed_match_priority=0)] (a \\boxed{} answer wins over any other match; the last match wins
  within a priority);
- gold: [LatexExtractionConfig()] for MATH-500, Minerva, OlympiadBench and
  [ExprExtractionConfig()] for AIME and AMC; a gold that extracts to nothing is kept as its raw
  string, which then only equals a prediction's extracted string;
- correct: math-verify `verify(gold, prediction, float_rounding=5)`.

`scoring="fixed"` is our better alternative, not the paper's protocol: an answer-only LaTeX gold
(OlympiadBench) is wrapped as `$\\boxed{...}$` before extraction. Without that, math-verify
extracts only part of answers such as `M=\\frac{9}{32} \\sqrt{2}` (it finds `\\frac{9}{32}`) and
compares the bare ones as strings, so even the gold itself fails on about 6% of OlympiadBench.

math-verify times out with signal.alarm, which works only in a process's main thread; elsewhere
it runs without a timeout. Any error or timeout scores the sample wrong. The version plumbing
(math-verify 0.5.2, the paper's, or >= 0.7) is shared with the rewards (`rewards/verify.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

GoldKind = Literal["latex", "expr"]
Scoring = Literal["paper", "fixed"]
SCORING_MODES: tuple[str, ...] = ("paper", "fixed")

PRECISION = 5  # decimal places for numeric comparison (the paper's lighteval setting)
TIMEOUT_S = 5  # lighteval's per-call math-verify timeout


def _timeout() -> int | None:
    # lighteval's limit where math-verify can enforce one (`rewards/verify.py` knows where).
    from openrs_jax.recipe.rewards.verify import timeout_s

    return timeout_s(TIMEOUT_S)


def gold_extraction(kind: GoldKind, scoring: Scoring = "paper") -> list[Any]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    if kind == "expr":
        return [ExprExtractionConfig()]
    # In the fixed mode answer golds arrive boxed: take the box before any other LaTeX match.
    return [LatexExtractionConfig(boxed_match_priority=0) if scoring == "fixed" else LatexExtractionConfig()]


def _parse(text: str, config: list[Any]) -> list[Any]:
    """math-verify parse with lighteval's modes; [] on any error or timeout."""
    from math_verify import parse

    # Importing verify also silences math-verify's per-sample warnings (timeouts, unparsable text).
    from openrs_jax.recipe.rewards.verify import MATH_VERIFY_ERRORS

    try:
        return parse(text, config, fallback_mode="first_match", extraction_mode="any_match",
                     parsing_timeout=_timeout())
    except MATH_VERIFY_ERRORS:  # >= 0.7's TimeoutException is a BaseException
        return []


def boxed_gold(answer: str) -> str:
    """An answer-only gold as a boxed LaTeX answer (the fixed mode).

    Inner `$` are dropped: they are what is left of multi-part answers like `$69$,$84$` once
    their outer `$` were stripped by the dataset (`69$,$84` -> `69,84`); so is a final period.
    """
    return "$\\boxed{" + answer.replace("$", "").strip().removesuffix(".").strip() + "}$"


@dataclass(frozen=True)
class Gold:
    """A gold answer as the metric compares it: the raw text and what was extracted from it."""

    text: str
    parsed: tuple[Any, ...]
    extracted: bool  # False: nothing parsed, the raw string stands in (lighteval's fallback)


def prepare_gold(text: str, kind: GoldKind, *, answer_only: bool, scoring: Scoring = "paper") -> Gold:
    """Extracts the gold once per problem (it is compared with every sample)."""
    if scoring not in SCORING_MODES:
        raise ValueError(f"scoring must be one of {SCORING_MODES}, got {scoring!r}")
    source = boxed_gold(text) if (scoring == "fixed" and answer_only and kind == "latex") else text
    parsed = _parse(source, gold_extraction(kind, scoring))
    return Gold(text, tuple(parsed or [text]), extracted=bool(parsed))  # nothing parsed: the raw text stands in


def extract_prediction(completion: str) -> list[Any]:
    """What math-verify extracts from a completion: [sympy object, matched string], or []."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return _parse(completion, [ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)])


def prediction_text(parsed: Sequence[Any]) -> str:
    """The extracted answer as text for the details file ("" when nothing was extracted)."""
    # The last element is the matched string; converting sympy objects to text can be slow.
    return str(parsed[-1]) if parsed else ""


def is_correct(gold: Gold, prediction: Sequence[Any]) -> bool:
    """math-verify's comparison at the paper's precision; False on any error or timeout."""
    from math_verify import verify

    from openrs_jax.recipe.rewards.verify import MATH_VERIFY_ERRORS, rounding_kwargs

    if not prediction:
        return False
    try:
        return bool(verify(list(gold.parsed), list(prediction), **rounding_kwargs(PRECISION),
                           timeout_seconds=_timeout()))
    except MATH_VERIFY_ERRORS:
        return False


def score_completion(completion: str, gold: Gold) -> tuple[bool, str]:
    """(correct, extracted prediction text) for one completion."""
    parsed = extract_prediction(completion)
    return is_correct(gold, parsed), prediction_text(parsed)
