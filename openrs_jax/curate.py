"""Dataset curation: `python -m openrs_jax.curate <step> ...` (docs/recipe.md section Experiments).

Steps, each reading a dataset (local JSON/JSONL/parquet file, a folder with train.jsonl, a
`save_to_disk` folder or a Hub name) and writing OUTPUT_DIR/train.jsonl, a report and
OUTPUT_DIR/stats.json:

    format         keep rows whose \\boxed{} solution or answer math-verify parses
    difficulty     sample k completions per problem, write pass rates, keep a band
    decontaminate  drop problems that overlap the evaluation benchmarks
    dedup          drop repeated problems, within the input and against other sources
    mix            seeded draw of given counts from several sources

An output folder is itself a dataset: give it to the next step, or to
`python -m openrs_jax.train --config.data.dataset=OUTPUT_DIR`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from openrs_jax.cli import exit_on_user_error, setup_logging
from openrs_jax.curation import difficulty
from openrs_jax.curation.io import progress, read_rows, write_dataset, write_stats
from openrs_jax.files import write_jsonl

log = logging.getLogger("openrs_jax.curate")


def _add_io(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, metavar="DATASET",
                   help="file (.json/.jsonl/.parquet), folder with train.jsonl, save_to_disk folder or Hub name")
    p.add_argument("--split", default="train", help="split to read (default train)")
    p.add_argument("--output_dir", required=True, metavar="DIR", help="where train.jsonl, the report and stats.json go")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")


def _optional_float(text: str) -> float | None:
    """A float, or None for 'none' (to turn a threshold off)."""
    return None if text.strip().lower() == "none" else float(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openrs_jax.curate", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    p = steps.add_parser("format", help="keep rows whose gold answer parses (report: dropped.jsonl)")
    _add_io(p)
    p.add_argument("--num_workers", type=int, default=0,
                   help="processes for math-verify (default 0: in this process)")

    p = steps.add_parser("difficulty", help="pass rates from k samples per problem; keep a band (pass_rates.jsonl)")
    _add_io(p)
    difficulty.add_arguments(p)

    p = steps.add_parser("decontaminate", help="drop problems found in the benchmarks (report: matches.jsonl)")
    _add_io(p)
    p.add_argument("--benchmarks_dir", metavar="DIR",
                   help="folder of <task>.jsonl benchmark files (field problem or question); "
                        "default: the evaluation tasks' Hub datasets")
    p.add_argument("--tasks", help="comma-separated benchmark names (default: every file in --benchmarks_dir, "
                                   "or every evaluation task)")
    p.add_argument("--ngram", type=int, default=8, help="word n-gram size (default 8)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="n-gram containment at or above which a problem is a copy (default 0.5)")
    p.add_argument("--answer_threshold", type=_optional_float, default=0.3,
                   help="lower containment that suffices when the answers are equal too (default 0.3; "
                        "'none' turns it off)")

    p = steps.add_parser("dedup", help="drop repeated problems (report: duplicates.jsonl)")
    _add_io(p)
    p.add_argument("--name", help="name of the input in the report (default: its file or folder name)")
    p.add_argument("--against", nargs="+", default=[], metavar="[NAME=]DATASET",
                   help="other sources: input rows that appear in them are dropped (they keep theirs)")
    p.add_argument("--near_threshold", type=float, default=None,
                   help="also drop near-duplicates at this n-gram containment (default: exact only)")
    p.add_argument("--ngram", type=int, default=8, help="word n-gram size for --near_threshold (default 8)")

    p = steps.add_parser("mix", help="seeded mix of several sources with given counts")
    p.add_argument("--source", action="append", required=True, metavar="[NAME=]DATASET[:COUNT]",
                   help="a source, its name (the source column) and how many rows (default all); repeat")
    p.add_argument("--output_dir", required=True, metavar="DIR")
    p.add_argument("--split", default="train", help="split to read from each source (default train)")
    p.add_argument("--seed", type=int, default=0, help="draw and shuffle seed (default 0)")
    p.add_argument("--keep_duplicates", action="store_true",
                   help="do not skip problems already taken from this or an earlier source")
    p.add_argument("--no_shuffle", action="store_true", help="keep the rows grouped by source")
    p.add_argument("--save_to_disk", action="store_true",
                   help="also write a Hub-style dataset (datasets.save_to_disk) to OUTPUT_DIR/hf_dataset")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def _finish(args: argparse.Namespace, kept: list[dict[str, Any]], report: str,
            records: Iterable[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
    """Writes a filter step's outputs: the kept rows, its report, and returns its stats."""
    out = Path(args.output_dir)
    write_dataset(out, kept)
    write_jsonl(out / report, records)
    return stats


def run_format(args: argparse.Namespace) -> dict[str, Any]:
    from openrs_jax.curation.format_filter import format_filter

    rows = read_rows(args.input, args.split)
    result = format_filter(rows, num_workers=args.num_workers, show_progress=not args.no_progress)
    return _finish(args, result.kept, "dropped.jsonl", result.dropped, result.stats())


def run_decontaminate(args: argparse.Namespace) -> dict[str, Any]:
    from openrs_jax.curation.decontaminate import Decontaminator, load_benchmarks

    rows = read_rows(args.input, args.split)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    benchmarks = load_benchmarks(args.benchmarks_dir, tasks)
    finder = Decontaminator(benchmarks, n=args.ngram, threshold=args.threshold, answer_threshold=args.answer_threshold)
    result = finder.run(progress(rows, not args.no_progress, "decontaminate"))
    stats = {**result.stats(), "benchmarks": dict(Counter(b.task for b in benchmarks))}
    records = (m.record(str(rows[m.index]["problem"])) for m in result.matches)
    return _finish(args, result.kept, "matches.jsonl", records, stats)


def run_dedup(args: argparse.Namespace) -> dict[str, Any]:
    from openrs_jax.curation.dedup import dedup
    from openrs_jax.curation.mix import parse_source

    rows = read_rows(args.input, args.split)
    against: dict[str, list[dict[str, Any]]] = {}
    for spec in args.against:
        source = parse_source(spec)
        if source.name in against:
            raise ValueError(f"two --against sources are named {source.name!r}: name them with NAME=DATASET")
        against[source.name] = read_rows(source.dataset, args.split)
    name = args.name or parse_source(args.input).name
    result = dedup(rows, name, against, near_threshold=args.near_threshold, n=args.ngram)
    return _finish(args, result.kept, "duplicates.jsonl", result.duplicates, result.stats())


def run_mix(args: argparse.Namespace) -> dict[str, Any]:
    from openrs_jax.curation.mix import mix, parse_source, save_to_disk

    sources = [parse_source(spec) for spec in args.source]
    loaded = [(s, read_rows(s.dataset, args.split)) for s in sources]
    rows, stats = mix(loaded, seed=args.seed, skip_duplicates=not args.keep_duplicates, shuffle=not args.no_shuffle)
    out = Path(args.output_dir)
    write_dataset(out, rows)
    if args.save_to_disk:
        stats["hf_dataset"] = str(save_to_disk(rows, out / "hf_dataset", show_progress=not args.no_progress))
    return stats


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every dataset a step reads (local paths and Hub names alike)."""
    from openrs_jax.curation.mix import parse_source

    names = [args.input] if getattr(args, "input", None) else []
    names += [parse_source(spec).dataset for spec in getattr(args, "source", None) or []]
    names += [parse_source(spec).dataset for spec in getattr(args, "against", None) or []]
    names += [args.benchmarks_dir] if getattr(args, "benchmarks_dir", None) else []
    return names


def check_output_dir(args: argparse.Namespace) -> None:
    """Refuses an output folder that is, holds or lies inside an input: writing it would
    overwrite or change what the step reads."""
    out = Path(args.output_dir).expanduser().resolve()
    for name in input_paths(args):
        source = Path(name).expanduser()
        if not source.exists():
            continue  # a Hub name or builtin:, never a folder we write into
        source = source.resolve()
        if out == source:
            relation = "is the input"
        elif out in source.parents:
            relation = "holds the input"
        elif source.is_dir() and source in out.parents:
            relation = "lies inside the input"
        else:
            continue
        raise ValueError(
            f"--output_dir {args.output_dir} {relation} {name}: the step would overwrite what it reads; "
            "choose an output folder outside the inputs"
        )


STEPS = {"format": run_format, "difficulty": difficulty.run, "decontaminate": run_decontaminate,
         "dedup": run_dedup, "mix": run_mix}


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs one step; prints its stats (also written to OUTPUT_DIR/stats.json) and returns them."""
    args = build_parser().parse_args(argv)
    setup_logging()
    check_output_dir(args)
    start = time.perf_counter()
    fields = STEPS[args.step](args)
    settings = {k: v for k, v in vars(args).items() if k not in ("step", "no_progress")}
    stats = {"step": args.step, **fields, "settings": settings, "seconds": round(time.perf_counter() - start, 3)}
    path = write_stats(Path(args.output_dir), stats)
    if not stats.get("rows_out"):
        log.warning("no row was kept: %s/train.jsonl is empty", args.output_dir)
    summary = {k: v for k, v in stats.items() if k not in ("settings",)}
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {Path(args.output_dir) / 'train.jsonl'} ({stats.get('rows_out')} rows) and {path}", file=sys.stderr)
    return stats


if __name__ == "__main__":
    main()
