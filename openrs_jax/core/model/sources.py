"""What a model argument may name, resolved in one place for every command that takes a model.

A model path is one of:
- `builtin:tiny`, the offline demo model;
- a Hugging Face model directory (config.json + safetensors): a download, or a run's `hf/`
  (written at the end of training) and `hf-step-N/` (written at `export_steps`);
- an openrs-jax parameter checkpoint (written by `python -m conversion.hf_to_flax`);
- a training checkpoint `RUN/checkpoints/N`: only its parameters are read (not the optimizer
  state), with the model config saved beside them;
- a training run folder `RUN`: its latest complete checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrs_jax.core.checkpoint import (
    CHECKPOINTS,
    PARTIAL_MARK,
    complete_steps,
    is_step_dir,
    partial_checkpoints,
    read_step_metadata,
    read_step_params,
)
from openrs_jax.core.model.config import Qwen2Config
from openrs_jax.core.model.io import copy_tokenizer_files, is_flax_checkpoint, is_hf_directory
from openrs_jax.core.model.params import check_tensor_names_and_shapes, hf_shapes_of
from openrs_jax.core.model_paths import ACCEPTED, is_builtin_model, resolve_builtin
from openrs_jax.files import read_json

RUN_CONFIG = "config.json"  # the run's settings, written by the trainer at start
RUN_TOKENIZER = "tokenizer"  # the run's tokenizer files, written by the trainer at start


@dataclass(frozen=True)
class TrainingCheckpoint:
    """One complete training checkpoint: `step_dir` = RUN/checkpoints/<step>."""

    step_dir: Path
    step: int

    @property
    def run_dir(self) -> Path | None:
        """The run folder, when the step folder sits in RUN/checkpoints/."""
        parent = self.step_dir.parent
        return parent.parent if parent.name == CHECKPOINTS else None

    def run_config(self) -> dict[str, Any]:
        """The run's settings (RUN/config.json), or {} when there is none."""
        path = self.run_dir / RUN_CONFIG if self.run_dir else None
        try:
            return json.loads(path.read_text()) if path is not None and path.is_file() else {}
        except json.JSONDecodeError:
            return {}


def find_training_checkpoint(path: str | Path) -> TrainingCheckpoint | None:
    """The training checkpoint `path` names (a step folder, or a run folder's latest complete
    step), None for any other kind of path. A run folder without a complete step is an error."""
    p = Path(path).expanduser()
    if not p.is_dir() or is_hf_directory(p) or is_flax_checkpoint(p):
        return None
    if is_step_dir(p):
        return TrainingCheckpoint(p.resolve(), int(p.name))
    if PARTIAL_MARK in p.name:
        raise ValueError(
            f"{p} is an incomplete checkpoint (its save was interrupted); give a complete one: {ACCEPTED}"
        )
    checkpoints = p / CHECKPOINTS
    if not checkpoints.is_dir():
        return None
    steps = complete_steps(checkpoints)
    if not steps:
        partial = partial_checkpoints(checkpoints)
        note = f" (only incomplete saves: {', '.join(q.name for q in partial)})" if partial else ""
        raise ValueError(
            f"run folder {p} holds no complete checkpoint in {checkpoints}{note}; "
            f"give its hf/ export if it has one, or: {ACCEPTED}"
        )
    return TrainingCheckpoint((checkpoints / str(steps[-1])).resolve(), steps[-1])


def locate(path: str | Path) -> tuple[Path, TrainingCheckpoint | None]:
    """An existing model path and the training checkpoint it names (None: a model directory), or
    a ValueError saying what the path lacks."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"model path {p} does not exist: give {ACCEPTED}")
    ckpt = find_training_checkpoint(p)
    if ckpt is not None or is_hf_directory(p) or is_flax_checkpoint(p):
        return p, ckpt
    if p.is_dir() and (p / "config.json").is_file():
        raise ValueError(
            f"{p} has a config.json but no weights (model.safetensors or an index of shards); give {ACCEPTED}"
        )
    raise ValueError(f"{p} is not a model: give {ACCEPTED}")


def checkpoint_config(ckpt: TrainingCheckpoint) -> Qwen2Config:
    """The model config saved with a training checkpoint (older runs: that of the run's model_path)."""
    meta = read_step_metadata(ckpt.step_dir)
    if "model_config" in meta:
        return Qwen2Config.from_hf_dict(meta["model_config"])
    model_path = ckpt.run_config().get("model_path")
    if not model_path:
        raise ValueError(
            f"{ckpt.step_dir} holds no model config and its run folder no config.json naming model_path; "
            "convert the checkpoint with the run's config.json beside its checkpoints/ folder"
        )
    from openrs_jax.core.model import read_config

    return read_config(model_path)


def load_checkpoint_params(ckpt: TrainingCheckpoint) -> tuple[dict, Qwen2Config]:
    """The parameters (numpy, fp32 as trained) and model config of a training checkpoint."""
    config = checkpoint_config(ckpt)
    params = read_step_params(ckpt.step_dir)
    check_tensor_names_and_shapes(hf_shapes_of(params, config), config, where=str(ckpt.step_dir))
    return params, config


def tokenizer_dir(model_path: str | Path) -> Path | None:
    """The folder holding the tokenizer that goes with a model path, or None when unknown.

    A model directory holds its own; a training checkpoint uses its run's `tokenizer/` (saved
    by the trainer), else the run's tokenizer_path / model_path when they are local folders.
    """
    if is_builtin_model(model_path):
        return Path(resolve_builtin(model_path))
    ckpt = find_training_checkpoint(model_path)
    if ckpt is None:
        p = Path(model_path).expanduser()
        return p if (p / "tokenizer.json").is_file() else None
    if ckpt.run_dir is not None and (ckpt.run_dir / RUN_TOKENIZER / "tokenizer.json").is_file():
        return ckpt.run_dir / RUN_TOKENIZER
    run = ckpt.run_config()
    for name in (run.get("tokenizer_path"), run.get("model_path")):
        if name:
            candidate = Path(resolve_builtin(name)).expanduser()
            if (candidate / "tokenizer.json").is_file():
                return candidate
    return None


def save_run_tokenizer(tokenizer_files: str | Path, run_dir: str | Path) -> Path:
    """Copies the tokenizer files into RUN/tokenizer/, so the run's checkpoints can be used alone."""
    out = Path(run_dir) / RUN_TOKENIZER
    if out.resolve() != Path(tokenizer_files).resolve():  # a run continued from its own folder
        out.mkdir(parents=True, exist_ok=True)
        copy_tokenizer_files(tokenizer_files, out)
    return out


def generation_files(model_path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(generation_config.json, config.json) contents of a model path; {} where absent.

    A training checkpoint has no generation config; its model config stands for config.json.
    """
    ckpt = find_training_checkpoint(model_path)
    if ckpt is not None:
        return {}, checkpoint_config(ckpt).to_hf_dict()
    d = Path(resolve_builtin(model_path)).expanduser()
    return read_json(d / "generation_config.json", optional=True), read_json(d / "config.json", optional=True)


def describe(model_path: str | Path) -> str:
    """The model a path stands for, as recorded in outputs: a run folder becomes its step folder."""
    if is_builtin_model(model_path):
        return str(model_path)
    ckpt = find_training_checkpoint(model_path)
    return str(ckpt.step_dir if ckpt else Path(model_path).expanduser().resolve())
