"""Difficulty filter: each problem's pass rate under a model, and a band of pass rates to keep.

For every problem, `num_samples` completions are drawn with the project's sampler (the
training prompt: chat template + system prompt) and scored with the accuracy reward; the pass
rate is the fraction judged correct. GRPO learns nothing from a problem whose G completions
all score the same, so the paper dropped the problems its model always solved (band `[0,1)`,
the default); `(0,1)` also drops those it never solves.

Pass rates are appended to OUTPUT_DIR/pass_rates.jsonl as soon as a problem's samples are all
done: a rerun into the same folder samples only the problems still missing, and `--pass_rates FILE` reuses the rates
of an earlier run (no model needed when they cover every problem) to choose another band
without sampling again. A problem is identified by a digest of its problem and gold texts.
The sampling settings are kept in OUTPUT_DIR/pass_rates_settings.json; a rerun with other
settings into the same folder is refused, as rates drawn differently should not be mixed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrs_jax.cli import add_queue_arguments
from openrs_jax.evaluation.draw import GenerateFn, StreamGenerate, check_same_settings, load_decoder, static_stream
from openrs_jax.curation.io import read_rows, write_dataset
from openrs_jax.files import append_jsonl, atomic_write_json, read_keyed_jsonl, write_jsonl
from openrs_jax.core.model_paths import MODEL_HELP
from openrs_jax.recipe.rewards.gold import gold_from_row, gold_parses

log = logging.getLogger("openrs_jax.curate")

PASS_RATES_FILE = "pass_rates.jsonl"
SETTINGS_FILE = "pass_rates_settings.json"

# (completions, golds, samples per prompt) -> accuracy per completion (1.0 = correct).
ScoreFn = Callable[[list[str], list[str], int], list[float]]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The difficulty step's options (model, sampling, band, reuse)."""
    p.add_argument("--model", help=f"{MODEL_HELP} (not needed when --pass_rates covers every problem)")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model's, or the training run's)")
    p.add_argument("--num_samples", type=int, default=8, help="completions per problem (default 8)")
    add_queue_arguments(p, 16, "problems")
    p.add_argument("--max_new_tokens", type=int, default=3584, help="default 3584 (the recipe's Exp2/3 limit)")
    p.add_argument("--temperature", type=float, default=0.7, help="default 0.7 (the recipe's rollouts)")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0, help="0 = off")
    p.add_argument("--system_prompt", default="recipe",
                   help="recipe (the training default), exp3, none, or the text itself")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                   help="compute dtype (auto: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (and random weights of builtin:tiny)")
    p.add_argument("--band", default="[0,1)",
                   help="pass rates to keep, as an interval: '[0,1)' drops always-solved problems (default), "
                        "'(0,1)' also never-solved ones, '[0,1]' keeps all")
    p.add_argument("--pass_rates", metavar="FILE", help="reuse the pass rates in FILE (a pass_rates.jsonl)")
    p.add_argument("--reward_workers", type=int, default=2,
                   help="reward scoring processes (0 = in this process; default 2)")
    p.add_argument("--reward_timeout_s", type=float, default=30.0, help="per-completion scoring limit")


# ----------------------------------------------------------------------------- bands


@dataclass(frozen=True)
class Band:
    """An interval of pass rates, closed or open at each end."""

    low: float
    high: float
    low_closed: bool = True
    high_closed: bool = True

    @classmethod
    def parse(cls, text: str) -> Band:
        """'[0,1)', '(0,1)', '[0.2, 0.8]' ..."""
        m = re.fullmatch(r"\s*([\[(])\s*([0-9.]+)\s*,\s*([0-9.]+)\s*([\])])\s*", text)
        if not m:
            raise ValueError(f"--band {text!r} is not an interval like '[0,1)' or '(0,1)' (quote it in the shell)")
        try:
            low, high = float(m.group(2)), float(m.group(3))
        except ValueError:
            raise ValueError(f"--band {text!r}: the bounds must be numbers") from None
        band = cls(low, high, m.group(1) == "[", m.group(4) == "]")
        if not (0 <= low <= high <= 1) or not any(band.contains(x) for x in (low, high, (low + high) / 2)):
            raise ValueError(f"--band {text!r} holds no pass rate: bounds must satisfy 0 <= low <= high <= 1")
        return band

    def below(self, rate: float) -> bool:
        return rate < self.low or (rate == self.low and not self.low_closed)

    def above(self, rate: float) -> bool:
        return rate > self.high or (rate == self.high and not self.high_closed)

    def contains(self, rate: float) -> bool:
        return not (self.below(rate) or self.above(rate))

    def __str__(self) -> str:
        return f"{'[' if self.low_closed else '('}{self.low:g},{self.high:g}{']' if self.high_closed else ')'}"


# ----------------------------------------------------------------------------- pass-rate files


def problem_key(problem: str, gold: str) -> str:
    """Identifies a problem across runs and files: a digest of its exact problem and gold texts."""
    return hashlib.sha1(f"{problem}\x00{gold}".encode("utf-8")).hexdigest()[:20]


def _pass_rate_key(record: dict[str, Any]) -> str:
    """A pass-rate record's key; raises for a line that is not one (no key, no pass rate in [0, 1])."""
    if not 0 <= float(record["pass_rate"]) <= 1:
        raise ValueError(f"pass_rate {record['pass_rate']} is outside [0, 1]")
    return str(record["key"])


def read_pass_rates(path: str | Path) -> dict[str, dict[str, Any]]:
    """Records by key; a torn last line (an interrupted run) and foreign lines are ignored."""
    return read_keyed_jsonl(path, _pass_rate_key)


# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Problem:
    index: int
    key: str
    problem: str
    gold: str


def pass_rate_record(problem: Problem, texts: list[str], score: ScoreFn) -> dict[str, Any]:
    """A problem's pass rate from its completions, as a pass_rates.jsonl record."""
    rewards = score(texts, [problem.gold] * len(texts), len(texts))
    correct = sum(1 for r in rewards if r >= 1.0)
    return {"key": problem.key, "index": problem.index, "pass_rate": correct / len(texts),
            "num_correct": correct, "num_samples": len(texts)}


def sample_pass_rates(
    todo: Sequence[Problem],
    prompts: Mapping[int, list[int]],
    generate: GenerateFn | StreamGenerate,
    decode: Callable[[list[int]], str],
    score: ScoreFn,
    *,
    stream: bool,
    num_samples: int,
    batch_size: int,
    seed: int,
    append_to: Path,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Pass rates of `todo` (prompt ids by row index in `prompts`), drawn in static batches of
    `batch_size` problems, or with `stream` through the slot engine (a sample depends only on
    (seed, row index, sample)); a problem is scored and appended to `append_to` as soon as its
    last sample finishes."""
    from tqdm import tqdm

    by_index = {p.index: p for p in todo}
    texts: dict[int, dict[int, str]] = {i: {} for i in by_index}
    out: list[dict[str, Any]] = []
    with tqdm(total=len(todo), desc="difficulty", unit="problem", dynamic_ncols=True,
              disable=not show_progress) as bar:
        if stream:
            def on_progress(counts: Mapping[str, int]) -> None:
                bar.set_postfix(samples=counts["requests_done"], tokens=counts["tokens"], refresh=False)

            requests = [(p.index, s) for p in todo for s in range(num_samples)]
            drawn = generate(prompts, requests, seed, on_progress)
        else:
            # The seed follows the batch's first problem, so a fresh run is reproducible.
            batches = [[p.index for p in todo[start: start + batch_size]] for start in range(0, len(todo), batch_size)]
            drawn = static_stream(generate, prompts, {i: range(num_samples) for i in by_index},
                                  ((batch, seed * 1_000_003 + batch[0]) for batch in batches))
        for index, sample, generation in drawn:
            texts[index][sample] = decode(generation.token_ids)
            if len(texts[index]) < num_samples:
                continue
            done = texts.pop(index)
            record = pass_rate_record(by_index[index], [done[s] for s in range(num_samples)], score)
            append_jsonl(append_to, [record])
            out.append(record)
            bar.update(1)
            if not stream:
                bar.set_postfix(mean_pass_rate=f"{sum(r['pass_rate'] for r in out) / len(out):.3f}")
    return out


# ----------------------------------------------------------------------------- the step


def _histogram(rates: Sequence[float]) -> dict[str, int]:
    counts = Counter(round(r, 4) for r in rates)
    return {f"{rate:g}": counts[rate] for rate in sorted(counts)}


def problems_of(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Problem], list[int]]:
    """The rows as problems to sample, and the row numbers whose gold does not parse.

    Every completion of an unparsable gold would score the "unparsable gold" reward (1.0), so
    such rows get no pass rate and are dropped (run the format step first).
    """
    problems: list[Problem] = []
    unparsable: list[int] = []
    for i, row in enumerate(rows):
        try:
            gold = gold_from_row(row)
        except ValueError:  # neither solution nor answer
            gold = ""
        if not gold or not gold_parses(gold):
            unparsable.append(i)
            continue
        text = str(row.get("problem") or "")
        problems.append(Problem(i, problem_key(text, gold), text, gold))
    return problems, unparsable


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The `difficulty` step: pass rates (reused or sampled), the band, outputs; returns stats."""
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("--num_samples and --batch_size must be >= 1")
    band = Band.parse(args.band)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows(args.input, args.split)

    problems, unparsable = problems_of(rows)
    if args.pass_rates and not Path(args.pass_rates).is_file():
        raise ValueError(f"--pass_rates {args.pass_rates} does not exist")
    known = read_pass_rates(args.pass_rates) if args.pass_rates else {}
    reused = sum(p.key in known for p in problems)
    own = output_dir / PASS_RATES_FILE
    resumed_records = read_pass_rates(own)
    resumed = sum(p.key in resumed_records and p.key not in known for p in problems)
    known.update(resumed_records)
    first: dict[str, Problem] = {}
    for p in problems:  # a repeated problem is sampled once
        first.setdefault(p.key, p)
    todo = [p for p in first.values() if p.key not in known]

    sampled: list[dict[str, Any]] = []
    if todo:
        if not args.model:
            raise ValueError(f"{len(todo)} of {len(problems)} problems have no pass rate"
                            f"{' in ' + args.pass_rates if args.pass_rates else ''}; give --model to sample them")
        settings = {k: getattr(args, k) for k in ("model", "num_samples", "max_new_tokens", "temperature", "top_p",
                                                  "top_k", "system_prompt", "seed")}
        if own.is_file():  # rates drawn with other settings are not added to those
            check_same_settings(output_dir / SETTINGS_FILE, settings, "pass rates sampled", "use another "
                                f"--output_dir (reusing the old rates with --pass_rates {own} if wanted)")
        atomic_write_json(output_dir / SETTINGS_FILE, settings)
        from openrs_jax.recipe.prompts import SYSTEM_PROMPT, SYSTEM_PROMPT_EXP3, render_prompts_ids
        from openrs_jax.recipe.rewards import RewardScorer

        system_prompt = {"recipe": SYSTEM_PROMPT, "exp3": SYSTEM_PROMPT_EXP3, "none": None}.get(
            args.system_prompt, args.system_prompt)  # or the text itself
        policy, generate, stream = load_decoder(
            args.model, args.tokenizer, dtype=args.dtype, slots=args.slots, prompt_bucket=64, seed=args.seed,
            sampling={k: getattr(args, k) for k in ("temperature", "top_p", "top_k", "max_new_tokens")},
            require_chat_template=True,  # the prompts are rendered with it: say so before the weights are read
        )
        tokenizer = policy.tokenizer
        log.info("sampling %d problems x %d completions (%d reused, %d resumed)",
                 len(todo), args.num_samples, reused, resumed)
        prompts = dict(zip((p.index for p in todo),
                           render_prompts_ids(tokenizer, [p.problem for p in todo], system_prompt)))
        with RewardScorer(["accuracy"], num_workers=args.reward_workers, timeout_s=args.reward_timeout_s) as scorer:
            sampled = sample_pass_rates(
                todo, prompts, generate, lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                lambda texts, golds, k: scorer.score(texts, golds, k).rewards["accuracy"], stream=stream,
                num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed, append_to=own,
                show_progress=not args.no_progress,
            )
        known.update({r["key"]: r for r in sampled})

    # The complete table, in row order, so that this folder's pass_rates.jsonl serves later reuse.
    table = [{**known[p.key], "index": p.index} for p in problems]
    write_jsonl(own, table)
    rate = {r["index"]: float(r["pass_rate"]) for r in table}
    kept = [{**rows[i], "pass_rate": rate[i]} for i in sorted(rate) if band.contains(rate[i])]
    write_dataset(output_dir, kept)
    rates = list(rate.values())
    return {
        "rows_in": len(rows),
        "rows_out": len(kept),
        "band": str(band),
        "dropped": {"below_band": sum(map(band.below, rates)), "above_band": sum(map(band.above, rates)),
                    "unparsable_gold": len(unparsable)},
        "pass_rates": {"sampled": len(sampled), "reused": reused, "resumed": resumed,
                       "mean": sum(rates) / len(rates) if rates else None,
                       "histogram": _histogram(rates)},
        "unparsable_gold_rows": unparsable[:100],
    }
