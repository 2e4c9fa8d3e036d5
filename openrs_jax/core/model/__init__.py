"""Qwen2 in Flax NNX: config, modules, loading and saving.

`from_pretrained(path)` loads a Hugging Face directory or an openrs-jax parameter checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from openrs_jax.core.model.config import Qwen2Config, tiny_config
from openrs_jax.core.model.io import (
    is_flax_checkpoint,
    load_flax_checkpoint,
    load_hf_params,
    write_hf_directory,
)
from openrs_jax.core.model_paths import is_builtin_model, resolve_builtin
from openrs_jax.core.model.qwen2 import KVCache, Qwen2ForCausalLM, abstract_model, init_model

__all__ = [
    "KVCache", "Qwen2Config", "Qwen2ForCausalLM", "abstract_model", "init_model", "tiny_config",
    "from_pretrained", "load_params", "read_config", "model_from_params", "params_of",
    "write_hf_directory",
]


def read_config(path: str | Path) -> Qwen2Config:
    """The config of a model path (checks the architecture and that weights exist), reading no weights.

    `path` is any model path `openrs_jax.core.model.sources` accepts; `builtin:tiny` is the offline
    demo model (random weights, see `openrs_jax.core.model_paths`).
    """
    from openrs_jax.core.model import sources

    if is_builtin_model(path):
        return Qwen2Config.from_json(resolve_builtin(path))
    p, ckpt = sources.locate(path)
    return Qwen2Config.from_json(p) if ckpt is None else sources.checkpoint_config(ckpt)


def load_params(path: str | Path, seed: int = 0) -> tuple[dict, Qwen2Config]:
    """Parameter tree (numpy) and config from any model path `openrs_jax.core.model.sources` accepts.

    `builtin:tiny` builds the offline demo model with random weights drawn with `seed`; a
    training checkpoint (or run folder) gives its parameters only, not the optimizer state.
    """
    from openrs_jax.core.model import sources

    if is_builtin_model(path):
        config = read_config(path)
        return params_of(init_model(config, seed=seed)), config
    p, ckpt = sources.locate(path)
    if ckpt is not None:
        return sources.load_checkpoint_params(ckpt)
    return load_flax_checkpoint(p) if is_flax_checkpoint(p) else load_hf_params(p)


def model_from_params(params: Mapping[str, Any], config: Qwen2Config) -> Qwen2ForCausalLM:
    """Builds the module around existing parameters, cast to `config.param_dtype`."""
    graphdef, abstract_state = nnx.split(abstract_model(config))
    dtype = jnp.dtype(config.param_dtype)
    values = jax.tree.map(lambda x: jnp.asarray(x, dtype), dict(params))
    nnx.replace_by_pure_dict(abstract_state, values)
    return nnx.merge(graphdef, abstract_state)


def params_of(model: Qwen2ForCausalLM) -> dict:
    """The model's parameters as a plain nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def from_pretrained(
    path: str | Path, *, dtype: str | None = None, param_dtype: str = "float32", remat: str = "none"
) -> Qwen2ForCausalLM:
    """Loads a model. `dtype` is the compute dtype (default: `param_dtype`)."""
    params, config = load_params(path)
    config = config.replace(dtype=dtype or param_dtype, param_dtype=param_dtype, remat=remat)
    return model_from_params(params, config)
