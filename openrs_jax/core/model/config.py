"""Qwen2 model configuration, read from (and written back to) a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from openrs_jax.files import read_json


REMAT_POLICIES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")


def check_numerics(dtype: str, param_dtype: str, remat: str) -> None:
    """Refuses a dtype or remat policy the model cannot run (the compute dtype, the weights' dtype)."""
    for name, value in (("compute_dtype", dtype), ("param_dtype", param_dtype)):
        if value not in DTYPES:
            raise ValueError(f"{name}={value!r}: use one of {', '.join(DTYPES)}")
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}; valid: {', '.join(REMAT_POLICIES)}")

# Model shapes by name, for benchmarks (`preset:NAME`): random weights, no files.
PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeek-R1-Distill-Qwen-1.5B's config.json (on the Hub), which the defaults below already
    # follow; token ids as in that file.
    "deepseek-r1-distill-qwen-1.5b": dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, head_dim=128, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=False, max_position_embeddings=131072,
        bos_token_id=151643, eos_token_id=151643,
    ),
    "20m": dict(
        vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
}
PRESET_ALIASES = {"1.5b": "deepseek-r1-distill-qwen-1.5b"}
# The fields a Hugging Face config.json holds under the same names (`Qwen2Config.to_hf_dict`).
HF_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings",
)
HF_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")  # written only when set


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Shape and numerics of a Qwen2 causal LM.

    `dtype` is the compute dtype (bf16 on GPU, fp32 in CPU tests); `param_dtype` is the
    dtype the parameters are stored in (fp32 master weights for training).
    """

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    head_dim: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    qkv_bias: bool = True
    max_position_embeddings: int = 131072
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # Runtime settings (not part of the Hugging Face file).
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        check_numerics(self.dtype, self.param_dtype, self.remat)

    @property
    def num_query_groups(self) -> int:
        """Query heads served by each key/value head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    def replace(self, **changes: Any) -> "Qwen2Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **runtime: Any) -> "Qwen2Config":
        """Builds a config from a Hugging Face Qwen2 config dict (transformers 4 or 5 layout)."""
        model_type = d.get("model_type")
        if model_type != "qwen2":
            raise ValueError(
                f"config has model_type={model_type!r}, but openrs-jax implements 'qwen2' "
                "(Qwen2ForCausalLM, e.g. DeepSeek-R1-Distill-Qwen-1.5B); use a Qwen2 checkpoint"
            )
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={d['hidden_act']!r} is not supported (Qwen2 uses 'silu')")
        rope_theta = d.get("rope_theta")
        rope_params = d.get("rope_parameters") or {}
        if rope_theta is None:
            rope_theta = rope_params.get("rope_theta", 10000.0)
        rope_type = rope_params.get("rope_type", (d.get("rope_scaling") or {}).get("rope_type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"rope_type={rope_type!r} is not supported; only default RoPE is implemented")
        heads = d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rope_theta=float(rope_theta),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=bool(d.get("attention_bias", True)),
            max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
            **{key: d.get(key) for key in HF_TOKEN_IDS},
            **runtime,
        )

    @classmethod
    def from_json(cls, path: str | Path, **runtime: Any) -> "Qwen2Config":
        """Reads `config.json` (a file or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"no config.json at {path}: give a Hugging Face model directory")
        return cls.from_hf_dict(read_json(path), **runtime)

    @classmethod
    def preset(cls, spec: str, **runtime: Any) -> "Qwen2Config":
        """The shape named `[preset:]NAME[,key=value,...]` (`PRESETS`); pairs override fields,
        e.g. `preset:20m,vocab_size=151936`. runtime: dtype, param_dtype, remat."""
        from openrs_jax.core.model_paths import BUILTIN_MODELS, PRESET_PREFIX

        name, *overrides = spec.removeprefix(PRESET_PREFIX).split(",")
        name = PRESET_ALIASES.get(name.strip(), name.strip())
        if name not in PRESETS:
            raise ValueError(
                f"--model {spec}: unknown model preset {name!r}; valid: "
                f"{', '.join(PRESET_PREFIX + n for n in sorted({**PRESETS, **PRESET_ALIASES}))}, "
                f"or the built-in demo model {', '.join(BUILTIN_MODELS)}"
            )
        fields = dict(PRESETS[name])
        valid = {f.name for f in dataclasses.fields(cls)}
        for text in filter(str.strip, overrides):
            key, value = _parse_override(text)
            if key not in valid:
                raise ValueError(f"preset override {key!r} is not a Qwen2Config field; valid: {', '.join(sorted(valid))}")
            fields[key] = value
        return cls(**{**fields, **runtime})

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` content for this model."""
        return {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
            **{key: getattr(self, key) for key in HF_FIELDS},
            "use_sliding_window": False, "attention_dropout": 0.0, "initializer_range": 0.02,
            **{key: getattr(self, key) for key in HF_TOKEN_IDS if getattr(self, key) is not None},
        }

    def num_params(self) -> int:
        """Parameter count (embeddings included)."""
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = d * q + 2 * d * kv + q * d + (q + 2 * kv if self.qkv_bias else 0)
        layer = attn + 3 * d * f + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * layer + emb + d


def _parse_override(text: str) -> tuple[str, Any]:
    """`key=value` of a preset spec, the value read as a Python literal where it is one."""
    import ast

    if "=" not in text:
        raise ValueError(f"preset override {text!r} must look like key=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def tiny_config(**overrides: Any) -> Qwen2Config:
    """A very small Qwen2 for tests and the offline demo."""
    base = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
    )
    return Qwen2Config(**{**base, **overrides})
