"""math-verify plumbing shared by the answer-checking rewards (docs/recipe.md section Rewards).

The parse and verify configurations below are the recipe's, verbatim; only the
plumbing around them (timeouts, caching, silencing) is ours.

Works with math-verify 0.5.2 (the original run's pin, `pip install -e ".[paper]"`) and >= 0.7:
0.5.2 has no `math_verify.errors` (its timeouts raise the built-in TimeoutError), calls the
numeric tolerance `precision` (later `float_rounding`) and arms signal.alarm on every call,
which raises outside a process's main thread; `_alarm_only_on_main_thread` makes its checks run
there without a timeout, as >= 0.7 does when given no timeout.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any, Literal

from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

try:
    from math_verify.errors import TimeoutException
except ImportError:  # math-verify < 0.7: timeouts raise the built-in TimeoutError
    TimeoutException = TimeoutError  # type: ignore[misc,assignment]

# math-verify 0.5.2 (the version the recipe pinned) used 3 s signal.alarm timeouts.
MATH_VERIFY_TIMEOUT_S = 3

BoxedMode = Literal["all", True]

# Exceptions a math-verify call can leak: TimeoutException derives from BaseException.
MATH_VERIFY_ERRORS: tuple[type[BaseException], ...] = (Exception, TimeoutException)

# math-verify's per-call log lines (deprecation notes, parse timeouts) fire once per completion and
# would flood the training log; failures that matter are counted by the scorer instead.
for _name in ("math_verify", "latex2sympy2_extended"):
    logging.getLogger(_name).setLevel(logging.CRITICAL)


# math-verify >= 0.7 accepts a timeout of None (no signal.alarm); 0.5.2 always arms the alarm.
TIMEOUT_OPTIONAL = TimeoutException is not TimeoutError


def _alarm_only_on_main_thread() -> None:
    """math-verify 0.5.2: its `timeout` decorator (imported into parser and grader) arms
    signal.alarm unconditionally, so every check made off the main thread raised and scored
    wrong. Wrap it to run the undecorated function there (the pool enforces its own limit)."""
    import math_verify.grader as grader
    import math_verify.parser as parser

    armed = grader.timeout

    def timeout(timeout_seconds: int = 10) -> Any:
        def decorator(func: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if threading.current_thread() is threading.main_thread():
                    return armed(timeout_seconds)(func)(*args, **kwargs)
                return func(*args, **kwargs)

            return wrapper

        return decorator

    grader.timeout = parser.timeout = timeout


if not TIMEOUT_OPTIONAL:
    _alarm_only_on_main_thread()
# The numeric tolerance keyword of verify(): `float_rounding` from 0.7 on, `precision` before.
ROUNDING_KEYWORD = "float_rounding" if "float_rounding" in inspect.signature(verify).parameters else "precision"


def timeout_s(seconds: int = MATH_VERIFY_TIMEOUT_S) -> int | None:
    """The timeout to hand a math-verify call: `seconds`, or None where it cannot be enforced.

    signal.alarm only works in the main thread; elsewhere math-verify would raise on every
    call, so run without its timeout (the process pool enforces its own per-row limit).
    math-verify 0.5.2 needs an int; its alarm is skipped off the main thread (see above).
    """
    if threading.current_thread() is threading.main_thread() or not TIMEOUT_OPTIONAL:
        return seconds
    return None


def rounding_kwargs(digits: int) -> dict[str, int]:
    """verify()'s numeric tolerance argument under the installed math-verify's name."""
    return {ROUNDING_KEYWORD: digits}


def _parse(text: str, config: list[LatexExtractionConfig]) -> list[Any]:
    return parse(text, extraction_mode="first_match", extraction_config=config, parsing_timeout=timeout_s())


def parse_gold_text(solution: str) -> list[Any]:
    """Parse a gold solution with the recipe's config (math-verify's LaTeX defaults); [] when it does not parse."""
    return _parse(solution, [LatexExtractionConfig()])


def parse_answer(completion: str, boxed: BoxedMode) -> list[Any]:
    """Parse a completion with the recipe's answer config (accuracy: boxed="all"; cosine, length: True);
    [] when nothing is extracted."""
    normalization = NormalizationConfig(
        nits=False, malformed_operators=False, basic_latex=True, equations=True, boxed=boxed, units=True
    )
    config = LatexExtractionConfig(
        normalization_config=normalization, boxed_match_priority=0, try_extract_without_anchor=False
    )
    return _parse(completion, [config])


def verify_answer(answer: list[Any], gold: list[Any]) -> bool:
    """The recipe's correctness test on parsed lists; any exception counts as wrong."""
    try:
        # The recipe calls verify(answer, gold): the answer sits in math-verify's "gold" slot.
        # verify is not symmetric (equations, intervals), so keep the original order.
        return bool(verify(answer, gold, timeout_seconds=timeout_s()))
    except MATH_VERIFY_ERRORS:
        return False
