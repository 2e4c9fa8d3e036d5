"""Hugging Face tensor names <-> our parameter tree: one table of rules, used in both directions.

Our tree is the pure-dict form of `nnx.state(Qwen2ForCausalLM)`: per-layer tensors are stacked
on a leading layer axis, and linear kernels are stored [in, out] (HF stores weights [out, in]).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping

import numpy as np

from openrs_jax.core.model.config import Qwen2Config


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor (or family, with `{i}` = layer index) and where it lives in our tree."""

    hf: str
    ours: tuple[str, ...]
    transpose: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


_LAYER = "model.layers.{i}."
RULES: tuple[Rule, ...] = (
    Rule("model.embed_tokens.weight", ("embed_tokens",)),
    Rule("model.norm.weight", ("norm",)),
    Rule("lm_head.weight", ("lm_head",), transpose=True),
    Rule(_LAYER + "input_layernorm.weight", ("layers", "input_norm")),
    Rule(_LAYER + "post_attention_layernorm.weight", ("layers", "post_attn_norm")),
    *(
        Rule(_LAYER + f"self_attn.{name}.{kind}", ("layers", name, "kernel" if kind == "weight" else "bias"),
             transpose=kind == "weight")
        for name in ("q_proj", "k_proj", "v_proj")
        for kind in ("weight", "bias")
    ),
    Rule(_LAYER + "self_attn.o_proj.weight", ("layers", "o_proj", "kernel"), transpose=True),
    *(Rule(_LAYER + f"mlp.{name}.weight", ("layers", name, "kernel"), transpose=True)
      for name in ("gate_proj", "up_proj", "down_proj")),
)


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def active_rules(config: Qwen2Config) -> Iterator[Rule]:
    """The rules that apply to this config (no lm_head when tied, no q/k/v bias without it)."""
    for rule in RULES:
        if rule.hf == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if rule.ours[-1] == "bias" and not config.qkv_bias:
            continue
        yield rule


def hf_shapes_of(params: Mapping[str, Any], config: Qwen2Config) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape in HF layout, for the entries present in our tree `params`."""
    shapes: dict[str, tuple[int, ...]] = {}
    for rule in active_rules(config):
        value = _get(params, rule.ours)
        if value is None:
            continue
        shape = tuple(value.shape)
        names = [rule.hf]
        if rule.per_layer:
            names = [rule.hf.format(i=i) for i in range(shape[0])]
            shape = shape[1:]
        for name in names:
            shapes[name] = shape[::-1] if rule.transpose else shape
    return shapes


def check_tensor_names_and_shapes(
    shapes: Mapping[str, tuple[int, ...]], config: Qwen2Config, *, where: str
) -> None:
    """Raises a `ValueError` naming missing, unexpected, or wrongly shaped tensors."""
    from flax import nnx

    from openrs_jax.core.model.qwen2 import abstract_model

    expected = hf_shapes_of(nnx.to_pure_dict(nnx.state(abstract_model(config))), config)
    missing = sorted(set(expected) - set(shapes))
    # Tied checkpoints sometimes still carry lm_head.weight: ignore it rather than refuse.
    ignorable = {"lm_head.weight"} if config.tie_word_embeddings else set()
    unexpected = sorted(set(shapes) - set(expected) - ignorable)
    parts = [f"{kind} tensors: {', '.join(_abbreviate(names))}"
             for kind, names in (("missing", missing), ("unexpected", unexpected)) if names]
    if parts:
        raise ValueError(f"{where} does not match its config.json ({'; '.join(parts)})")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(
                f"{where}: tensor {name} has shape {tuple(shapes[name])}, but the config expects {shape}"
            )


def _abbreviate(names: list[str], limit: int = 12) -> list[str]:
    return names if len(names) <= limit else names[:limit] + [f"... ({len(names) - limit} more)"]


def hf_to_params(tensors: Mapping[str, np.ndarray], config: Qwen2Config, *, where: str = "checkpoint") -> dict:
    """Builds our parameter tree (numpy, checkpoint dtype) from HF tensors, checking names and shapes."""
    check_tensor_names_and_shapes({k: v.shape for k, v in tensors.items()}, config, where=where)
    tree: dict[str, Any] = {}
    for rule in active_rules(config):
        if rule.per_layer:
            value = np.stack([tensors[rule.hf.format(i=i)] for i in range(config.num_hidden_layers)])
        else:
            value = tensors[rule.hf]
        _set(tree, rule.ours, np.ascontiguousarray(_swap_layout(value, rule)))
    return tree


def params_to_hf(params: Mapping[str, Any], config: Qwen2Config, dtype: Any = None) -> dict[str, np.ndarray]:
    """HF tensor name -> numpy array (optionally cast to `dtype`) from our parameter tree."""
    out: dict[str, np.ndarray] = {}
    for rule in active_rules(config):
        value = _swap_layout(np.asarray(_get(params, rule.ours), dtype), rule)
        if rule.per_layer:
            out.update({rule.hf.format(i=i): np.ascontiguousarray(value[i]) for i in range(config.num_hidden_layers)})
        else:
            out[rule.hf] = np.ascontiguousarray(value)
    return out


def _swap_layout(value: np.ndarray, rule: Rule) -> np.ndarray:
    """Our [in, out] kernels <-> HF's [out, in] weights (per layer: the last two axes)."""
    return np.swapaxes(value, -1, -2) if rule.transpose else value
