"""The recipe's seven reward functions (docs/recipe.md section Rewards), one completion at a time.

Each ``*_reward`` takes the decoded completion text and the gold solution text and returns a
float; parameters are keyword-only with the original functions' defaults. ``length`` is the
one group-level reward: ``length_correct`` runs per completion (the expensive math-verify
part, so it can run in a worker) and ``length_group_rewards`` combines one group.
The registry (``registry.py``) turns these into ``f(completions, solutions) -> list[float]``.
"""

from __future__ import annotations

import functools
import math
import re

from openrs_jax.recipe.rewards.gold import UNPARSABLE_GOLD_REWARD, parse_gold
from openrs_jax.recipe.rewards.verify import MATH_VERIFY_ERRORS, BoxedMode, parse_answer, verify_answer

THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n"

# No re.MULTILINE, as in the original: "^\d+\." only matches at the very start of the text.
_STEP_PATTERN = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)")


@functools.lru_cache(maxsize=256)
def is_correct(completion: str, solution: str, boxed: BoxedMode) -> bool | None:
    """Whether the completion's answer verifies against the gold; None if the gold does not parse.

    Cached because cosine and length check the same pair with the same config.
    """
    gold = parse_gold(solution)
    if not gold:
        return None
    try:
        answer = parse_answer(completion, boxed)
    except MATH_VERIFY_ERRORS:  # the recipe: any exception counts as wrong
        return False
    return verify_answer(answer, list(gold))


def accuracy_reward(
    completion: str, solution: str, *, unparsable_gold_reward: float = UNPARSABLE_GOLD_REWARD
) -> float:
    """1.0 if the answer (boxed="all" extraction) verifies against the gold, else 0.0."""
    correct = is_correct(completion, solution, "all")
    return float(unparsable_gold_reward if correct is None else correct)


def format_reward(completion: str, solution: str | None = None) -> float:
    """1.0 if the completion contains exactly one "\\n</think>\\n", else 0.0."""
    return 1.0 if completion.count(THINK_CLOSE) == 1 else 0.0


def tag_count_reward(completion: str, solution: str | None = None) -> float:
    """0.5 for exactly one "<think>\\n" plus 0.5 for exactly one "\\n</think>\\n"."""
    return 0.5 * (completion.count(THINK_OPEN) == 1) + 0.5 * (completion.count(THINK_CLOSE) == 1)


def cosine_reward(
    completion: str,
    solution: str,
    *,
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
    unparsable_gold_reward: float = UNPARSABLE_GOLD_REWARD,
) -> float:
    """Length-scaled correctness: c = cos(pi * L / max_len), L in characters (no clamp).

    correct: min_c + (max_c - min_c)(1 + c)/2 (short correct answers earn most);
    wrong: max_w + (min_w - max_w)(1 + c)/2 (the bounds swap, so short wrong answers cost most).
    """
    correct = is_correct(completion, solution, True)
    if correct is None:
        return float(unparsable_gold_reward)
    c = math.cos(math.pi * len(completion) / max_len)
    lo, hi = (min_value_correct, max_value_correct) if correct else (max_value_wrong, min_value_wrong)
    return float(lo + 0.5 * (hi - lo) * (1.0 + c))


def check_cosine(max_len: int = 1000, **_: float) -> None:
    """Reject a max_len that would divide by zero or flip the curve."""
    if max_len <= 0:
        raise ValueError(f"cosine: max_len must be > 0, got {max_len}")


def reasoning_steps_reward(completion: str, solution: str | None = None) -> float:
    """min(1, n / 3) with n the matches of the recipe's step pattern."""
    return min(1.0, len(_STEP_PATTERN.findall(completion)) / 3)


def length_correct(completion: str, solution: str, *, unparsable_gold_correct: bool = True) -> bool:
    """Per-completion part of ``length``: correctness with the boxed=True config.

    A gold that does not parse counts as correct, as in the original (not penalised).
    """
    correct = is_correct(completion, solution, True)
    return bool(unparsable_gold_correct) if correct is None else correct


def length_group_rewards(completions: list[str], correct: list[bool]) -> list[float]:
    """Kimi 1.5 length reward over one group: lam = 0.5 - (L - min) / (max - min).

    Correct completions get lam, wrong ones min(0, lam); all lengths equal gives 0 for all.
    """
    lengths = [len(text) for text in completions]
    shortest, longest = min(lengths, default=0), max(lengths, default=0)
    if shortest == longest:
        return [0.0] * len(completions)
    lams = [0.5 - (n - shortest) / (longest - shortest) for n in lengths]
    return [float(lam if ok else min(0.0, lam)) for lam, ok in zip(lams, correct)]


def repetition_penalty_reward(
    completion: str, solution: str | None = None, *, ngram_size: int = 3, max_penalty: float = -1.0
) -> float:
    """(1 - unique / total) * max_penalty over lowercased word n-grams; 0 if too short."""
    words = completion.lower().split()
    if len(words) < ngram_size:  # also covers the empty text
        return 0.0
    ngrams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
    return (1.0 - len(set(ngrams)) / len(ngrams)) * max_penalty


def check_repetition_penalty(ngram_size: int = 3, max_penalty: float = -1.0) -> None:
    """A penalty must not reward repetition, and n-grams need at least one word."""
    if max_penalty > 0:
        raise ValueError(f"repetition_penalty: max_penalty must be <= 0, got {max_penalty}")
    if ngram_size < 1:
        raise ValueError(f"repetition_penalty: ngram_size must be >= 1, got {ngram_size}")
