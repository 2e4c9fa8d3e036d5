"""Converts a Hugging Face Qwen2 directory into an openrs-jax parameter checkpoint (orbax).

    python -m conversion.hf_to_flax --hf_dir IN --out OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

from openrs_jax.cli import exit_on_user_error
from openrs_jax.core.model.io import load_hf_params, save_flax_checkpoint


def convert(hf_dir: str | Path, out: str | Path) -> Path:
    """Reads `hf_dir` (safetensors, single or sharded) and writes our checkpoint to `out`.

    Parameters keep the dtype they have in the HF files.
    """
    params, config = load_hf_params(hf_dir)
    return save_flax_checkpoint(out, params, config)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conversion.hf_to_flax", description=__doc__.splitlines()[0])
    parser.add_argument("--hf_dir", required=True, help="Hugging Face model directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="output directory for the openrs-jax checkpoint")
    args = parser.parse_args(argv)
    out = convert(args.hf_dir, args.out)
    print(f"wrote openrs-jax checkpoint to {out}")


if __name__ == "__main__":
    main()
