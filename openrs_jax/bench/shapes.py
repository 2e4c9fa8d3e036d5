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
  weights, no files; `Qwen2Config.preset`, resolved with every other model name by
  `openrs_jax.core.policy`; of the commands only the bench takes these):

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

from openrs_jax.core.model_paths import is_preset
from openrs_jax.recipe import toy

log = logging.getLogger("openrs_jax.bench")


# ---------------------------------------------------------------------------------------------
# Models (resolved by the policy layer, openrs_jax.core.policy)
# ---------------------------------------------------------------------------------------------


def _check_name(spec: str | Path) -> str:
    """Refuses a built-in dataset name for --model; presets and paths pass."""
    return str(spec) if is_preset(spec) else toy.check_name(str(spec), "--model", "model")


def model_config(spec: str | Path, **runtime: Any) -> Any:
    """The Qwen2Config of a model spec (preset, directory or config.json), reading no weights
    (runtime: dtype, param_dtype, remat)."""
    from openrs_jax.core.policy import model_shape, resolve_model_path

    config, _ = model_shape(resolve_model_path(_check_name(spec), "--model"), allow_config_only=True)
    return config.replace(**runtime)


def load_policy(spec: str | Path, dtype: str = "float32", **options: Any) -> Any:
    """The `Policy` of a model spec, by default on one device with parameters and compute in
    `dtype`; a config without weights gets random ones (options: other `Policy.load` arguments)."""
    import jax

    from openrs_jax.core.policy import DECODE_MESH, Policy

    options = {"compute_dtype": dtype, "param_dtype": dtype, "remat": "none", "mesh": DECODE_MESH,
               "devices": jax.devices()[:1], "need_tokenizer": False, "allow_config_only": True,
               "flags": ("--model", "--tokenizer"), **options}
    return Policy.load(_check_name(spec), **options)


def load_model(spec: str | Path, dtype: str = "float32", seed: int = 0) -> tuple[Any, bool]:
    """The model of `spec` with parameters and compute in `dtype`, and whether its weights are
    random (presets, `builtin:tiny` and config-only models: drawn from `seed`)."""
    from openrs_jax.core.model import model_from_params

    policy = load_policy(spec, dtype)
    return model_from_params(policy.load_params(seed), policy.model_config), policy.random_weights


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
        values = {f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name != "mesh"}
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
