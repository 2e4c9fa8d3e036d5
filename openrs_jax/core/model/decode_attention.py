"""Attention of one new token per row over a KV cache, reading only each row's live slots.

A decode step attends from one query per row to that row's cached keys/values. Two
implementations, chosen in one place (`DecodeAttention.auto`):

- "pallas": JAX's Triton decode-attention kernel (`jax.experimental.pallas.ops.gpu.
  decode_attention.gqa`), on GPUs. It takes per-row `start_idx` (first real slot: prompts are
  left-padded) and `kv_seq_len` (one past the last filled slot; 0 for a finished row), and
  loads only the blocks in between: a row reads its own filled length, a finished row reads
  nothing. "pallas_interpret" runs the same kernel in Pallas interpret mode (CPU tests).
- "xla": plain einsum attention over every cache slot with a mask (CPUs, and GPUs where the
  kernel is missing or its signature differs). Its numbers are the model's reference.

The kernel requires a row's live slots to be contiguous, [start, index]: the sampler's layout
(left-padded prompts, then one slot per decoded token). The XLA path takes any mask.

Under a mesh the kernel (a custom call that XLA cannot partition) runs per shard via
`shard_map`: rows split over the batch axes, KV heads over "tensor" when that divides them.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

log = logging.getLogger("openrs_jax.core.model.decode_attention")

IMPLEMENTATIONS = ("xla", "pallas", "pallas_interpret")
# Keyword arguments of `gqa` this module relies on; the kernel is used only if all exist.
_KERNEL_ARGS = ("start_idx", "kv_seq_len", "sm_scale", "block_k", "k_splits", "interpret")
# Cache lengths the kernel takes: a multiple of its key block (128 slots).
KERNEL_SLOT_MULTIPLE = 128
MIN_KERNEL_PROGRAMS = 128


def load_kernel() -> Callable[..., jax.Array] | None:
    """JAX's grouped-query decode-attention kernel, or None when this JAX lacks it (or it moved,
    or its signature no longer has the arguments used here)."""
    try:
        from jax.experimental.pallas.ops.gpu import decode_attention as module

        kernel = module.gqa
        params = inspect.signature(kernel).parameters
    except Exception as e:  # ImportError, AttributeError, a Triton import failing, ...
        log.debug("decode-attention kernel unavailable: %s", e)
        return None
    missing = [a for a in _KERNEL_ARGS if a not in params]
    if missing:
        log.debug("decode-attention kernel signature lacks %s", missing)
        return None
    return kernel


def targets_gpu(mesh: jax.sharding.Mesh | None = None) -> bool:
    """Whether programs for `mesh` (else the default backend) run on NVIDIA GPUs; a mesh of
    GPU-target devices compiles for GPUs from a CPU-only host."""
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return platform in ("gpu", "cuda")


def kernel_splits(slots: int, programs: int) -> int:
    """Sequence splits of the kernel's grid for a cache of `slots` (a multiple of 128) and
    `programs` = rows x KV heads: enough for about 128 programs in all (one per SM of an H100),
    at most 16, each split whole 128-slot blocks. More splits add partial outputs to write and
    combine (Exp2's 72 rows x 2 KV heads need none; when few rows are left, the weights, not
    the attention, dominate a step's reads)."""
    want = min(16, -(-MIN_KERNEL_PROGRAMS // max(programs, 1)))
    splits = 1
    while splits * 2 <= want and (slots // KERNEL_SLOT_MULTIPLE) % (splits * 2) == 0:
        splits *= 2
    return splits


@dataclasses.dataclass(frozen=True)
class DecodeAttention:
    """Which decode-attention implementation runs, and the mesh it runs under (static: part of
    the compiled program's identity)."""

    implementation: str = "xla"
    mesh: jax.sharding.Mesh | None = None
    batch_axes: tuple[str, ...] = ()
    kv_axis: str | None = None

    def __post_init__(self) -> None:
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"decode attention {self.implementation!r}: choose one of {IMPLEMENTATIONS}")

    @classmethod
    def auto(cls, requested: str | None = None, **placement: Any) -> "DecodeAttention":
        """The implementation for the target devices (the mesh's, else the default backend's):
        the kernel on NVIDIA GPUs when available, else XLA.

        `requested` ("xla", "pallas", "pallas_interpret") overrides the choice; "pallas" falls
        back to XLA, with a warning, where the kernel cannot be loaded.
        """
        gpu = targets_gpu(placement.get("mesh"))
        choice = requested or ("pallas" if gpu else "xla")
        if choice.startswith("pallas") and load_kernel() is None:
            log.warning("decode-attention kernel not available in jax %s; using the XLA path", jax.__version__)
            choice = "xla"
        if choice == "pallas" and not gpu:
            log.warning("the Pallas decode-attention kernel needs a GPU; using the XLA path")
            choice = "xla"
        return cls(choice, **placement)

    @property
    def uses_kernel(self) -> bool:
        return self.implementation != "xla"

    def cache_slots(self, needed: int) -> int:
        """Slots to allocate for `needed`: the kernel needs whole 128-slot blocks."""
        return -(-needed // KERNEL_SLOT_MULTIPLE) * KERNEL_SLOT_MULTIPLE if self.uses_kernel else needed

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, start: jax.Array, length: jax.Array) -> jax.Array:
        """q [B, H, D] (one token per row); k, v [B, KV, S, D] (heads-major cache layer); start,
        length [B] int32: row b attends to slots start[b] <= s < length[b] (length 0: no slots,
        output 0). Returns [B, H, D] in q's dtype."""
        if not self.uses_kernel:
            return xla_decode_attention(q, k, v, start, length)
        run = self._kernel_call(k.shape[2])
        if self.mesh is None or self.mesh.size == 1:
            return run(q, k, v, start, length)
        rows = self.batch_axes or None
        heads = PartitionSpec(rows, self.kv_axis, None, None)
        # q heads are grouped by KV head (h // group), so splitting them evenly follows the KV split.
        q_spec = PartitionSpec(rows, self.kv_axis, None)
        return jax.shard_map(
            run, mesh=self.mesh, in_specs=(q_spec, heads, heads, PartitionSpec(rows), PartitionSpec(rows)),
            out_specs=q_spec, check_vma=False,
        )(q, k, v, start, length)

    def _kernel_call(self, slots: int) -> Callable[..., jax.Array]:
        kernel = load_kernel()
        if kernel is None:  # the choice was made where it loaded; this only guards misuse
            raise RuntimeError("decode-attention kernel not available")
        if slots % KERNEL_SLOT_MULTIPLE:
            raise ValueError(f"the decode-attention kernel needs a cache of a multiple of {KERNEL_SLOT_MULTIPLE} "
                             f"slots, got {slots} (allocate DecodeAttention.cache_slots(n))")
        interpret = self.implementation == "pallas_interpret"

        def run(q: jax.Array, k: jax.Array, v: jax.Array, start: jax.Array, length: jax.Array) -> jax.Array:
            # gqa wants [B, S, KV, D] and swaps to heads-major itself: the two swaps cancel, no copy.
            out = kernel(
                q, k.swapaxes(1, 2), v.swapaxes(1, 2), start_idx=start, kv_seq_len=length,
                sm_scale=1.0 / math.sqrt(q.shape[-1]), block_k=KERNEL_SLOT_MULTIPLE,
                k_splits=kernel_splits(slots, k.shape[0] * k.shape[1]), interpret=interpret,
            )
            return out.astype(q.dtype)  # its normalisation promotes bf16 to fp32

        return run


def xla_decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, start: jax.Array, length: jax.Array) -> jax.Array:
    """The masked einsum reference of `DecodeAttention` (same arguments); rows without slots give 0."""
    from openrs_jax.core.model.qwen2 import attention  # the model's own attention (one copy of the math)

    slots = jnp.arange(k.shape[2])
    mask = (slots[None, :] >= start[:, None]) & (slots[None, :] < length[:, None])  # [B, S]
    out = attention(q[:, None], k, v, mask[:, None, :], kv_heads_major=True)[:, 0]  # [B, H * D]
    out = jnp.where((length > start)[:, None], out, 0)
    return out.reshape(q.shape).astype(q.dtype)
