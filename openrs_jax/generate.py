"""Sample completions from a checkpoint.

`python -m openrs_jax.generate --model PATH --prompts FILE.jsonl --out FILE.jsonl [options]`.

Each input line is `{"prompt_ids": [...]}` (token ids, used as given) or `{"prompt": "text"}`
(rendered by the project's prompt builder, `openrs_jax.recipe.prompts`: the tokenizer's chat template
with one user turn after an optional --system turn, tokenized without adding special tokens,
since the template already holds BOS). Each output line is `{"index": i, "sample": g,
"completion_ids": [...], "finished": bool}` plus `"text"` (decoded with skip_special_tokens)
when a tokenizer is available; completion_ids end with the EOS id when one was generated.
EOS and pad ids, temperature, top_p and top_k default to the model directory's
generation_config.json, then config.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from openrs_jax.cli import exit_on_user_error
from openrs_jax.files import iter_jsonl, write_jsonl
from openrs_jax.core.model_paths import MODEL_HELP

log = logging.getLogger("openrs_jax.generate")


def _ids(value: Any) -> list[int]:
    """An id or list of ids from a config field, as a list."""
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def model_defaults(model_path: str | Path) -> dict[str, Any]:
    """eos_ids, pad_id and sampling defaults of a model path.

    generation_config.json takes precedence over config.json; pad falls back to the first EOS.
    A training checkpoint has only its model config (EOS and pad ids, no sampling defaults).
    """
    from openrs_jax.core.model.sources import generation_files

    gen, config = generation_files(model_path)
    eos = _ids(gen.get("eos_token_id")) or _ids(config.get("eos_token_id"))
    pad = gen.get("pad_token_id")
    pad = config.get("pad_token_id") if pad is None else pad
    sample = bool(gen.get("do_sample", True))
    return {
        "eos_ids": eos,
        "pad_id": int(pad) if pad is not None else (eos[0] if eos else 0),
        "temperature": float(gen.get("temperature", 1.0)) if sample else 0.0,
        "top_p": float(gen.get("top_p", 1.0)),
        "top_k": int(gen.get("top_k") or 0),
    }


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL prompts file, each holding "prompt_ids" or "prompt"."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"prompts file {p} does not exist")
    records = []
    for n, record in iter_jsonl(p):
        if not isinstance(record, dict) or not ("prompt_ids" in record or "prompt" in record):
            raise ValueError(f'{p}:{n}: each line must be an object with "prompt_ids" (list of ints) or "prompt" (text)')
        records.append(record)
    if not records:
        raise ValueError(f"{p} holds no prompts")
    return records


def encode_prompt(record: dict[str, Any], tokenizer: Any, system: str | None, where: str,
                  vocab_size: int | None = None) -> list[int]:
    """Token ids of one prompt record (chat template for text prompts); tokenizer is an
    `openrs_jax.core.tokenizer.Tokenizer` or None; given ids must lie below `vocab_size`."""
    if "prompt_ids" in record:
        ids = record["prompt_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"{where}: prompt_ids must be a non-empty list of ints")
        bad = next((i for i in ids if i < 0 or (vocab_size is not None and i >= vocab_size)), None)
        if bad is not None:  # the embedding lookup would silently clamp it
            raise ValueError(f"{where}: token id {bad} is not in the model's vocabulary (0 to {vocab_size - 1})"
                             if vocab_size is not None else f"{where}: token id {bad} is negative")
        return ids
    if tokenizer is None:
        raise ValueError(f'{where}: a text "prompt" needs a tokenizer: pass --tokenizer DIR (or use "prompt_ids")')
    if not isinstance(record["prompt"], str):
        raise ValueError(f'{where}: "prompt" must be a string')
    if not tokenizer.has_chat_template:
        raise ValueError(f"{where}: the tokenizer has no chat template to render text prompts; give prompt_ids")
    from openrs_jax.recipe.prompts import render_prompt_ids

    return render_prompt_ids(tokenizer, record["prompt"], system or None)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m openrs_jax.generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model's, or the training run's, if it has one)")
    p.add_argument("--prompts", required=True, help='JSONL file: {"prompt_ids": [...]} or {"prompt": "text"} per line')
    p.add_argument("--out", required=True, help="JSONL file to write, one line per (prompt, sample)")
    p.add_argument("--num_samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, help="0 = greedy (default: generation_config.json, else 1.0)")
    p.add_argument("--top_p", type=float, help="default: generation_config.json, else 1.0")
    p.add_argument("--top_k", type=int, help="0 = off (default: generation_config.json, else off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eos_id", type=int, action="append", help="EOS id (repeat for several; default: the model's)")
    p.add_argument("--pad_id", type=int, help="pad id (default: the model's, else the first EOS)")
    p.add_argument("--system", help="system prompt placed before each text prompt")
    p.add_argument("--batch_size", type=int, default=32, help="prompts per sampler call")
    p.add_argument("--prompt_bucket", type=int, default=64, help="prompt lengths are padded to a multiple of this")
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   help="parameter and compute dtype (default: bfloat16 on GPU, float32 elsewhere)")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the CLI; returns the records it wrote."""
    args = parse_args(argv)
    if args.batch_size < 1:
        raise ValueError("--batch_size must be >= 1")
    import jax
    import numpy as np

    from openrs_jax.core.sampling import SamplingParams
    from openrs_jax.evaluation.draw import load_policy

    policy = load_policy(  # a tokenizer only where one is known: prompt_ids need none
        args.model, args.tokenizer, dtype=args.dtype or "auto", prompt_bucket=args.prompt_bucket,
        need_tokenizer=bool(args.tokenizer),
    )
    tokenizer = policy.tokenizer
    defaults = model_defaults(policy.model_dir)
    records = read_prompts(args.prompts)
    prompts = [encode_prompt(r, tokenizer, args.system, f"{args.prompts}: prompt {i}", policy.model_config.vocab_size)
               for i, r in enumerate(records)]

    weights = policy.sampler.prepare(policy.load_params())
    given = {k: defaults[k] if getattr(args, k) is None else getattr(args, k)
             for k in ("temperature", "top_p", "top_k", "pad_id")}
    sampling = SamplingParams(**given, max_new_tokens=args.max_new_tokens,
                              eos_ids=tuple(args.eos_id or defaults["eos_ids"]))
    if not sampling.eos_ids:
        log.warning("no EOS id known for %s: every completion runs to --max_new_tokens", args.model)

    out_path = Path(args.out).expanduser()
    written: list[dict[str, Any]] = []
    key = jax.random.key(args.seed)

    def records() -> Iterator[dict[str, Any]]:
        for start in range(0, len(prompts), args.batch_size):
            batch = prompts[start : start + args.batch_size]
            result = policy.sampler.generate(weights, batch, args.num_samples, sampling, jax.random.fold_in(key, start))
            for row, ids in enumerate(result.completions()):
                record: dict[str, Any] = {"index": start + row // args.num_samples, "sample": row % args.num_samples,
                                          "completion_ids": ids, "finished": not bool(result.truncated[row])}
                if tokenizer is not None:
                    record["text"] = tokenizer.decode(ids, skip_special_tokens=True)
                written.append(record)
                yield record
            done = min(start + args.batch_size, len(prompts))
            rate = int(np.sum(result.lengths)) / max(result.timings["total_s"], 1e-9)
            note = " (this batch compiled new programs)" if result.timings["compiled"] else ""
            print(f"{done}/{len(prompts)} prompts, {rate:.0f} tokens/s{note}", file=sys.stderr)

    write_jsonl(out_path, records())  # streamed into a temporary file that replaces --out at the end
    print(f"wrote {len(written)} completions to {out_path}", file=sys.stderr)
    return written


if __name__ == "__main__":
    main()
