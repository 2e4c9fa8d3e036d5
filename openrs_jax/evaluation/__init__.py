"""Benchmark evaluation with the paper's scoring (docs/recipe.md section Evaluation).

- `evaluate_tasks(sampler, params, tokenizer, tasks, ...)`: what the trainer calls every N steps.
- `python -m openrs_jax.evaluate`: the command line (model mode and `--completions` mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrs_jax.evaluation.runner import (
    EvalSettings,
    GenerateFn,
    Generation,
    flat_metrics,
    format_table,
    pass_at_1,
    run_completions_eval,
    run_model_eval,
)
from openrs_jax.evaluation.scoring import prepare_gold, score_completion
from openrs_jax.evaluation.tasks import PAPER_TASKS, TASKS, TaskSpec, load_task
from openrs_jax.core.tokenizer import Tokenizer

__all__ = [
    "EvalSettings", "GenerateFn", "Generation", "PAPER_TASKS", "TASKS", "TaskSpec", "evaluate_tasks",
    "flat_metrics", "format_table", "load_task", "pass_at_1", "prepare_gold", "run_completions_eval",
    "run_model_eval", "sampler_generate_fn", "score_completion",
]


def sampler_generate_fn(
    sampler: Any, params: Any, *, max_new_tokens: int, temperature: float, top_p: float,
    eos_ids: Sequence[int], pad_id: int,
) -> GenerateFn:
    """Adapts the project's `Sampler` to the evaluator's `GenerateFn` (both are prompt-major)."""
    from openrs_jax.core.sampling import SamplingParams

    sampling = SamplingParams(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        eos_ids=tuple(eos_ids), pad_id=pad_id,
    )

    def generate(prompts: list[list[int]], num_samples: int, seed: int) -> list[Generation]:
        out = sampler.generate(params, prompts, num_samples, sampling, seed)
        return [Generation(ids, bool(t)) for ids, t in zip(out.completions(), out.truncated)]

    return generate


def evaluate_tasks(
    sampler: Any,
    params: Any,
    tokenizer: Tokenizer,
    tasks: str | Sequence[str],
    *,
    data_dir: str | Path | None = None,
    num_samples: int = 1,
    max_new_tokens: int = 32768,
    temperature: float = 0.6,
    top_p: float = 0.95,
    seed: int = 0,
    limit: int | None = None,
    eos_ids: Sequence[int] | None = None,
    batch_size: int = 64,
    scoring: str = "paper",
    out_dir: str | Path | None = None,
    model: str | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluates `params` on `tasks` with the paper's prompt and scoring; {task: metrics}.

    Each task's entry has "accuracy" (pass@1 in [0, 1], mean over `num_samples` samples per
    problem), "stderr", "n", "k" and the settings. `limit` keeps the first rows of each task;
    `out_dir` (optional) receives details_<task>.jsonl and results.json and makes reruns resume.
    `eos_ids` defaults to the tokenizer's EOS. `flat_metrics(result)` gives log-ready scalars.
    """
    settings = EvalSettings(
        num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        seed=seed, scoring=scoring, batch_size=batch_size,  # type: ignore[arg-type]
    )
    generate = sampler_generate_fn(
        sampler, params, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        eos_ids=eos_ids or (tokenizer.eos_id,), pad_id=tokenizer.pad_id,
    )
    return run_model_eval(generate, tokenizer, tasks, settings, data_dir=data_dir, limit=limit,
                          out_dir=out_dir, model=model, progress=progress)
