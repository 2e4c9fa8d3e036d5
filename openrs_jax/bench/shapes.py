"""One way for the bench subcommands to take their shapes: a run config and/or a model spec.

Two sources, usable together:

- `--config configs/exp2.py` (a run config, as `python -m openrs_jax.train` takes): fills the
  batch shapes a subcommand needs (prompts per step, generations, prompt and completion
  lengths, micro-batch, beta, loss aggregation, remat, compute dtype, sampling settings,
  mesh). A flag given on the command line wins over the config; the config wins over the
  flag's default. It needs `ml_collections` as training does (bench/gpu_exp2.sh installs it
  from carried wheels on a machine that lacks it).
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
from pathlib import Path
from typing import Any, Callable, Mapping

from openrs_jax.core.model_paths import is_preset
from openrs_jax.recipe import toy


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


# ---------------------------------------------------------------------------------------------
# --config on a subcommand's parser
# ---------------------------------------------------------------------------------------------

# Where a flag's value comes from in a run config: "section.key", or a function of the config.
FieldSource = str | Callable[[Any], Any]


def rows(cfg: Any) -> int:
    """Completions per step of a run config."""
    return cfg.rollout.prompts_per_step * cfg.rollout.num_generations


def mesh_spec(cfg: Any) -> str:
    """A run config's mesh as a --mesh value ("data=1,fsdp=-1,tensor=1")."""
    return ",".join(f"{k}={v}" for k, v in cfg.mesh.to_dict().items())


class _Unset:
    """A flag's default, kept apart from values given on the command line."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def add_config_argument(parser: argparse.ArgumentParser, fields: Mapping[str, FieldSource]) -> None:
    """Adds `--config RUN_CONFIG`, which fills the flags named in `fields` (dest -> FieldSource)
    unless they are given on the command line.

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


def apply_run_config(args: argparse.Namespace) -> Any:
    """Fills unset flags from `args.config` (when given) and replaces the others' defaults by
    their values. Returns the run config (None without --config)."""
    cfg = None
    if getattr(args, "config", None):
        from openrs_jax.recipe.config import load_config

        cfg = load_config(args.config)
        for dest, source in getattr(args, "_config_fields", {}).items():
            if isinstance(getattr(args, dest, None), _Unset):
                if isinstance(source, str):
                    section, key = source.split(".")
                    setattr(args, dest, cfg[section][key])
                else:
                    setattr(args, dest, source(cfg))
    for dest, value in vars(args).items():
        if isinstance(value, _Unset):
            setattr(args, dest, value.value)
    return cfg
