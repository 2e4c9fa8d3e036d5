"""DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, section 3.2).

A group whose rewards are all equal has zero advantage everywhere: it adds no policy
gradient, only dilutes the step. With `dynamic_sampling` on, the trainer drops such groups and
draws further rounds of `prompts_per_step` prompts (rolled out and scored like the first)
until the step holds `prompts_per_step` informative groups, or `dynamic_sampling_max_rounds`
extra rounds ran. Informative groups beyond the step's need are discarded; when the cap is
reached first, equal-reward groups fill the step up (in draw order), so the update keeps its
shape. Everything is deterministic given the data order and the round's sampling key, and the
extra prompts advance the data order saved in checkpoints: resuming redraws the same prompts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

from openrs_jax.recipe.rewards.batch import ScoreResult
from openrs_jax.core.sampling import SampleOutput

# Rewards of a group that differ by no more than this count as equal (no signal).
EQUAL_REWARD_TOL = 1e-6


@dataclasses.dataclass
class Rollout:
    """One batch of sampled and scored groups (rows group-major, `num_generations` per prompt)."""

    examples: list[Any]
    out: SampleOutput
    scores: ScoreResult


def check_dynamic_sampling(enabled: bool, max_rounds: int) -> None:
    """Raises `ValueError` for a cap that is not a non-negative whole number."""
    if not isinstance(max_rounds, int) or max_rounds < 0:
        raise ValueError(
            f"dynamic_sampling_max_rounds={max_rounds!r} must be a whole number >= 0 "
            "(extra rollout rounds per step when too many groups have equal rewards)"
        )


def informative_groups(rewards: Sequence[float], num_generations: int) -> np.ndarray:
    """[groups] bool: True where a group's rewards are not all equal."""
    r = np.asarray(rewards, np.float64).reshape(-1, num_generations)
    return (r.max(axis=1) - r.min(axis=1)) > EQUAL_REWARD_TOL


def select_groups(rollouts: Sequence[Rollout], picks: Sequence[tuple[int, int]], num_generations: int,
                  pad_id: int) -> Rollout:
    """The groups `picks` = [(rollout index, group index), ...], in that order, as one Rollout."""
    g = num_generations
    groups = [(k, slice(j * g, (j + 1) * g)) for k, j in picks]
    rows = [(k, i) for k, span in groups for i in range(span.start, span.stop)]
    width = max(r.out.prompt_ids.shape[1] for r in rollouts)

    def take(field: str, pad_value: Any = None) -> np.ndarray:
        arrays = [getattr(r.out, field) for r in rollouts]
        if pad_value is not None:  # prompts are left-padded to the widest (positions come from the mask)
            arrays = [np.pad(a, ((0, 0), (width - a.shape[1], 0)), constant_values=pad_value) for a in arrays]
        return np.concatenate([arrays[k][span] for k, span in groups], axis=0)

    first = rollouts[0].out
    out = SampleOutput(
        prompt_ids=take("prompt_ids", pad_id), prompt_mask=take("prompt_mask", False),
        **{field: take(field) for field in ("completion_ids", "completion_mask", "lengths", "truncated", "logprobs")},
        num_prompts=len(picks),
        num_samples=first.num_samples,
        timings={key: sum(r.out.timings.get(key, 0.0) for r in rollouts) for key in first.timings},
    )
    scores = rollouts[0].scores
    failed = [{int(i) for i in r.scores.failed_rows} for r in rollouts]
    selected = dataclasses.replace(
        scores,
        rewards={name: [rollouts[k].scores.rewards[name][i] for k, i in rows] for name in scores.rewards},
        total=[rollouts[k].scores.total[i] for k, i in rows],
        failed_rows=[n for n, (k, i) in enumerate(rows) if i in failed[k]],
        **{count: sum(getattr(r.scores, count) for r in rollouts)
           for count in ("timeouts", "errors", "worker_restarts", "unparsable_golds", "seconds")},
    )
    examples = [rollouts[k].examples[j] for k, j in picks]
    return Rollout(examples, out, selected)


def fill_step(
    first: Rollout,
    draw_more: Callable[[int], Rollout],
    *,
    prompts_per_step: int,
    num_generations: int,
    max_rounds: int,
    pad_id: int,
) -> tuple[Rollout, dict[str, float]]:
    """The step's groups: informative ones first drawn, extra rounds `draw_more(round)` (1, 2,
    ...) while fewer than `prompts_per_step`, equal-reward fillers if the cap is reached.

    Metrics: `dynamic_sampling/dropped_groups` (equal-reward groups left out),
    `/extra_rollouts` (rounds beyond the first), `/filled_groups` (equal-reward groups kept to
    fill the step), `/surplus_groups` (informative groups discarded), and `/all/reward`,
    `/all/rewards/<name>`: reward means over every completion drawn this step (the policy's
    unfiltered performance; `reward` itself is then the trained batch's).
    """
    rollouts = [first]
    informative: list[tuple[int, int]] = []
    equal: list[tuple[int, int]] = []
    while True:
        k = len(rollouts) - 1
        for j, ok in enumerate(informative_groups(rollouts[k].scores.total, num_generations)):
            (informative if ok else equal).append((k, j))
        if len(informative) >= prompts_per_step or k >= max_rounds:
            break
        rollouts.append(draw_more(k + 1))
    chosen = informative[:prompts_per_step]
    fillers = equal[: prompts_per_step - len(chosen)]
    picks = sorted(chosen + fillers)  # draw order
    everything = select_groups(
        rollouts, [(k, j) for k, r in enumerate(rollouts) for j in range(r.out.num_prompts)], num_generations, pad_id
    )
    metrics = {
        "dynamic_sampling/dropped_groups": float(len(equal) - len(fillers)),
        "dynamic_sampling/extra_rollouts": float(len(rollouts) - 1),
        "dynamic_sampling/filled_groups": float(len(fillers)),
        "dynamic_sampling/surplus_groups": float(len(informative) - len(chosen)),
        **{f"dynamic_sampling/all/{key}": value for key, value in everything.scores.metrics().items()
           if key == "reward" or (key.startswith("rewards/") and key[len("rewards/"):] in everything.scores.rewards)},
    }
    return select_groups(rollouts, picks, num_generations, pad_id), metrics
