"""Reading and writing model weights: Hugging Face directories (safetensors) and our orbax format."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from openrs_jax.files import atomic_write_json, new_file_mode, read_json
from openrs_jax.core.model.config import Qwen2Config
from openrs_jax.core.model.params import check_tensor_names_and_shapes, hf_shapes_of, hf_to_params, params_to_hf

# Marker file that identifies a directory written by `save_flax_checkpoint`.
FLAX_MARKER = "openrs_jax_params.json"
HF_INDEX = "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 2 * 1024**3
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja",
)


def is_flax_checkpoint(path: str | Path) -> bool:
    return (Path(path) / FLAX_MARKER).is_file()


def is_hf_directory(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and ((p / "model.safetensors").is_file() or (p / HF_INDEX).is_file())


def _require_dir(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{what} {p} does not exist: check the path")
    if not p.is_dir():
        raise ValueError(f"{what} {p} is a file, not a directory")
    return p.resolve()


def read_hf_tensors(hf_dir: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a HF directory (single `model.safetensors` or sharded with an index)."""
    from safetensors.numpy import load_file

    d = _require_dir(hf_dir, "model directory")
    if (d / HF_INDEX).is_file():
        index = read_json(d / HF_INDEX)
        files = sorted(set(index.get("weight_map", {}).values()))
    elif (d / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        found = ", ".join(sorted(p.name for p in d.iterdir())[:10]) or "nothing"
        raise ValueError(
            f"{d} holds no model.safetensors or {HF_INDEX} (found: {found}); "
            "give a Hugging Face model directory saved with safetensors"
        )
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        f = d / name
        if not f.is_file():
            raise ValueError(f"{d}: shard {name} listed in {HF_INDEX} is missing")
        tensors.update(load_file(str(f)))
    return tensors


def load_hf_params(hf_dir: str | Path) -> tuple[dict, Qwen2Config]:
    """Our parameter tree (numpy, in the checkpoint's dtype) and config from a HF directory."""
    d = _require_dir(hf_dir, "model directory")
    config = Qwen2Config.from_json(d)
    params = hf_to_params(read_hf_tensors(d), config, where=str(d))
    return params, config


def write_hf_directory(
    out_dir: str | Path,
    params: Mapping[str, Any],
    config: Qwen2Config,
    *,
    dtype: str = "bfloat16",
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    generation_config: Mapping[str, Any] | None = None,
) -> Path:
    """Writes safetensors (sharded above `max_shard_bytes`), config.json, generation_config.json
    and, when `tokenizer_dir` is given, its tokenizer files. Returns the directory."""
    import ml_dtypes

    np_dtype = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf(params, config, dtype=np_dtype)

    shards: list[dict[str, np.ndarray]] = [{}]
    for name, value in tensors.items():
        if shards[-1] and sum(v.nbytes for v in shards[-1].values()) + value.nbytes > max_shard_bytes:
            shards.append({})
        shards[-1][name] = value
    for stale in list(out.glob("model*.safetensors")) + [out / HF_INDEX]:
        stale.unlink(missing_ok=True)
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for fname, shard in zip(files, shards):
        _save_safetensors(shard, out / fname)
    if n > 1:  # sharded: an index says which file holds each tensor
        weight_map = {name: fname for fname, shard in zip(files, shards) for name in shard}
        total = sum(v.nbytes for v in tensors.values())
        atomic_write_json(out / HF_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})

    atomic_write_json(out / "config.json", {**config.to_hf_dict(), "torch_dtype": dtype})
    gen = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, **(generation_config or {})}
    atomic_write_json(out / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, out)
    return out


def _save_safetensors(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    """`save_file`, then the mode `open()` gives new files (0o666 less the umask): safetensors
    writes through a private temporary file (mode 0600), which would hide the weights from other
    users and serving processes that can read the JSON files beside them."""
    from safetensors.numpy import save_file

    save_file(dict(tensors), str(path), metadata={"format": "pt"})
    path.chmod(new_file_mode())


def copy_tokenizer_files(tokenizer_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Copies the tokenizer files found in `tokenizer_dir` into `out_dir`."""
    src = _require_dir(tokenizer_dir, "tokenizer directory")
    copied = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not copied:
        raise ValueError(f"tokenizer directory {src} holds no tokenizer files (tokenizer.json, ...)")
    for name in copied:
        shutil.copy2(src / name, Path(out_dir) / name)
    return copied


def save_flax_checkpoint(out_dir: str | Path, params: Mapping[str, Any], config: Qwen2Config) -> Path:
    """Writes our parameters as an orbax checkpoint plus the HF config they belong to."""
    import orbax.checkpoint as ocp

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = out / "params"
    if target.exists():
        shutil.rmtree(target)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, dict(params))
    atomic_write_json(out / "config.json", config.to_hf_dict())
    atomic_write_json(out / FLAX_MARKER, {"format": "openrs-jax params", "version": 1}, indent=None)
    return out


def load_flax_checkpoint(ckpt_dir: str | Path) -> tuple[dict, Qwen2Config]:
    """Parameters (numpy) and config from a directory written by `save_flax_checkpoint`
    (`model.sources.locate` has checked that it is one)."""
    import jax
    import orbax.checkpoint as ocp

    d = Path(ckpt_dir).expanduser().resolve()
    config = Qwen2Config.from_json(d)
    with ocp.StandardCheckpointer() as ckptr:
        params = jax.tree.map(np.asarray, ckptr.restore(d / "params"))
    check_tensor_names_and_shapes(hf_shapes_of(params, config), config, where=str(d))
    return params, config
