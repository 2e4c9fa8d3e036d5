"""The policy layer: one model path becomes a model ready to sample and train.

`Policy.load(model_path, mesh=..., compute_dtype=...)` is the one place that resolves a model
argument (a Hugging Face directory, a training run RUN or RUN/checkpoints/N, an openrs-jax
checkpoint, a Hub id, `builtin:tiny` or `preset:NAME`), finds and checks its tokenizer, the ids
that stop a completion, builds the device mesh and the `Sampler`, and later places the weights
on the mesh (`load_params`). The trainer, `evaluate`, `generate`, `curate difficulty` and the
benchmarks all build from it. Loading is cheap (config and tokenizer): a mistake in the setup
shows in seconds, before gigabytes of weights are read.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from openrs_jax.core import sharding
from openrs_jax.core.model import Qwen2Config, abstract_model, init_model, params_of, read_config
from openrs_jax.core.model import load_params as read_params
from openrs_jax.core.model.io import is_flax_checkpoint, is_hf_directory
from openrs_jax.core.model.sources import (
    describe as describe_model, find_training_checkpoint, generation_files, tokenizer_dir,
)
from openrs_jax.core.model_paths import ACCEPTED, BUILTIN_MODELS, is_builtin_model, is_preset, resolve_builtin
from openrs_jax.core.sampling import Sampler
from openrs_jax.core.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger("openrs_jax.policy")

# Decoding only (evaluation, generation, curation): every device holds a whole copy of the
# model and decodes its own rows, so no weights move per token.
DECODE_MESH = {"data": -1, "fsdp": 1, "tensor": 1}
DTYPES = ("float32", "bfloat16", "float16")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def default_compute_dtype() -> str:
    """bfloat16 on GPUs (their matrix units), float32 elsewhere (bf16 is slow on CPUs)."""
    return "bfloat16" if jax.default_backend() == "gpu" else "float32"


def resolve_dtype(dtype: str | None) -> str:
    """`dtype`, with "auto" (or None) meaning `default_compute_dtype()`."""
    if dtype in (None, "auto"):
        return default_compute_dtype()
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return dtype


def build_mesh(spec: Mapping[str, int] | str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh of `spec` (None: every device on fsdp) over `devices`
    (default all); a spec with only fixed sizes may use fewer devices than there are."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = sharding.parse_mesh_spec(spec)
    if all(size > 0 for size in sizes.values()):
        wanted = math.prod(sizes.values())
        if wanted < len(devices):
            log.info("mesh %s uses %d of the %d devices", sizes, wanted, len(devices))
            devices = devices[:wanted]
    return sharding.make_mesh(sizes, devices)


def resolve_model_path(name: str, flag: str = "--config.model.path") -> str:
    """A local model for `name`: itself (a path, a built-in, a preset) or a Hub snapshot (org/name)."""
    if is_builtin_model(name) or is_preset(name) or Path(resolve_builtin(name)).expanduser().exists():
        return name  # (resolve_builtin refuses an unknown built-in name, naming those that exist)
    if HUB_ID.fullmatch(name) and not name.startswith((".", "/")):
        from openrs_jax.hub import require_hub

        require_hub(f"model {name!r}", f"download it where the Hub can be reached and set {flag} to its directory")
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt"])
        except Exception as e:  # noqa: BLE001 - offline, gated, misspelt: all mean the same to the user
            raise ValueError(
                f"model {name!r} is not a local directory and could not be downloaded from the Hugging Face Hub "
                f"({type(e).__name__}); download it first and set {flag} to its directory"
            ) from None
    raise ValueError(f"model path {name} does not exist: give {ACCEPTED}")


def _config_only(path: Path) -> Path | None:
    """The config.json of a path that holds a model's shape but no weights, else None."""
    if path.is_file():
        if path.suffix != ".json":
            raise ValueError(f"{path} is a file but not a config.json; give a model directory or its config.json")
        return path
    holds_weights = is_hf_directory(path) or is_flax_checkpoint(path) or find_training_checkpoint(path)
    if not holds_weights and (path / "config.json").is_file():
        return path / "config.json"
    return None


def model_shape(model_dir: str, *, allow_config_only: bool = False) -> tuple[Qwen2Config, bool]:
    """The config of a resolved model (no weights read) and whether its weights are random.

    Built-ins and presets have random weights; with `allow_config_only` (benchmarks) so has a
    directory holding only a config.json, or a config.json file.
    """
    if is_preset(model_dir):
        return Qwen2Config.preset(model_dir), True
    if is_builtin_model(model_dir):
        return read_config(model_dir), True
    config_file = _config_only(Path(model_dir).expanduser()) if allow_config_only else None
    if config_file is not None:
        return Qwen2Config.from_json(config_file), True
    return read_config(model_dir), False


def _model_eos_ids(model_dir: str, config: Qwen2Config) -> list[int]:
    """The EOS ids of the model config and of its generation_config.json (vLLM stops at both)."""
    generation = {} if is_preset(model_dir) else generation_files(model_dir)[0]
    values = [v for v in (config.eos_token_id, generation.get("eos_token_id")) if v is not None]
    return [int(i) for v in values for i in ([v] if isinstance(v, int) else v)]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A model ready to sample and train: everything resolved from one model path."""

    source: str  # what the user gave (directory, RUN, RUN/checkpoints/N, Hub id, builtin:tiny, preset:NAME)
    model_dir: str  # the local directory / built-in / preset it resolved to
    model_config: Qwen2Config  # with dtype (compute), param_dtype, remat applied
    graphdef: Any  # nnx graphdef of the model
    tokenizer: Tokenizer | None  # None only with need_tokenizer=False and no tokenizer found
    tokenizer_dir: Path | None
    eos_ids: tuple[int, ...]  # stop ids (tokenizer + generation_config + model config)
    mesh: Mesh
    sampler: Sampler
    random_weights: bool = False  # built-ins, presets, config-only benchmark models

    @classmethod
    def load(
        cls,
        model_path: str,
        *,
        tokenizer_path: str = "",
        mesh: Mesh | Mapping[str, int] | str | None = None,
        devices: Sequence[jax.Device] | None = None,
        compute_dtype: str = "auto",
        param_dtype: str = "float32",
        remat: str = "full",
        prompt_bucket: int = 64,
        require_chat_template: bool = False,
        need_tokenizer: bool = True,
        allow_config_only: bool = False,
        sampler_options: Mapping[str, Any] | None = None,
        flags: tuple[str, str] = ("--config.model.path", "--config.model.tokenizer_path"),
    ) -> "Policy":
        """Resolves `model_path` (see the module doc) without reading weights.

        mesh: a Mesh, a spec for `build_mesh` over `devices`, or None (every device on fsdp).
        compute_dtype "auto": bfloat16 on GPU, float32 elsewhere. tokenizer_path: another
        tokenizer (default the model's). need_tokenizer=False: a model without one is accepted
        (tokenizer None, stop ids from the model config). allow_config_only: a config.json
        without weights gets random ones (benchmarks). sampler_options: more `Sampler` arguments.
        flags: the names of the model and tokenizer arguments, as errors should call them.
        """
        model_flag, tokenizer_flag = flags
        model_dir = resolve_model_path(model_path, model_flag)
        base, random_weights = model_shape(model_dir, allow_config_only=allow_config_only)
        # The tokenizer folder: tokenizer_path's (a folder, a built-in, a run), else the model's own
        # (a directory's, a training run's; the demo tokenizer for presets).
        if tokenizer_path and tokenizer_path != model_path:
            directory = tokenizer_dir(tokenizer_path) or Path(resolve_builtin(tokenizer_path)).expanduser()
        else:
            directory = next(iter(BUILTIN_MODELS.values())) if is_preset(model_dir) else tokenizer_dir(model_dir)
        if directory is None and need_tokenizer:
            directory = Path(model_dir).expanduser()  # load_tokenizer says what is missing there
        tokenizer = load_tokenizer(directory) if directory is not None else None
        if tokenizer is not None:
            if require_chat_template and not tokenizer.has_chat_template:
                raise ValueError(
                    f"tokenizer {directory} has no chat template; use a chat model's tokenizer "
                    "(tokenizer_config.json with chat_template, or chat_template.jinja)"
                )
            if tokenizer.vocab_size > base.vocab_size:
                raise ValueError(
                    f"tokenizer has {tokenizer.vocab_size} tokens but the model only {base.vocab_size}: "
                    f"{tokenizer_flag} does not belong to {model_flag}"
                )
        model_eos = _model_eos_ids(model_dir, base)
        eos_ids = tuple(sorted({*model_eos, *([tokenizer.eos_id] if tokenizer is not None else [])}))
        model_config = base.replace(dtype=resolve_dtype(compute_dtype), param_dtype=resolve_dtype(param_dtype),
                                    remat=remat)
        if not isinstance(mesh, Mesh):
            mesh = build_mesh(mesh, devices)
        sampler = Sampler(model_config, mesh=mesh, prompt_bucket=prompt_bucket, **dict(sampler_options or {}))
        return cls(
            source=str(model_path), model_dir=str(model_dir), model_config=model_config,
            graphdef=nnx.split(abstract_model(model_config))[0], tokenizer=tokenizer, tokenizer_dir=directory,
            eos_ids=eos_ids, mesh=mesh, sampler=sampler, random_weights=random_weights,
        )

    def load_params(self, seed: int = 0) -> dict:
        """The weights in `param_dtype`, placed on the mesh as for training (`sharding.tree_shardings`).

        Built-ins, presets and config-only models get random weights drawn (in float32) from
        `seed`; a training checkpoint gives its parameters, not its optimizer state.
        """
        if self.random_weights:
            shape = self.model_config.replace(dtype="float32", param_dtype="float32", remat="none")
            params = params_of(init_model(shape, seed=seed))
        else:
            params, _ = read_params(self.model_dir)
        shardings = sharding.tree_shardings(params, self.mesh)
        # Placed shard by shard before the cast, so no device holds the weights whole.
        placed = jax.device_put(params, shardings)
        cast = jnp.dtype(self.model_config.param_dtype)
        return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(cast), p), out_shardings=shardings)(placed)

    def describe(self) -> str:
        """The model as recorded in outputs (a run folder becomes its step folder)."""
        return self.source if is_preset(self.source) else describe_model(self.model_dir)


__all__ = ["DECODE_MESH", "Policy", "build_mesh", "default_compute_dtype", "resolve_dtype",
           "resolve_model_path"]
