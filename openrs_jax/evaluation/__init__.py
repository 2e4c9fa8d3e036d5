"""Benchmark evaluation with the paper's scoring (docs/recipe.md section Evaluation).

- `evaluate_tasks(sampler, params, tokenizer, tasks, ...)`: what the trainer calls every N steps.
- `python -m openrs_jax.evaluate`: the command line (model mode and `--completions` mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrs_jax.evaluation.draw import Generation, sampler_generate_fn
from openrs_jax.evaluation.runner import EvalSettings, flat_metrics, format_table, pass_at_1, run_model_eval
from openrs_jax.core.tokenizer import Tokenizer

__all__ = ["EvalSettings", "Generation", "evaluate_tasks", "flat_metrics", "format_table", "pass_at_1"]


def evaluate_tasks(
    sampler: Any,
    params: Any,
    tokenizer: Tokenizer,
    tasks: str | Sequence[str],
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    eos_ids: Sequence[int] | None = None,
    out_dir: str | Path | None = None,
    **settings: Any,
) -> dict[str, dict[str, Any]]:
    """Evaluates `params` on `tasks` with the paper's prompt and scoring; {task: metrics}.

    `settings` are `EvalSettings` fields (num_samples, max_new_tokens, seed, ...; the paper's by
    default). Each task's entry has "accuracy" (pass@1 in [0, 1], mean over `num_samples` samples
    per problem), "stderr", "n", "k" and the settings. `limit` keeps the first rows of each task;
    `out_dir` (optional) receives details_<task>.jsonl and results.json and makes reruns resume.
    `eos_ids` defaults to the tokenizer's EOS. `flat_metrics(result)` gives log-ready scalars.
    """
    from openrs_jax.core.sampling import SamplingParams

    s = EvalSettings(**settings)
    generate = sampler_generate_fn(sampler, params, SamplingParams(
        temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
        eos_ids=tuple(eos_ids or (tokenizer.eos_id,)), pad_id=tokenizer.pad_id,
    ))
    return run_model_eval(generate, tokenizer, tasks, s, data_dir=data_dir, limit=limit, out_dir=out_dir,
                          progress=False)
