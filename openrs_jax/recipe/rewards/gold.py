"""Gold answers: which text is the gold, how it is parsed, and what an unparsable gold scores.

- A row's ``solution`` is the gold. A dataset row with only an ``answer`` gets it wrapped as
  ``$\\boxed{answer}$``: the recipe's gold parser needs LaTeX delimiters to find anything.
- A gold that does not parse scores ``UNPARSABLE_GOLD_REWARD`` (1.0, as the original did, so
  the row does not push the policy either way) in accuracy and cosine, and counts as correct
  in length. The scorer counts these rows and logs each distinct gold once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from openrs_jax.recipe.rewards.verify import MATH_VERIFY_ERRORS, parse_gold_text

logger = logging.getLogger(__name__)

# The original open-rs code returned 1.0 ("skip") when the gold did not parse.
UNPARSABLE_GOLD_REWARD = 1.0

_MAX_LOGGED = 10_000  # bound the memory of "already logged" golds over a long run
_logged: set[str] = set()


def wrap_answer(answer: Any) -> str:
    """Wrap a bare answer string so the recipe's gold parser finds it: ``$\\boxed{answer}$``."""
    return f"$\\boxed{{{str(answer).strip()}}}$"


def gold_from_row(row: Mapping[str, Any]) -> str:
    """The gold text of a dataset row: ``solution`` if present, else the wrapped ``answer``.

    Raises ValueError when the row has neither.
    """
    solution = row.get("solution")
    if isinstance(solution, str) and solution.strip():
        return solution
    answer = row.get("answer")
    if answer is not None and str(answer).strip():
        return wrap_answer(answer)
    raise ValueError(f"row has neither a 'solution' nor an 'answer': keys {sorted(row)}")


@functools.lru_cache(maxsize=4096)
def parse_gold(solution: str) -> tuple[Any, ...]:
    """Parse a gold as the recipe does; an empty tuple means it did not parse.

    Cached: a gold is scored against num_generations completions in a row.
    """
    try:
        return tuple(parse_gold_text(solution))
    except MATH_VERIFY_ERRORS:  # a gold that cannot be parsed is an unparsable gold
        return ()


def gold_parses(solution: str) -> bool:
    """Whether the recipe's gold parser extracts anything from ``solution``."""
    return bool(parse_gold(solution))


def log_unparsable_gold(solution: str) -> None:
    """Log an unparsable gold once per distinct text (it recurs every epoch and every G rows)."""
    if solution in _logged:
        return
    if len(_logged) < _MAX_LOGGED:
        _logged.add(solution)
    shown = solution if len(solution) <= 200 else solution[:200] + "..."
    logger.warning("gold did not parse (rewarded as the recipe says): %r", shown)
