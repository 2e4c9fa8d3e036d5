"""Exports openrs-jax parameters as a Hugging Face directory (safetensors + configs + tokenizer).

    python -m conversion.flax_to_hf --ckpt IN --out OUT [--tokenizer DIR] [--dtype bfloat16|float32]

IN is a training checkpoint RUN/checkpoints/N, a training run folder RUN (its latest
checkpoint), an openrs-jax checkpoint or a Hugging Face directory. A training checkpoint's
tokenizer files (saved with its run) are copied unless --tokenizer names others.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from openrs_jax.cli import exit_on_user_error
from openrs_jax.core.model import load_params
from openrs_jax.core.model.io import DEFAULT_SHARD_BYTES, write_hf_directory
from openrs_jax.core.model_paths import MODEL_HELP


def convert(
    ckpt: str | Path,
    out: str | Path,
    *,
    tokenizer: str | Path | None = None,
    dtype: str = "bfloat16",
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Writes the parameters of `ckpt` (any model path `openrs_jax.core.model.sources` accepts) as a
    HF directory, with the tokenizer files of `tokenizer` (default: those that go with `ckpt`)."""
    from openrs_jax.core.model.sources import tokenizer_dir

    params, config = load_params(ckpt)
    return write_hf_directory(
        out, params, config, dtype=dtype, tokenizer_dir=tokenizer or tokenizer_dir(ckpt),
        max_shard_bytes=max_shard_bytes,
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conversion.flax_to_hf", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help=MODEL_HELP)
    parser.add_argument("--out", required=True, help="output Hugging Face directory")
    parser.add_argument("--tokenizer", default=None, help="directory whose tokenizer files are copied into --out")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="dtype of the written tensors (bfloat16 for vLLM; float32 reproduces fp32 exactly)")
    parser.add_argument("--max_shard_gb", type=float, default=DEFAULT_SHARD_BYTES / 1024**3,
                        help="shard the safetensors above this size")
    args = parser.parse_args(argv)
    out = convert(args.ckpt, args.out, tokenizer=args.tokenizer, dtype=args.dtype,
                  max_shard_bytes=int(args.max_shard_gb * 1024**3))
    print(f"wrote Hugging Face directory to {out}")


if __name__ == "__main__":
    main()
