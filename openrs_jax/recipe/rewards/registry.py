"""Reward functions by name, with parameter validation, and custom ones by import path.

A reward is split in two phases so that the scorer can run the expensive part in worker
processes, one completion at a time:
- ``row(completion, solution)``: per completion (for most rewards this is the reward);
- ``group(completions, row_values)``: an optional combine over one group of num_generations
  completions (only ``length`` has one).
``get_reward_function`` chains both, so the in-process and pooled paths share one logic.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openrs_jax.recipe.rewards import functions as F
from openrs_jax.recipe.rewards.overlong import check_soft_overlong, soft_overlong_reward

RowFn = Callable[..., Any]
GroupFn = Callable[[list[str], list[Any]], list[float]]
RewardFn = Callable[..., list[float]]


@dataclass(frozen=True)
class RewardSpec:
    """A named reward: its per-row function, optional group combine and parameter check."""

    name: str
    row: RowFn
    group: GroupFn | None = None
    uses_gold: bool = False
    check: Callable[..., None] | None = None
    description: str = ""
    # True: ``row`` is ``f(num_tokens, **params)`` on the completion's token count, computed in
    # the caller from the sampler's lengths (cheap, and the text does not hold the count).
    uses_length: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        """Parameter names and their defaults (the keyword-only arguments of ``row``)."""
        params = inspect.signature(self.row).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


REWARD_FUNCTIONS: dict[str, RewardSpec] = {
    spec.name: spec
    for spec in (
        RewardSpec("accuracy", F.accuracy_reward, uses_gold=True, description="1 if the answer verifies"),
        RewardSpec("format", F.format_reward, description="exactly one \\n</think>\\n"),
        RewardSpec("tag_count", F.tag_count_reward, description="0.5 per think tag present once"),
        RewardSpec(
            "cosine", F.cosine_reward, uses_gold=True, check=F.check_cosine,
            description="correctness scaled by cos(pi L / max_len)",
        ),
        RewardSpec("reasoning_steps", F.reasoning_steps_reward, description="min(1, steps / 3)"),
        RewardSpec(
            "length", F.length_correct, group=F.length_group_rewards, uses_gold=True,
            description="Kimi 1.5 length reward within a group",
        ),
        RewardSpec(
            "repetition_penalty", F.repetition_penalty_reward, check=F.check_repetition_penalty,
            description="word n-gram repetition times max_penalty",
        ),
        RewardSpec(
            "soft_overlong", soft_overlong_reward, check=check_soft_overlong, uses_length=True,
            description="DAPO: 0, then down to -1 over the last cache_len tokens before max_len",
        ),
    )
}


def _custom_row(fn: RewardFn, completion: str, solution: str, **params: Any) -> Any:
    return fn([completion], [solution], **params)[0]


def _custom_spec(path: str) -> RewardSpec:
    """Import ``"package.module:function"``; the function is ``f(completions, solutions, **p) -> list``."""
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import reward function {path!r}: {err}") from err
    if not callable(fn):
        raise ValueError(f"reward function {path!r} is not callable")
    sig = inspect.signature(fn)
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    allowed = [p.name for p in list(sig.parameters.values())[2:] if p.kind in kinds]

    def check(**params: Any) -> None:
        unknown = sorted(set(params) - set(allowed))
        if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
            raise ValueError(f"unknown parameter(s) {unknown} for reward {path!r}; valid: {allowed}")

    return RewardSpec(path, functools.partial(_custom_row, fn), check=check, description=f"custom {path}")


@dataclass(frozen=True)
class BoundReward:
    """A reward with its parameters bound and checked; picklable config via ``name``/``params``."""

    spec: RewardSpec
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def row(self, completion: str, solution: str) -> Any:
        """The per-completion phase (the reward itself, as a float, unless there is a group phase)."""
        if self.spec.uses_length:
            raise ValueError(f"reward {self.name!r} counts tokens: use from_lengths")
        value = self.spec.row(completion, solution, **self.params)
        return value if self.spec.group is not None else float(value)

    def group(self, completions: list[str], values: list[Any]) -> list[float]:
        """The per-group phase: identity unless the spec combines a group."""
        return list(values) if self.spec.group is None else self.spec.group(completions, values)

    def from_lengths(self, lengths: Sequence[int] | None, count: int | None = None) -> list[float]:
        """A token-count reward (``spec.uses_length``) of completions with these token counts
        (``count``: how many completions there are, when known)."""
        if lengths is None or count not in (None, len(lengths)):
            raise ValueError(f"reward {self.name!r} counts tokens: pass one token length per completion")
        return [float(self.spec.row(int(n), **self.params)) for n in lengths]

    def __call__(
        self, completions: list[str], solutions: list[str] | None = None, lengths: Sequence[int] | None = None
    ) -> list[float]:
        """Score a list of completions (for ``length``: exactly one group; for token-count
        rewards pass ``lengths``)."""
        if self.spec.uses_length:
            return self.from_lengths(lengths, len(completions))
        if solutions is None:
            if self.spec.uses_gold:
                raise ValueError(f"reward {self.name!r} needs the gold solutions")
            solutions = [""] * len(completions)
        if len(solutions) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(solutions)} solutions")
        return self.group(completions, [self.row(c, s) for c, s in zip(completions, solutions)])


def get_reward_function(name: str, /, **params: Any) -> BoundReward:
    """``f(completions, solutions) -> list[float]`` for a reward name and its parameters.

    Names: see ``REWARD_FUNCTIONS``; ``"package.module:function"`` loads a custom reward with
    the same signature. For ``length`` one call scores one group. Unknown names and parameters
    raise ValueError listing the valid ones.
    """
    if name in REWARD_FUNCTIONS:
        spec = REWARD_FUNCTIONS[name]
        unknown = sorted(set(params) - set(spec.defaults))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for reward {name!r}; "
                f"valid: {', '.join(f'{k}={v!r}' for k, v in spec.defaults.items()) or 'none'}"
            )
    elif ":" in name:
        spec = _custom_spec(name)
    else:
        raise ValueError(
            f"unknown reward function {name!r}; valid: {', '.join(sorted(REWARD_FUNCTIONS))} "
            "(or a custom one as 'package.module:function')"
        )
    if spec.check is not None:
        spec.check(**params)
    return BoundReward(spec, params)
