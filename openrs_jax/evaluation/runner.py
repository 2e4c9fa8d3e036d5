"""Evaluation runs: generate or read completions, score them, write and resume outputs.

An output directory holds, per task, `details_<task>.jsonl` (one line per sample: index, sample,
prompt, completion, prediction, gold, correct, length = completion tokens with the EOS,
truncated = no EOS within max_new_tokens), plus `results.json` and
`eval_config.json` (the settings that produced the samples, written with the first of them, so a
run that stops before any sample leaves nothing to refuse a retry). Details are appended after every
sample, so a rerun into the same directory only
generates the samples that are missing; it refuses to mix samples of different generation
settings, and rescores stored samples when only the scoring mode changed.

pass@1 over K samples: each problem scores the mean of its K samples, the task the mean over
problems; stderr is the standard error of that mean over problems (sample std, ddof=1).
"""

from __future__ import annotations

import functools
import logging
import math
import statistics
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openrs_jax.evaluation.draw import GenerateFn, Generation, StreamGenerate, check_same_settings, static_stream
from openrs_jax.evaluation.scoring import SCORING_MODES, Gold, Scoring, prepare_gold, score_completion
from openrs_jax.evaluation.tasks import TASKS, Problem, TaskSpec, get_task, load_task, parse_task_names
from openrs_jax.files import (
    append_jsonl, atomic_write_json, iter_jsonl, read_json, read_keyed_jsonl, write_jsonl,
)
from openrs_jax.hub import require_hub
from openrs_jax.recipe.prompts import eval_user_prompt, render_prompt
from openrs_jax.core.tokenizer import Tokenizer

log = logging.getLogger("openrs_jax.evaluate")

RESULTS_FILE = "results.json"
OFFLINE_FIX = "give a folder of <task>.jsonl files with --data_dir (eval_data_dir in training)"
CONFIG_FILE = "eval_config.json"
# Settings of a completions file's results that its scorer cannot know: they were used elsewhere.
UNKNOWN_IN_COMPLETIONS = ("max_new_tokens", "temperature", "top_p", "seed")


@dataclass(frozen=True)
class EvalSettings:
    """How samples are drawn and scored. Defaults are the paper's (docs/recipe.md section Evaluation) with K = 1."""

    num_samples: int = 1
    max_new_tokens: int = 32768
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    scoring: Scoring = "paper"
    batch_size: int = 64  # completions per sampler call (prompts x samples)
    # The paper's engine (docs/paper-exact.md): "double" tokenizes the templated prompt with special
    # tokens (a second BOS, as lighteval's vLLM backend did); max_model_length > 0 caps prompt +
    # completion as vLLM's max_model_len did (new tokens <= max_model_length + 1 - prompt tokens).
    bos: str = "single"
    max_model_length: int = 0

    def __post_init__(self) -> None:
        from openrs_jax.core.sampling import SamplingParams
        from openrs_jax.recipe.data import ROLLOUT_BOS, check_choice

        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        # temperature, top_p, max_new_tokens: checked where sampling owns them.
        SamplingParams(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {', '.join(SCORING_MODES)}, got {self.scoring!r}")
        check_choice("bos", self.bos, ROLLOUT_BOS)
        if self.max_model_length < 0:
            raise ValueError(f"max_model_length must be >= 0 (0: no cap), got {self.max_model_length}")

    def new_token_cap(self, prompt_tokens: int) -> int:
        """The most new tokens a prompt of this length gets.

        vLLM 0.7.2 stops a sequence once its length (prompt + output) exceeds max_model_len
        (`seq.get_len() > max_model_len` after each sampled token), so with the paper's
        max_model_len = max_new_tokens = 32,768 the output holds at most 32,769 - prompt tokens.
        """
        if not self.max_model_length:
            return self.max_new_tokens
        return max(1, min(self.max_new_tokens, self.max_model_length + 1 - prompt_tokens))


# ----------------------------------------------------------------------------- outputs on disk


def _check_out_dir(out: str | Path | None, generation: Mapping[str, Any],
                   scoring: str) -> tuple[Path | None, bool, Callable[[], object] | None]:
    """Checks the run's settings against the samples already in `out` (None: no outputs);
    returns the directory, whether stored samples need rescoring, and what writes the settings
    file (once, with the first sample)."""
    if out is None:
        return None, False, None
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG_FILE
    rescore = False
    if any(p.stat().st_size > 0 for p in out_dir.glob("details_*.jsonl")):  # settings bind once samples exist
        stored = check_same_settings(path, generation, "samples generated", "use another --out directory, or "
                                     "delete its details_*.jsonl and eval_config.json", section="generation")
        rescore = stored is not None and stored.get("scoring") != scoring
    record = {"generation": dict(generation), "scoring": scoring}
    return out_dir, rescore, functools.cache(functools.partial(atomic_write_json, path, record))


def _merge_results(out_dir: Path, results: Mapping[str, Any]) -> None:
    """Adds this run's tasks to results.json, keeping other tasks evaluated into the same directory."""
    path = out_dir / RESULTS_FILE
    try:
        merged = read_json(path)
    except (FileNotFoundError, ValueError):  # none yet, or cut short: this run's tasks start it anew
        merged = {}
    atomic_write_json(path, {**merged, **results})


# ----------------------------------------------------------------------------- one task


def pass_at_1(per_problem: Sequence[float]) -> tuple[float, float]:
    """Mean over problems and its standard error (0 for a single problem)."""
    n = len(per_problem)
    if n == 0:
        return float("nan"), float("nan")
    return statistics.fmean(per_problem), statistics.stdev(per_problem) / math.sqrt(n) if n > 1 else 0.0


@dataclass
class TaskRun:
    """The problems of one task, their golds and the samples finished so far."""

    spec: TaskSpec
    problems: list[Problem]
    scoring: Scoring
    records: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None  # details file; None keeps everything in memory
    save_settings: Callable[[], object] | None = None  # writes the settings file, before the first sample
    _golds: dict[int, Gold] = field(default_factory=dict)

    def gold(self, index: int) -> Gold:
        if index not in self._golds:
            self._golds[index] = prepare_gold(
                self.problems[index].gold, self.spec.gold_kind, answer_only=self.spec.answer_only, scoring=self.scoring
            )
        return self._golds[index]

    def load(self, rescore: bool) -> None:
        """Reads finished samples from the details file (a torn last line, from an interrupted
        run, is ignored). Rows beyond this run's problems (a `limit` smaller than before) stay in the file but
        are not counted.
        """
        if self.path is None:
            return
        self.records = read_keyed_jsonl(self.path, lambda rec: (int(rec["index"]), int(rec["sample"])))
        if rescore:
            for rec in self.records.values():
                if self._counted(rec["index"]):
                    rec["correct"], rec["prediction"] = score_completion(rec["completion"], self.gold(rec["index"]))

    def _counted(self, index: int) -> bool:
        return 0 <= index < len(self.problems)

    def record(self, index: int, sample: int, prompt: str, completion: str, length: int | None,
               truncated: bool | None) -> dict[str, Any]:
        correct, prediction = score_completion(completion, self.gold(index))
        rec = {
            "index": index, "sample": sample, "prompt": prompt, "completion": completion,
            "prediction": prediction, "gold": self.problems[index].gold, "correct": correct,
            "length": length, "truncated": truncated,
        }
        self.records[(index, sample)] = rec
        return rec

    def _save(self, write: Callable[[Path, Any], object], records: Any) -> None:
        if self.path is not None:
            if self.save_settings is not None:
                self.save_settings()
            write(self.path, records)

    def append(self, rec: Mapping[str, Any]) -> None:
        """Saves a finished sample at once, so an interrupted run loses none of them."""
        self._save(append_jsonl, [rec])

    def finish(self) -> None:
        """Rewrites the details file sorted by (index, sample)."""
        self._save(write_jsonl, sorted(self.records.values(), key=lambda r: (r["index"], r["sample"])))

    def missing(self, k: int) -> dict[int, list[int]]:
        """Sample numbers still to generate, per problem index."""
        todo = {p.index: [s for s in range(k) if (p.index, s) not in self.records] for p in self.problems}
        return {index: samples for index, samples in todo.items() if samples}

    def metrics(self, k: int) -> dict[str, Any]:
        """pass@1 over the first k samples of every problem that has any."""
        by_problem: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for (index, sample), rec in self.records.items():
            if sample < k and self._counted(index):
                by_problem[index].append(rec)
        per_problem = [sum(bool(r["correct"]) for r in recs) / len(recs) for recs in by_problem.values()]
        accuracy, stderr = pass_at_1(per_problem)
        samples = [r for recs in by_problem.values() for r in recs]
        lengths = [r["length"] for r in samples if r.get("length") is not None]
        truncated = [bool(r["truncated"]) for r in samples if r.get("truncated") is not None]
        return {
            "accuracy": accuracy,
            "stderr": stderr,
            "n": len(per_problem),
            "k": max((len(recs) for recs in by_problem.values()), default=0),
            "samples": len(samples),
            "missing": len(self.problems) - len(per_problem),
            "mean_length": sum(lengths) / len(lengths) if lengths else None,
            "truncated_fraction": sum(truncated) / len(truncated) if truncated else None,
        }


def _stable_seed(*parts: object) -> int:
    # A seed from the run's seed, the task (and the batch); Python's hash() is salted per process.
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def _length_sorted_batches(indices: Sequence[int], ids: Mapping[int, list[int]], size: int) -> list[list[int]]:
    """Indices sorted by prompt length, cut into batches: little padding within a batch."""
    ordered = sorted(indices, key=lambda i: (len(ids[i]), i))
    return [ordered[i: i + size] for i in range(0, len(ordered), size)]


def generate_task(
    run: TaskRun, generate: GenerateFn | StreamGenerate, tokenizer: Tokenizer, settings: EvalSettings,
    progress: bool, *, stream: bool = False,
) -> None:
    """Generates and scores every missing sample of one task, saving each as it comes (`stream`:
    `generate` takes the whole queue, see `StreamGenerate`; otherwise it is called batch by batch)."""
    from tqdm import tqdm

    todo = run.missing(settings.num_samples)
    if not todo:
        return
    prompts = {i: render_prompt(tokenizer, eval_user_prompt(run.problems[i].problem)) for i in todo}
    order = sorted(todo)
    # The templated text already starts with BOS; "double" adds the tokenizer's own in front too.
    ids = dict(zip(order, tokenizer.encode_batch([prompts[i] for i in order],
                                                 add_special_tokens=settings.bos == "double")))
    total = sum(len(s) for s in todo.values())
    with tqdm(total=total, desc=run.spec.name, unit="sample", disable=not progress, dynamic_ncols=True) as bar:
        if stream:
            # Longest prompts first: they set the prompt cap either way, and long rows start early.
            requests = [(i, s) for i in sorted(todo, key=lambda i: (-len(ids[i]), i)) for s in todo[i]]

            def on_progress(counts: Mapping[str, int]) -> None:
                bar.set_postfix(tokens=counts["tokens"], live=counts["slots_live"], refresh=False)

            drawn = generate(ids, requests, _stable_seed(settings.seed, run.spec.name), on_progress)
        else:
            # Problems missing the same number of samples go together (usually all: a fresh run, or K raised).
            by_count: dict[int, list[int]] = defaultdict(list)
            for i in order:
                by_count[len(todo[i])].append(i)
            batches = [batch for count, indices in sorted(by_count.items()) for batch in
                       _length_sorted_batches(indices, ids, max(1, settings.batch_size // count))]
            drawn = static_stream(generate, ids, todo, ((batch, _stable_seed(settings.seed, run.spec.name, n))
                                                        for n, batch in enumerate(batches)))
        for index, sample, out in drawn:
            out = cap_generation(out, settings.new_token_cap(len(ids[index])))
            text = tokenizer.decode(out.token_ids, skip_special_tokens=True)
            run.append(run.record(index, sample, prompts[index], text, len(out.token_ids), out.truncated))
            bar.update(1)


def cap_generation(out: Generation, cap: int) -> Generation:
    """A generation cut to `cap` tokens: what sampling with that limit gives (tokens are causal)."""
    if len(out.token_ids) <= cap:
        return out
    return Generation(list(out.token_ids[:cap]), truncated=True)  # any EOS came after the cap


def settings_record(settings: EvalSettings, spec: TaskSpec, data_dir: str | Path | None,
                    source: Mapping[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    """What results.json stores beside each task's numbers (less the settings in `drop`)."""
    # num_samples: "k" says how many samples were scored.
    s = {k: v for k, v in asdict(settings).items() if k not in ("batch_size", "num_samples", *drop)}
    data = str(Path(data_dir).expanduser() / f"{spec.name}.jsonl") if data_dir else f"{spec.hub_id}:{spec.split}"
    return {**s, **source, "data": data, "gold_field": spec.gold_field, "gold_kind": spec.gold_kind}


# ----------------------------------------------------------------------------- entry points


def _run_tasks(names: Sequence[str], settings: EvalSettings, generation: Mapping[str, Any],
               fill: Callable[[TaskRun], dict[str, Any]], *, data_dir: str | Path | None, limit: int | None,
               out_dir: str | Path | None) -> dict[str, dict[str, Any]]:
    """What both modes share: per task, the problems and the samples stored in `out_dir` (resumed,
    rescored when only the scoring mode changed), `fill(run)` completing and scoring them into the
    task's results, then the outputs."""
    if data_dir is None:
        require_hub(f"the benchmarks ({', '.join(names)})", OFFLINE_FIX)
    data = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
    out, rescore, save_settings = _check_out_dir(out_dir, {**generation, "data_dir": data}, settings.scoring)
    results = {}
    for name in names:
        run = TaskRun(get_task(name), load_task(name, data_dir, limit), settings.scoring,
                      path=out / f"details_{name}.jsonl" if out else None, save_settings=save_settings)
        run.load(rescore)
        results[name] = fill(run)
        run.finish()
        if out:  # task by task: an interrupted run keeps the numbers of the tasks it finished
            _merge_results(out, {name: results[name]})
    return results


def run_model_eval(
    generate: GenerateFn | StreamGenerate,
    tokenizer: Tokenizer,
    tasks: str | Sequence[str],
    settings: EvalSettings,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    out_dir: str | Path | None = None,
    model: str | None = None,
    progress: bool = True,
    stream: bool = False,
) -> dict[str, dict[str, Any]]:
    """Generates with `generate` (a `StreamGenerate` with `stream`), scores, writes outputs;
    returns {task: metrics and settings}."""
    generation = {
        "source": "model", "model": model, "tokenizer": str(tokenizer.path),
        "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature, "top_p": settings.top_p,
        "seed": settings.seed,
    }
    # Recorded only when set, so output directories written before these options still resume.
    generation.update({k: v for k, v in (("bos", settings.bos), ("max_model_length", settings.max_model_length))
                       if v not in ("single", 0)})

    def fill(run: TaskRun) -> dict[str, Any]:
        generate_task(run, generate, tokenizer, settings, progress, stream=stream)
        return {**run.metrics(settings.num_samples), **settings_record(settings, run.spec, data_dir, {"model": model})}

    return _run_tasks(parse_task_names(tasks), settings, generation, fill, data_dir=data_dir, limit=limit,
                      out_dir=out_dir)


def read_completions(path: str | Path) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Completion lines {"task", "index", "completion"[, "length", "truncated"]} by task and index.

    Several lines with one index are that problem's samples, numbered in file order.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"completions file {p} does not exist")
    found: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for line_no, row in iter_jsonl(p):
        try:
            task, index, completion = row["task"], row["index"], row["completion"]
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"{p}:{line_no}: expected a JSON object with task, index and completion ({type(e).__name__}: {e})"
            ) from e
        get_task(task)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError(f"{p}:{line_no}: index must be a row number (int >= 0), got {index!r}")
        if not isinstance(completion, str):
            raise ValueError(f"{p}:{line_no}: completion must be a string")
        length, truncated = row.get("length"), row.get("truncated")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 0):
            raise ValueError(f"{p}:{line_no}: length must be a token count (int >= 0) or absent, got {length!r}")
        if truncated is not None and not isinstance(truncated, bool):
            raise ValueError(f"{p}:{line_no}: truncated must be true, false or absent, got {truncated!r}")
        found[task][index].append(row)
    if not found:
        raise ValueError(f"{p} holds no completions")
    return found


def run_completions_eval(
    completions_file: str | Path,
    settings: EvalSettings,
    *,
    tasks: str | Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    tokenizer: Tokenizer | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Scores completions produced elsewhere (no model). A rerun reuses rows whose text is unchanged."""
    from tqdm import tqdm

    found = read_completions(completions_file)
    names = parse_task_names(tasks) if tasks else [t for t in TASKS if t in found]
    for name in names:
        if not found.get(name):
            raise ValueError(f"{completions_file} has no completions for task {name}")

    def fill(run: TaskRun) -> dict[str, Any]:
        name, problems, by_index = run.spec.name, run.problems, found[run.spec.name]
        beyond = [i for i in by_index if i >= len(problems)]
        if beyond:
            raise ValueError(f"{completions_file}: task {name} has {len(problems)} rows, "
                             f"but completions name index {max(beyond)}")
        kept = {}
        total = sum(len(v) for v in by_index.values())
        with tqdm(total=total, desc=f"score {name}", unit="sample", disable=not progress, dynamic_ncols=True) as bar:
            for index, rows in sorted(by_index.items()):
                prompt = eval_user_prompt(problems[index].problem)
                if tokenizer is not None and tokenizer.has_chat_template:
                    prompt = render_prompt(tokenizer, prompt)
                for sample, row in enumerate(rows):
                    rec = run.records.get((index, sample), {})
                    if rec.get("completion") != row["completion"]:
                        length = row.get("length")
                        if length is None and tokenizer is not None:
                            length = len(tokenizer.encode(row["completion"]))
                        rec = run.record(index, sample, prompt, row["completion"], length, row.get("truncated"))
                    kept[(index, sample)] = rec
                    bar.update(1)
        run.records = kept  # samples no longer in the file are dropped
        metrics = run.metrics(max(len(v) for v in by_index.values()))
        if metrics["missing"]:
            log.warning("task %s: %d of %d problems have no completion; pass@1 is over the other %d",
                        name, metrics["missing"], len(problems), metrics["n"])
        source = {"completions": str(completions_file)}
        return {**metrics, **settings_record(settings, run.spec, data_dir, source, drop=UNKNOWN_IN_COMPLETIONS)}

    return _run_tasks(names, settings, {"source": "completions"}, fill, data_dir=data_dir, limit=None,
                      out_dir=out_dir)


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The console table: pass@1 and stderr in percent per task, and their plain average."""
    lines = [f"{'task':<15}{'n':>6}{'k':>5}{'pass@1 %':>11}{'stderr':>9}{'missing':>9}"]
    accs = [r["accuracy"] for r in results.values()]
    for name, r in results.items():
        lines.append(f"{name:<15}{r['n']:>6}{r['k']:>5}{100 * r['accuracy']:>11.1f}{100 * r['stderr']:>9.1f}"
                     f"{r['missing']:>9}")
    if len(accs) > 1:
        lines.append(f"{'average':<15}{'':>6}{'':>5}{100 * sum(accs) / len(accs):>11.1f}")
    return "\n".join(lines)


def flat_metrics(results: Mapping[str, Mapping[str, Any]], prefix: str = "eval") -> dict[str, float]:
    """`{prefix}/{task}/accuracy` and `/stderr` scalars for a training log."""
    return {f"{prefix}/{name}/{key}": float(r[key]) for name, r in results.items() for key in ("accuracy", "stderr")}
