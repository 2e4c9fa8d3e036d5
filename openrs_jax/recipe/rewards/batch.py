"""Scoring a rollout batch with weighted rewards: the logic shared by in-process and pooled paths.

``RewardSet.score_row`` is what a worker process runs per completion; ``RewardSet.combine``
runs in the caller and applies group phases, failures and weights. ``score_batch`` is the
two chained in-process (no timeouts: use ``RewardScorer`` in training).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openrs_jax.recipe.rewards.gold import gold_parses, log_unparsable_gold
from openrs_jax.recipe.rewards.registry import REWARD_FUNCTIONS, BoundReward, get_reward_function
from openrs_jax.recipe.rewards.verify import MATH_VERIFY_ERRORS

logger = logging.getLogger(__name__)

# Picklable description of a reward set, sent to worker processes: ((name, params), ...).
RewardConfig = tuple[tuple[str, dict[str, Any]], ...]


@dataclass(frozen=True)
class RowResult:
    """One completion's per-row values (None where that function raised) and its gold status."""

    values: tuple[Any, ...]
    gold_unparsable: bool = False


@dataclass
class ScoreResult:
    """Rewards of one batch: per function (unweighted, for ``rewards/<name>``) and weighted total."""

    rewards: dict[str, list[float]]
    total: list[float]
    weights: dict[str, float]
    timeouts: int = 0  # completions killed for exceeding the per-completion time limit
    errors: int = 0  # (completion, function) evaluations that raised, or a worker died on
    worker_restarts: int = 0
    unparsable_golds: int = 0  # completions whose gold did not parse
    seconds: float = 0.0
    failed_rows: list[int] = field(default_factory=list)  # rows with a timeout or error

    def metrics(self) -> dict[str, float]:
        """Means for logging: ``reward``, ``rewards/<name>`` and the counters."""
        out = {"reward": _mean(self.total)}
        out.update({f"rewards/{name}": _mean(vals) for name, vals in self.rewards.items()})
        for counter in ("timeouts", "errors", "worker_restarts", "unparsable_golds", "seconds"):
            out[f"rewards/{counter}"] = float(getattr(self, counter))
        return out


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def normalize_config(
    reward_funcs: Sequence[str] | Mapping[str, float],
    reward_weights: Sequence[float] | None = None,
    reward_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[RewardConfig, tuple[float, ...]]:
    """Check a trainer-style reward config and return (config, weights).

    ``reward_funcs`` is a list of names (weights default to 1.0) or a {name: weight} mapping.
    ``reward_params`` may hold entries for functions not in use (one config for all runs),
    but every entry must name a known function with known parameters.
    """
    if isinstance(reward_funcs, Mapping):
        if reward_weights is not None:
            raise ValueError("give weights either in the reward_funcs mapping or as reward_weights")
        names, weights = list(reward_funcs), [float(w) for w in reward_funcs.values()]
    else:
        names = list(reward_funcs)
        weights = [1.0] * len(names) if reward_weights is None else [float(w) for w in reward_weights]
    if not names:
        raise ValueError("no reward functions given")
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} reward functions but {len(weights)} weights")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate reward functions in {names}")
    params = {k: dict(v) for k, v in (reward_params or {}).items()}
    for name in dict.fromkeys([*names, *params]):  # unused ones too; custom ones get imported
        get_reward_function(name, **params.get(name, {}))  # raises on an unknown name or parameter
    config = tuple((name, params.get(name, {})) for name in names)
    return config, tuple(weights)


class RewardSet:
    """Bound reward functions plus weights; scores rows and combines them into a ScoreResult."""

    def __init__(self, config: RewardConfig, weights: Sequence[float]):
        self.weights = tuple(weights)
        self.rewards: list[BoundReward] = [get_reward_function(name, **params) for name, params in config]
        self.uses_gold = any(r.spec.uses_gold for r in self.rewards)

    def score_row(self, completion: str, solution: str) -> RowResult:
        """Run every function's per-row phase on one completion; never raises."""
        values: list[Any] = []
        for reward in self.rewards:
            if reward.spec.uses_length:  # computed from the token counts in combine
                values.append(0.0)
                continue
            try:
                values.append(reward.row(completion, solution))
            except MATH_VERIFY_ERRORS:  # one bad completion must not take the batch down
                logger.debug("reward %s raised", reward.name, exc_info=True)
                values.append(None)
        return RowResult(tuple(values), self.uses_gold and not gold_parses(solution))  # gold_parses never raises

    def score_in_process(
        self, completions: Sequence[str], solutions: Sequence[str], num_generations: int,
        lengths: Sequence[int] | None = None,
    ) -> ScoreResult:
        """Score a whole batch in this process: score_row on each row, then combine."""
        check_batch(completions, solutions, num_generations)
        start = time.perf_counter()
        rows = [self.score_row(c, s) for c, s in zip(completions, solutions)]
        return self.combine(completions, solutions, rows, num_generations, seconds=time.perf_counter() - start,
                            lengths=lengths)

    def combine(
        self,
        completions: Sequence[str],
        solutions: Sequence[str],
        rows: Sequence[RowResult | None],
        num_generations: int,
        *,
        timed_out: Sequence[int] = (),
        lost: Sequence[int] = (),
        worker_restarts: int = 0,
        seconds: float = 0.0,
        lengths: Sequence[int] | None = None,
    ) -> ScoreResult:
        """Group phases, zeros for failed rows, weighted sum and counters.

        ``rows[i]`` is None for a row that timed out (listed in ``timed_out``) or whose worker
        died (listed in ``lost``): it scores 0 in the rewards that check the answer, while the
        built-in ones that never look at the gold (format, tag_count, reasoning_steps,
        repetition_penalty: string counts, no math-verify) are scored here. So a timeout costs
        only what the original's math-verify timeout cost, not the format reward too.
        Token-count rewards (``soft_overlong``) come from ``lengths`` (completion token counts),
        for every row.
        """
        n = len(completions)
        errors = len(lost)
        failed = set(timed_out) | set(lost)
        per_func: dict[str, list[float]] = {}
        for k, reward in enumerate(self.rewards):
            if reward.spec.uses_length:
                per_func[reward.name] = reward.from_lengths(lengths, n)
                continue
            raw = [None if r is None else r.values[k] for r in rows]
            if gold_free(reward):
                raw = [reward.row(completions[i], "") if r is None else v for i, (r, v) in enumerate(zip(rows, raw))]
            bad = {i for i, v in enumerate(raw) if v is None}  # includes rows lost whole
            errors += sum(rows[i] is not None for i in bad)
            failed |= bad
            out = [0.0] * n
            for start in range(0, n, num_generations):
                idx = range(start, min(start + num_generations, n))
                # A failed row enters a group phase as False (a wrong answer), then scores 0.
                vals = [False if raw[i] is None else raw[i] for i in idx]
                try:
                    group = reward.group([completions[i] for i in idx], vals)
                    for i, v in zip(idx, group):
                        out[i] = 0.0 if i in bad else float(v)
                except MATH_VERIFY_ERRORS:
                    logger.warning("reward %s failed on a group", reward.name, exc_info=True)
                    errors += len(idx)
                    failed.update(idx)
            per_func[reward.name] = out
        total = [sum(w * per_func[r.name][i] for w, r in zip(self.weights, self.rewards)) for i in range(n)]
        unparsable = [sol for sol, row in zip(solutions, rows) if row is not None and row.gold_unparsable]
        for sol in unparsable:
            log_unparsable_gold(sol)
        return ScoreResult(
            rewards=per_func,
            total=total,
            weights={r.name: w for r, w in zip(self.rewards, self.weights)},
            timeouts=len(timed_out),
            errors=errors,
            worker_restarts=worker_restarts,
            unparsable_golds=len(unparsable),
            seconds=seconds,
            failed_rows=sorted(failed),
        )


def gold_free(reward: BoundReward) -> bool:
    """A built-in reward that reads only the completion (cheap string work, safe in the caller)."""
    return not reward.spec.uses_gold and REWARD_FUNCTIONS.get(reward.name) is reward.spec


def check_batch(completions: Sequence[str], solutions: Sequence[str], num_generations: int) -> None:
    """Validate a batch: strings, equal lengths, whole groups."""
    if len(completions) != len(solutions):
        raise ValueError(f"{len(completions)} completions but {len(solutions)} solutions")
    for kind, texts in (("completion", completions), ("solution", solutions)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            hint = " (answer-only rows: use gold_from_row)" if kind == "solution" else ""
            raise ValueError(f"{kind} {bad} is {type(texts[bad]).__name__}, not str{hint}")
    if num_generations < 1 or len(completions) % num_generations:
        raise ValueError(
            f"num_generations={num_generations} must be >= 1 and divide the batch ({len(completions)})"
        )


def score_batch(
    completions: Sequence[str],
    solutions: Sequence[str],
    num_generations: int = 1,
    reward_funcs: Sequence[str] | Mapping[str, float] = ("format", "accuracy"),
    reward_weights: Sequence[float] | None = None,
    reward_params: Mapping[str, Mapping[str, Any]] | None = None,
    lengths: Sequence[int] | None = None,
) -> ScoreResult:
    """Score a batch in this process (no per-completion timeout; same logic as the pool).

    ``lengths``: completion token counts, needed by token-count rewards (``soft_overlong``)."""
    rset = RewardSet(*normalize_config(reward_funcs, reward_weights, reward_params))
    return rset.score_in_process(completions, solutions, num_generations, lengths)
