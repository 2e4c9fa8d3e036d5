"""One way for the bench subcommands to take their shapes: a run config and/or a model spec.

Two sources, usable together:

- `--config configs/exp2.py` (a run config, as `python -m openrs_jax.train` takes): fills the
  batch shapes a subcommand needs (prompts per step, generations, prompt and completion
  lengths, micro-batch, beta, loss aggregation, remat, compute dtype, sampling settings,
  mesh). A flag given on the command line wins over the config; the config wins over the
  flag's default. Where `ml_collections` is not installed (the GPU image), config files are
  read through a small stand-in for its `ConfigDict` (`load_run_config`).
- `--model SPEC`: the model. A Hugging Face directory or openrs-jax checkpoint (its weights),
  a directory holding only a config.json or a config.json file (random weights of that
  shape), the built-in demo model `builtin:tiny` (random weights, the shape every other
  command knows by that name), or a benchmark shape `preset:NAME[,key=value,...]` (random
  weights, no files, no tokenizer; only the bench takes these):

  | preset | shape |
  |---|---|
  | `preset:deepseek-r1-distill-qwen-1.5b` (alias `preset:1.5b`) | the recipe's model: 28 layers, hidden 1536, MLP 8960, 12 heads, 2 KV heads, vocab 151,936 (1.78 B parameters) |
  | `preset:20m` | 4 layers, hidden 256, MLP 688, 8 heads, 2 KV heads, vocab 32,000 |

  `key=value` pairs override Qwen2Config fields, e.g. `preset:20m,vocab_size=151936`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import types
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from openrs_jax.recipe import toy

log = logging.getLogger("openrs_jax.bench")

PRESET_PREFIX = "preset:"

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeek-R1-Distill-Qwen-1.5B's config.json (on the Hub), which Qwen2Config's
    # defaults already follow; token ids as in that file.
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


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def is_preset(spec: str | Path) -> bool:
    return str(spec).startswith(PRESET_PREFIX)


def _parse_override(text: str) -> tuple[str, Any]:
    import ast

    if "=" not in text:
        raise ValueError(f"preset override {text!r} must look like key=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def preset_config(spec: str, **runtime: Any) -> Any:
    """The Qwen2Config of `preset:NAME[,key=value,...]` (runtime: dtype, param_dtype, remat)."""
    from openrs_jax.core.model import Qwen2Config

    name, *overrides = spec[len(PRESET_PREFIX):].split(",")
    name = PRESET_ALIASES.get(name.strip(), name.strip())
    if name not in MODEL_PRESETS:
        raise ValueError(
            f"--model {spec}: unknown model preset {name!r}; valid: "
            f"{', '.join(PRESET_PREFIX + n for n in sorted({**MODEL_PRESETS, **PRESET_ALIASES}))}, "
            f"or the built-in demo model {', '.join(toy.BUILTIN_MODELS)}"
        )
    fields = dict(MODEL_PRESETS[name])
    valid = {f.name for f in dataclasses.fields(Qwen2Config)}
    for text in overrides:
        if not text.strip():
            continue
        key, value = _parse_override(text)
        if key not in valid:
            raise ValueError(f"preset override {key!r} is not a Qwen2Config field; valid: {', '.join(sorted(valid))}")
        fields[key] = value
    return Qwen2Config(**{**fields, **runtime})


def model_config(spec: str | Path, **runtime: Any) -> Any:
    """The Qwen2Config of a model spec (preset, directory or config.json), reading no weights."""
    from openrs_jax.core.model import Qwen2Config

    if is_preset(spec):
        return preset_config(str(spec), **runtime)
    p = Path(toy.resolve(toy.check_name(str(spec), "--model", "model"))).expanduser()
    if not p.exists():
        raise ValueError(f"--model {p} does not exist: give a model directory, a config.json, a preset "
                        f"({', '.join(PRESET_PREFIX + n for n in MODEL_PRESETS)}) or "
                        f"{', '.join(toy.BUILTIN_MODELS)}")
    return Qwen2Config.from_json(p, **runtime)


def load_model(spec: str | Path, dtype: str = "float32", seed: int = 0) -> tuple[Any, bool]:
    """The model of `spec` with parameters and compute in `dtype`, and whether its weights are random.

    Presets and `builtin:tiny` get random weights from `seed`; paths go through
    `common.load_bench_model`.
    """
    from openrs_jax.bench.common import DTYPES, load_bench_model
    from openrs_jax.core.model import init_model

    if is_preset(spec):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        return init_model(preset_config(str(spec), dtype=dtype, param_dtype=dtype), seed), True
    # builtin:tiny is a directory with a config.json and no weights: random weights from `seed`.
    return load_bench_model(toy.resolve(toy.check_name(str(spec), "--model", "model")), dtype, seed)


# ---------------------------------------------------------------------------------------------
# Run configs (with a stand-in for ml_collections where it is absent)
# ---------------------------------------------------------------------------------------------


class _ConfigDict(dict):
    """The part of `ml_collections.ConfigDict` that openrs_jax.recipe.config and configs/*.py use:
    attribute access, nested dicts, lock()/unlocked(), to_dict()."""

    def __init__(self, initial: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__()
        object.__setattr__(self, "_locked", False)
        for key, value in {**dict(initial or {}), **kwargs}.items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if self._locked and key not in self:
            raise KeyError(f"key {key!r} does not exist and the config is locked")
        if isinstance(value, dict) and not isinstance(value, _ConfigDict):
            value = _ConfigDict(value)
        super().__setitem__(key, value)

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        try:
            self[key] = value
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def lock(self) -> "_ConfigDict":
        object.__setattr__(self, "_locked", True)
        for value in self.values():
            if isinstance(value, _ConfigDict):
                value.lock()
        return self

    def _set_locked(self, locked: bool) -> None:
        object.__setattr__(self, "_locked", locked)
        for value in self.values():
            if isinstance(value, _ConfigDict):
                value._set_locked(locked)

    @contextlib.contextmanager
    def unlocked(self):
        was = self._locked
        self._set_locked(False)
        try:
            yield self
        finally:
            self._set_locked(was)

    @property
    def is_locked(self) -> bool:
        return self._locked

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, _ConfigDict) else v for k, v in self.items()}

    def to_json_best_effort(self, **kwargs: Any) -> str:
        import json

        return json.dumps(self.to_dict(), default=str, **kwargs)


def _ensure_ml_collections() -> bool:
    """Imports ml_collections, or installs the stand-in module; returns whether it is the real one."""
    try:
        import ml_collections  # noqa: F401

        return not getattr(ml_collections, "_OPENRS_STAND_IN", False)
    except ModuleNotFoundError:
        module = types.ModuleType("ml_collections")
        module.ConfigDict = _ConfigDict  # type: ignore[attr-defined]
        # A field whose type may change (scale_rewards: "group" or a bool): the stand-in checks no types.
        module.FieldReference = lambda value, field_type=None: value  # type: ignore[attr-defined]
        module._OPENRS_STAND_IN = True  # type: ignore[attr-defined]
        sys.modules["ml_collections"] = module
        log.warning("ml_collections is not installed: reading run configs with a minimal stand-in")
        return False


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """`openrs_jax.recipe.config.load_config(path, overrides)`, also where ml_collections is absent."""
    _ensure_ml_collections()
    from openrs_jax.recipe.config import load_config

    return load_config(path, overrides)


@dataclasses.dataclass(frozen=True)
class RunShapes:
    """What a benchmark needs from a run config."""

    prompts_per_step: int
    num_generations: int
    max_prompt_length: int
    max_completion_length: int
    micro_batch_size: int
    beta: float
    loss_aggregation: str
    remat: str
    compute_dtype: str
    param_dtype: str
    logprob_chunk: int
    temperature: float
    top_p: float
    top_k: int
    mesh: str

    @property
    def rows(self) -> int:
        return self.prompts_per_step * self.num_generations

    @classmethod
    def from_config(cls, cfg: Any) -> "RunShapes":
        mesh = cfg["mesh"]
        mesh = mesh.to_dict() if hasattr(mesh, "to_dict") else dict(mesh)
        from openrs_jax.recipe.config import FLAT_KEYS  # name -> "section.name"

        values = {}
        for f in dataclasses.fields(cls):
            if f.name != "mesh":
                section, key = FLAT_KEYS[f.name].split(".")
                values[f.name] = cfg[section][key]
        return cls(**values, mesh=",".join(f"{k}={v}" for k, v in mesh.items()))


# ---------------------------------------------------------------------------------------------
# --config on a subcommand's parser
# ---------------------------------------------------------------------------------------------


class _Unset:
    """A flag's default, kept apart from values given on the command line."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


FieldSource = str | Callable[[RunShapes], Any]


def add_config_argument(parser: argparse.ArgumentParser, fields: Mapping[str, FieldSource]) -> None:
    """Adds `--config RUN_CONFIG`, which fills the flags named in `fields` (dest -> a RunShapes
    field name or a function of RunShapes) unless they are given on the command line.

    Call after the flags are defined; `apply_run_config(args)` does the filling.
    """
    dests = {a.dest: a for a in parser._actions}
    for dest in fields:
        if dest not in dests:
            raise ValueError(f"no flag with dest {dest!r} to fill from --config")
        dests[dest].default = _Unset(dests[dest].default)
    parser.add_argument(
        "--config", default=None,
        help="run config (e.g. configs/exp2.py) giving the shapes: " + ", ".join(f"--{d}" for d in fields)
        + " (flags given here win)",
    )
    parser.set_defaults(_config_fields=dict(fields))


def apply_run_config(args: argparse.Namespace) -> RunShapes | None:
    """Fills unset flags from `args.config` (when given) and replaces the others' defaults by
    their values. Returns the config's shapes (None without --config)."""
    shapes = None
    fields: Mapping[str, FieldSource] = getattr(args, "_config_fields", {}) or {}
    if getattr(args, "config", None):
        shapes = RunShapes.from_config(load_run_config(args.config))
        for dest, source in fields.items():
            if isinstance(getattr(args, dest, None), _Unset):
                setattr(args, dest, getattr(shapes, source) if isinstance(source, str) else source(shapes))
    for dest, value in vars(args).items():
        if isinstance(value, _Unset):
            setattr(args, dest, value.value)
    return shapes
