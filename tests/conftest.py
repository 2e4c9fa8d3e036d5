"""Shared test fixtures: tiny random Hugging Face Qwen2 models and the shared data folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

# Tests run in fp32 on the CPU; several tests emulate 4 devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real data some tests read (not part of the repository; README.md section Tests says how to get it):
# the folder named by OPENRS_TEST_DATA, else shared/data beside the repository's folder.
TEST_DATA_ENV = "OPENRS_TEST_DATA"
SHARED_DATA = Path(os.environ.get(TEST_DATA_ENV) or REPO_ROOT.parent / "shared" / "data").expanduser()

# What each top-level entry of the data folder holds and where it comes from, for skip reasons.
DATA_SOURCES: dict[str, str] = {
    "benchmarks": (
        "<task>.jsonl saved from the Hub datasets HuggingFaceH4/aime_2024, knoveleng/AMC-23, HuggingFaceH4/MATH-500, "
        "knoveleng/Minerva-Math, knoveleng/OlympiadBench, yentinglin/aime_2025"
    ),
    "train": (
        "9,248 problems from GitHub agentica-project/deepscaler (data/train/aime.json, math.json) and "
        "scharry30/Meta-Reason (data/train/deepscaler.json)"
    ),
    "tokenizer": "the tokenizer files of the Hub model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "models": "config.json, no weights, of the Hub model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
}

TINY_HF_CONFIG: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def missing_data_reason(*parts: str, root: Path | None = None) -> str:
    """The skip reason for a test-data path that is absent: what it is and how to get it."""
    root = SHARED_DATA if root is None else root
    what = DATA_SOURCES.get(parts[0], "") if parts else ""
    return f"needs test data {'/'.join(parts)} ({what}), absent from {root}: set {TEST_DATA_ENV} (README.md, Tests)"


def shared_data(*parts: str) -> Path:
    """A path in the test-data folder, or a pytest skip naming the missing data and its source."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(missing_data_reason(*parts))
    return path


def make_hf_model(directory: Path, seed: int = 0, **overrides: Any) -> Path:
    """Saves a random `transformers` Qwen2ForCausalLM with TINY_HF_CONFIG (+ overrides) to `directory`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(**{**TINY_HF_CONFIG, **overrides})
    model = Qwen2ForCausalLM(config).eval()
    # transformers initialises norms to 1 and biases to 0; randomise them so the checks see them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    return directory


@pytest.fixture
def hf_model_dir(tmp_path: Path) -> Path:
    """A tiny random HF Qwen2 directory (untied, GQA 4/2, q/k/v bias)."""
    return make_hf_model(tmp_path / "hf_tiny")


def real_model_config(**overrides: Any) -> dict[str, Any]:
    """The real DeepSeek-R1-Distill-Qwen-1.5B config.json as a dict (skips if shared data is absent)."""
    d = json.loads((shared_data("models", "deepseek-r1-distill-qwen-1.5b") / "config.json").read_text())
    d.update(overrides)
    return d


def small_random_qwen2(seed: int) -> tuple[Any, Any]:
    """(graphdef, fp32 params) of a 2-layer random Qwen2 (vocab 96), drawn in numpy: fast to build.

    Norm weights are near 1, everything else near 0 with std 0.1.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from openrs_jax.core.model import abstract_model, tiny_config

    config = tiny_config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    graphdef, abstract = nnx.split(abstract_model(config))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        norm = "norm" in jax.tree_util.keystr(path)
        return jnp.asarray((1.0 if norm else 0.0) + 0.1 * rng.normal(size=s.shape), jnp.float32)

    return graphdef, jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(abstract))

