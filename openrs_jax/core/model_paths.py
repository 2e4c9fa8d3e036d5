"""The names a model argument may take, and the words every help text and error uses.

JAX-free, so command-line parsers can show them without starting JAX. The names that ship with
the package are resolved here and nowhere else:

- `builtin:tiny`: the offline demo model (a config and a tokenizer in openrs_jax/assets/tiny,
  random weights drawn from a seed);
- `preset:NAME[,key=value,...]`: a model shape for benchmarks (`Qwen2Config.preset`), random
  weights and the demo model's tokenizer, no files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


# Named by every "this is not a model" error, so the user sees what would have worked.
ACCEPTED = (
    "a Hugging Face model directory (config.json + safetensors, e.g. RUN/hf or RUN/hf-step-N), "
    "a training run folder RUN (its latest checkpoint), a training checkpoint RUN/checkpoints/N, "
    "an openrs-jax checkpoint (from conversion.hf_to_flax) or builtin:tiny"
)
# The short form, for --model help texts.
MODEL_HELP = (
    "Hugging Face model directory (e.g. RUN/hf), training run folder RUN (its latest checkpoint), "
    "RUN/checkpoints/N, openrs-jax checkpoint or builtin:tiny"
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUILTIN_PREFIX = "builtin:"
PRESET_PREFIX = "preset:"
BUILTIN_MODELS = {"builtin:tiny": ASSETS / "tiny"}


def is_builtin_model(name: str | Path) -> bool:
    return str(name) in BUILTIN_MODELS


def is_preset(name: str | Path) -> bool:
    return str(name).startswith(PRESET_PREFIX)


def resolve_builtin(name: str | Path, shipped: Mapping[str, Path] = BUILTIN_MODELS,
                    kind: str = "built-in model") -> str:
    """The shipped path of a built-in name (by default a model's folder); any other name unchanged."""
    text = str(name)
    if text in shipped:
        return str(shipped[text])
    if text.startswith(BUILTIN_PREFIX):
        raise ValueError(f"unknown {kind} {text!r}; valid: {', '.join(shipped)}")
    return text
