"""CLI: pass@1 on the paper's benchmarks with lighteval-equivalent scoring (docs/recipe.md section Evaluation).

    python -m openrs_jax.evaluate --model PATH --tasks aime24,math500 --out OUTDIR
    python -m openrs_jax.evaluate --completions FILE.jsonl --data_dir DIR --out OUTDIR

Model mode samples with the project's sampler; `--completions` scores completions produced by
any engine (lines {"task", "index", "completion"}) without loading a model. Outputs:
OUTDIR/results.json, OUTDIR/details_<task>.jsonl and a table on the console. A rerun into the
same OUTDIR reuses finished samples.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from openrs_jax.cli import add_queue_arguments, exit_on_user_error, setup_logging
from openrs_jax.evaluation.draw import load_decoder
from openrs_jax.evaluation.runner import EvalSettings, format_table, run_completions_eval, run_model_eval
from openrs_jax.evaluation.scoring import SCORING_MODES
from openrs_jax.evaluation.tasks import PAPER_TASKS, TASKS
from openrs_jax.core.model_paths import MODEL_HELP

# Prompt lengths are rounded up to this many tokens: the benchmarks' prompts (~100 to ~1,000
# tokens) then compile only a few sampler programs.
PROMPT_BUCKET = 128
PAPER_MAX_MODEL_LENGTH = 32768  # lighteval's vLLM max_model_length in the paper's command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m openrs_jax.evaluate",
        description="pass@1 on AIME24, AMC23, MATH-500, Minerva and OlympiadBench (and AIME25), scored as the paper.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help=f"model to sample from: {MODEL_HELP}")
    src.add_argument("--completions", metavar="FILE.jsonl",
                     help='score completions made elsewhere: lines {"task", "index", "completion"}; no model')
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the model's, or the training run's)")
    p.add_argument("--tasks", default=None,
                   help=f"comma-separated, from {', '.join(TASKS)} (default: {','.join(PAPER_TASKS)}; "
                        "with --completions: the tasks in the file)")
    p.add_argument("--data_dir", metavar="DIR", help="read DIR/<task>.jsonl instead of the Hub datasets")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="output directory (a rerun resumes)")
    p.add_argument("--num_samples", type=int, default=1, help="K samples per problem (default 1)")
    p.add_argument("--max_new_tokens", type=int, default=32768, help="default 32768 (the paper's)")
    p.add_argument("--temperature", type=float, default=0.6, help="default 0.6 (the paper's)")
    p.add_argument("--top_p", type=float, default=0.95, help="default 0.95 (the paper's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of each task")
    add_queue_arguments(p, 64, "completions")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="compute dtype")
    p.add_argument("--scoring", default="paper", choices=SCORING_MODES,
                   help="paper: lighteval's extraction as the paper ran it (default); fixed: answer-only "
                        "LaTeX golds (OlympiadBench) are boxed first so they parse whole")
    p.add_argument("--bos", choices=("single", "double"), default=None,
                   help="single: the chat template's BOS only (default); double: tokenize the templated prompt "
                        "with special tokens, two BOS tokens, as the paper's lighteval + vLLM run did")
    p.add_argument("--max_model_length", type=int, default=None, metavar="N",
                   help="cap prompt + completion at N tokens as vLLM's max_model_len did (default 0: no cap)")
    p.add_argument("--paper_exact", action="store_true",
                   help="the paper's engine quirks: --bos double --max_model_length 32768 unless given "
                        "(docs/paper-exact.md)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from openrs_jax.core.tokenizer import load_tokenizer

    settings = EvalSettings(
        num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, scoring=args.scoring, batch_size=args.batch_size,
        bos=args.bos or ("double" if args.paper_exact else "single"),
        max_model_length=args.max_model_length if args.max_model_length is not None else (
            PAPER_MAX_MODEL_LENGTH if args.paper_exact else 0),
    )
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.completions:
        if args.limit is not None:
            raise ValueError("--limit applies to model mode; a completions file already says which rows it has")
        if args.bos or args.max_model_length is not None or args.paper_exact:
            raise ValueError("--bos, --max_model_length and --paper_exact apply to model mode; the completions "
                            "file was generated elsewhere")
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        results = run_completions_eval(
            args.completions, settings, tasks=args.tasks, data_dir=args.data_dir, out_dir=args.out,
            tokenizer=tokenizer, progress=not args.no_progress,
        )
    else:
        policy, generate, stream = load_decoder(
            args.model, args.tokenizer, dtype=args.dtype, slots=args.slots, prompt_bucket=PROMPT_BUCKET,
            sampling={"temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens},
            require_chat_template=True,
        )
        results = run_model_eval(
            generate, policy.tokenizer, args.tasks or ",".join(PAPER_TASKS), settings, data_dir=args.data_dir,
            limit=args.limit, out_dir=args.out, model=policy.describe(),
            progress=not args.no_progress, stream=stream,
        )
    print(format_table(results))
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
