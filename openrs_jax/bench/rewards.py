"""Reward scoring throughput: score N synthetic completions of about C characters with a worker pool.

    python -m openrs_jax.bench rewards --num_completions 1000 --num_workers 2 --chars 3000 --out rewards.json

Completions are generated (no data files needed): reasoning text with inline LaTeX, a think
block and a boxed final answer that is, half the time, an equivalent form of the gold
(fraction vs decimal, radicals, intervals, tuples) and otherwise a wrong value.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

from openrs_jax.files import atomic_write_json
from openrs_jax.recipe.rewards.batch import score_batch
from openrs_jax.recipe.rewards.registry import REWARD_FUNCTIONS
from openrs_jax.recipe.rewards.scorer import RewardScorer

# The rewards computed from the text (token-count ones such as soft_overlong cost nothing).
TEXT_REWARDS = tuple(name for name, spec in REWARD_FUNCTIONS.items() if not spec.uses_length)

def _answer_forms(rng: random.Random) -> tuple[str, str, str]:
    """(gold LaTeX, an equivalent form, a wrong form) with fresh numbers, so that parses are
    not served from math-verify's small internal caches (real answers vary too)."""
    a, b = rng.randint(1, 40), rng.randint(41, 90)
    kind = rng.randrange(7)
    if kind == 0:
        return f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}", f"\\frac{{{a + 1}}}{{{b}}}"
    if kind == 1:
        return f"-\\frac{{{a}}}{{4}}", f"{-a / 4}", f"\\frac{{{a}}}{{4}}"
    if kind == 2:
        r = rng.choice((2, 3, 5, 7))
        return f"{a}\\sqrt{{{r}}}", f"\\sqrt{{{a * a * r}}}", f"{a + 1}\\sqrt{{{r}}}"
    if kind == 3:
        return f"({a}, {b}]", f"({a},{b}]", f"[{a},{b}]"
    if kind == 4:
        return f"\\left( {a}, \\frac{{\\pi}}{{{b}}} \\right)", f"({a}, \\frac{{\\pi}}{{{b}}})", f"({a}, \\pi)"
    if kind == 5:
        return f"{a * b}", f"{a * b}", f"{a * b + 1}"
    return f"x^2 + {2 * a}x + {a * a}", f"(x+{a})^2", f"x^2 + {a * a}"


_SENTENCES = [
    "First, we rewrite the equation as $x^2 + {a}x - {b} = 0$ and look for integer roots.",
    "Next, substituting $y = {a}$ gives $\\frac{{{b}}}{{{a}}} + y = {c}$, which we simplify.",
    "Step {a}: we compute $\\sqrt{{{b}}} \\approx {c}.5$ and compare it with the bound.",
    "Wait, let me double-check the arithmetic: ${a} \\times {b} = {c}$, so the sum is consistent.",
    "So the area is $\\frac{{1}}{{2}} \\cdot {a} \\cdot {b}$, and the perimeter is ${c}$.",
    "Hmm, maybe I should consider the case $n = {a}$ separately, since then $n^2 = {b}$.",
    "Finally, the probability is $\\frac{{{a}}}{{{b}}}$ because each outcome is equally likely.",
]


def make_completion(rng: random.Random, chars: int, answer: str) -> str:
    """Reasoning text of about ``chars`` characters ending with a think tag and a boxed answer."""
    parts: list[str] = []
    size = 0
    tail = f"\n</think>\n\nThe final answer is $\\boxed{{{answer}}}$."
    while size < chars - len(tail):
        s = rng.choice(_SENTENCES).format(a=rng.randint(2, 99), b=rng.randint(2, 999), c=rng.randint(2, 99))
        sep = "\n\n" if rng.random() < 0.2 else " "
        parts.append(s + sep)
        size += len(s) + len(sep)
    return "".join(parts) + tail


def make_batch(num_completions: int, chars: int, num_generations: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Synthetic (completions, solutions): groups of num_generations share a gold."""
    rng = random.Random(seed)
    completions, solutions = [], []
    for i in range(num_completions):
        if i % num_generations == 0:
            gold, same, wrong = _answer_forms(rng)
        completions.append(make_completion(rng, chars, same if rng.random() < 0.5 else wrong))
        solutions.append(f"So the answer is $\\boxed{{{gold}}}$.")
    return completions, solutions


def _cpu_seconds(pids: list[int | None]) -> float | None:
    """User + system CPU time of processes (Linux /proc); None where unavailable."""
    total = 0.0
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return total


def run_reward_benchmark(
    num_completions: int = 1000,
    num_workers: int = 2,
    chars: int = 3000,
    out: str | Path | None = None,
    *,
    reward_funcs: tuple[str, ...] = tuple(TEXT_REWARDS),
    num_generations: int = 4,
    repeats: int = 3,
    in_process_baseline: bool = True,
) -> dict[str, Any]:
    """Time pooled scoring of synthetic batches; returns (and optionally writes) a JSON dict.

    Each repeat scores a fresh batch (new seed: no warm caches). Worker start-up is timed
    apart (workers live for the whole run). The baseline scores the first batch in this
    process, for comparison with the first pooled repeat.
    """
    batches = [make_batch(num_completions, chars, num_generations, seed) for seed in range(repeats)]
    result: dict[str, Any] = {
        "num_completions": num_completions,
        "mean_chars": sum(map(len, batches[0][0])) / num_completions,
        "num_workers": num_workers,
        "num_generations": num_generations,
        "reward_funcs": list(reward_funcs),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_avg_1m_before": os.getloadavg()[0],  # other work on the machine skews the timings
    }
    t0 = time.perf_counter()
    seconds, cpu, failures = [], [], 0
    with RewardScorer(list(reward_funcs), num_workers=num_workers, timeout_s=30.0) as scorer:
        scorer.score(["warm-up"] * num_generations, ["$1$"] * num_generations, num_generations)
        result["startup_s"] = time.perf_counter() - t0
        for completions, solutions in batches:
            cpu0 = _cpu_seconds(scorer.worker_pids)
            scored = scorer.score(completions, solutions, num_generations)
            cpu1 = _cpu_seconds(scorer.worker_pids)
            seconds.append(scored.seconds)
            cpu.append(None if cpu0 is None or cpu1 is None or scored.worker_restarts else cpu1 - cpu0)
            failures += scored.timeouts + scored.errors + scored.worker_restarts
            if len(seconds) == 1:
                first = scored
    median = statistics.median(seconds)
    # CPU time is what a machine with free cores would see: wall time here depends on the load.
    result.update(
        score_s=seconds,
        worker_cpu_s=cpu,
        median_score_s=median,
        completions_per_s=num_completions / median,
        accuracy_mean=sum(first.rewards.get("accuracy", [0.0])) / num_completions,
        timeouts_errors_restarts=failures,
    )
    if in_process_baseline:
        cpu0 = time.process_time()
        base = score_batch(*batches[0], num_generations, list(reward_funcs))
        result["in_process_first_batch_s"] = base.seconds
        result["in_process_first_batch_cpu_s"] = time.process_time() - cpu0
        result["same_as_in_process"] = base.total == first.total
    result["load_avg_1m_after"] = os.getloadavg()[0]
    if out is not None:
        atomic_write_json(out, result)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``python -m openrs_jax.bench rewards``.

    Flags use underscores like every other command; the dashed spellings of earlier versions
    (``--num-completions``) still work without being listed.
    """
    from openrs_jax.cli import add_hidden_alias

    flags = [
        p.add_argument("--num_completions", type=int, default=1000, help="completions per timed batch"),
        p.add_argument("--num_workers", type=int, default=2, help="scoring worker processes"),
        p.add_argument("--chars", type=int, default=3000, help="characters per completion, about"),
        p.add_argument("--num_generations", type=int, default=4, help="completions per prompt (group size)"),
        p.add_argument("--reward_funcs", default=",".join(TEXT_REWARDS), help="comma-separated names"),
        p.add_argument("--repeats", type=int, default=3, help="fresh batches to time"),
        p.add_argument("--no_baseline", action="store_true", help="skip the single-process timing"),
    ]
    for action in flags:
        if "_" in action.option_strings[0]:
            add_hidden_alias(p, action.option_strings[0].replace("_", "-"), action)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark from parsed options; returns the result dict (the dispatcher writes it)."""
    return run_reward_benchmark(
        args.num_completions,
        args.num_workers,
        args.chars,
        reward_funcs=tuple(args.reward_funcs.split(",")),
        num_generations=args.num_generations,
        repeats=args.repeats,
        in_process_baseline=not args.no_baseline,
    )

