"""Device mesh and parameter placements for training and rollouts.

One mesh with three named axes serves every program:

- `data`: plain data parallelism (parameters replicated along it);
- `fsdp`: data parallelism with parameters and optimizer state sharded along it (ZeRO-3);
- `tensor`: Megatron-style tensor parallelism (columns of q/k/v/gate/up, rows of o/down,
  the vocabulary of the embeddings); size 1 unless a model is too large for one device.

Batches are split over `data` x `fsdp` on their first (row) axis. The same code runs on one
device (every axis of size 1) and on many.

Placements come from one table of rules, `PARTITION_RULES`, keyed on parameter paths
(`layers/q_proj/kernel`, ...). Each rule names the dimension sharded over `tensor`; `fsdp`
then goes on the largest dimension left that it divides, never the stacked layer axis (scan
slices it). The rules match a path's end, so they place optimizer state too (Adam's
`mu/layers/q_proj/kernel` sits like its parameter): `tree_shardings` places any pytree that
holds parameter-shaped leaves (a train state, gradients, a bf16 copy).

Training keeps fp32 parameters and optimizer state sharded (`tree_shardings`); rollouts use
a bf16 copy replicated over `data` and `fsdp` (every device decodes its own rows with the
whole model, no gathers per token) and split over `tensor` only (`rollout_params`).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


MESH_AXES = ("data", "fsdp", "tensor")
# Axes that split batch rows: every device but those of one tensor-parallel group sees other rows.
BATCH_AXES = ("data", "fsdp")
DEFAULT_MESH = {"data": 1, "fsdp": -1, "tensor": 1}

# (regex on the end of a parameter path, dimension sharded over "tensor" or None).
# Shapes: embed_tokens [V, D]; lm_head [D, V]; layers/*_proj/kernel [L, in, out];
# layers/*_proj/bias [L, out]; layers/*_norm [L, D]; norm [D].
PARTITION_RULES: tuple[tuple[str, int | None], ...] = (
    (r"(^|/)embed_tokens$", 0),
    (r"(^|/)lm_head$", 1),
    (r"(^|/)layers/(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", 2),
    (r"(^|/)layers/(q_proj|k_proj|v_proj)/bias$", 1),
    (r"(^|/)layers/(o_proj|down_proj)/kernel$", 1),
    (r"(^|/)layers/(input_norm|post_attn_norm)$", None),
    (r"(^|/)norm$", None),
)
_COMPILED_RULES = tuple((re.compile(pattern), dim) for pattern, dim in PARTITION_RULES)
_LAYER_PATH = re.compile(r"(^|/)layers/")


def parse_mesh_spec(spec: Mapping[str, int] | str | None) -> dict[str, int]:
    """Axis sizes from a mapping (`{"fsdp": -1}`) or a string (`"data=1,fsdp=-1,tensor=1"`).

    Missing axes have size 1, except that with no spec at all every device goes to `fsdp`.
    """
    if spec is None:
        return dict(DEFAULT_MESH)
    if isinstance(spec, str):
        items: dict[str, Any] = {}
        for part in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"mesh spec {spec!r}: write axes as name=size, e.g. 'data=1,fsdp=-1,tensor=1'")
            items[name.strip()] = value.strip()
        spec = items
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid axes: {', '.join(MESH_AXES)}")
    sizes = {}
    for axis in MESH_AXES:
        try:
            sizes[axis] = int(spec.get(axis, 1))
        except (TypeError, ValueError):
            raise ValueError(f"mesh axis {axis}={spec[axis]!r} is not an integer") from None
        if sizes[axis] == 0 or sizes[axis] < -1:
            raise ValueError(f"mesh axis {axis}={sizes[axis]}: sizes are positive, or -1 for 'all remaining devices'")
    return sizes


def make_mesh(spec: Mapping[str, int] | str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor); one axis may be -1 to take the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh_spec(spec)
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"mesh {sizes}: at most one axis may be -1")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"mesh {sizes}: {len(devices)} devices are not a multiple of {fixed}")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"mesh {sizes} needs {math.prod(sizes.values())} devices but {len(devices)} are available; "
            "set one axis to -1 to use them all"
        )
    shape = tuple(sizes[a] for a in MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of row shards of a batch."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def path_string(path: tuple) -> str:
    """`layers/q_proj/kernel` from a pytree key path (dict keys and attribute names)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def partition_spec(path: str, shape: Sequence[int], mesh: Mesh, *, fsdp: bool = True) -> P:
    """Placement of one leaf from `PARTITION_RULES`; axes that do not divide a dimension are dropped.

    Scalars (step counters) are replicated; any other unmatched leaf is an error, so that a
    new parameter cannot silently end up replicated.
    """
    shape = tuple(shape)
    if len(shape) == 0:
        return P()
    for pattern, tensor_dim in _COMPILED_RULES:
        if pattern.search(path):
            break
    else:
        raise ValueError(f"no partition rule matches parameter {path!r} {shape}; add one to PARTITION_RULES")
    spec: list[str | None] = [None] * len(shape)
    tensor, fsdp_size = mesh.shape["tensor"], mesh.shape["fsdp"]
    if tensor_dim is not None and tensor > 1 and shape[tensor_dim] % tensor == 0:
        spec[tensor_dim] = "tensor"
    if fsdp and fsdp_size > 1:
        first = 1 if _LAYER_PATH.search(path) else 0
        candidates = [d for d in range(first, len(shape)) if spec[d] is None and shape[d] % fsdp_size == 0]
        if candidates:
            spec[max(candidates, key=lambda d: shape[d])] = "fsdp"
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, *, fsdp: bool = True) -> Any:
    """NamedShardings for every leaf of a tree of parameters / optimizer state / train state.

    Leaves may be arrays or `jax.ShapeDtypeStruct`s. With `fsdp=False` leaves are placed as
    for rollouts: replicated except along `tensor`.
    """

    def one(path: tuple, leaf: Any) -> NamedSharding:
        return NamedSharding(mesh, partition_spec(path_string(path), np.shape(leaf), mesh, fsdp=fsdp))

    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, ndim: int = 1, row_axis: int = 0) -> NamedSharding:
    """Rows (dimension `row_axis`) split over `data` x `fsdp`, other dimensions whole."""
    spec: list[Any] = [None] * ndim
    spec[row_axis] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def constrain_batch(x: jax.Array, mesh: Mesh, row_axis: int = 0) -> jax.Array:
    """Inside jit: keeps a value split by rows (uneven splits are padded by XLA)."""
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim, row_axis))


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Puts every array of a batch (a dict; None values kept) on the mesh, rows split.

    Each host array is the whole global batch. With several processes every process passes
    the same values (numpy is placed as a global value: each process keeps only its own
    devices' rows); a host array must not go through a local device first.
    """
    dp = data_parallel_size(mesh)

    def place(key: str, value: Any) -> jax.Array:
        value = np.asarray(value) if not isinstance(value, jax.Array) else value
        if value.shape[0] % dp:
            raise ValueError(
                f"batch field {key!r} has {value.shape[0]} rows, not a multiple of the "
                f"{dp} data-parallel devices (mesh {dict(mesh.shape)})"
            )
        return jax.device_put(value, batch_sharding(mesh, value.ndim))

    return {key: None if value is None else place(key, value) for key, value in batch.items()}


@functools.partial(jax.jit, static_argnames=("mesh", "dtype"))
def rollout_params(params: Any, mesh: Mesh, dtype: Any = jnp.bfloat16) -> Any:
    """The rollout copy: parameters cast to `dtype`, replicated except along `tensor` (jitted).

    Casting happens on the sharded training copy before the gather, so only `dtype` bytes
    cross the interconnect. Call once per step, after the update.
    """
    cast = jax.tree.map(lambda x: x.astype(dtype), params)
    return jax.lax.with_sharding_constraint(cast, tree_shardings(cast, mesh, fsdp=False))


def to_host(tree: Any) -> Any:
    """The whole value of every array in `tree` as numpy, on every process.

    One process: `jax.device_get`. Several: arrays spread over other processes' devices are
    all-gathered (a collective: every process must call this with the same tree).
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    def one(x: Any) -> Any:
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(one, tree)
