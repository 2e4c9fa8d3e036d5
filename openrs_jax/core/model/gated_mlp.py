"""The MLP's gated product silu(x @ W_gate) * (x @ W_up), without writing gate and up.

In a full-sequence pass the MLP's [tokens, intermediate] tensors are the largest a layer
writes (8,960 columns against 1,536 for the 1.5B model). XLA computes gate and up with two
matmuls, writes both, then writes their product: three such tensors forward, and in the
backward pass gate and up again plus their two gradients. A matmul kernel that keeps both
accumulators on chip (fp32) and applies silu(gate) * up before its one write writes only
the product, not gate and up: one [tokens, I] tensor instead of three.

`GatedMlp.mlp` is the whole MLP, product @ w_down, as one differentiable op that keeps only its
input x for the backward pass. Its backward kernel computes, per [rows, intermediate] tile, gate
and up again and d product = dy @ w_down.T (three fp32 accumulators on chip, the same three
matmuls XLA's recomputation and backward pass run) and writes the product (for w_down's
gradient), d gate and d up: three [tokens, I] tensors where XLA writes six (gate, up, product,
d product, d gate, d up). In the update's recomputation of a layer (`model.layer_grads`) the
forward output is unused, so XLA drops the forward kernel there. `GatedMlp.__call__` (the
product alone) keeps XLA's matmuls when differentiated.

Implementations, chosen in one place (`GatedMlp.auto`, logged once per choice):

- "pallas": a Pallas (Triton) kernel, on NVIDIA GPUs for bf16/fp16 and shapes it tiles;
- "pallas_interpret": the same kernel in Pallas interpret mode (CPU tests);
- "xla": the plain expression (CPUs, fp32, other shapes): the model's reference numbers.

Under a mesh the kernel (a custom call XLA cannot partition) runs per shard with `shard_map`:
rows over the batch axes, the intermediate dimension over "tensor" (the weights' own split).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

log = logging.getLogger("openrs_jax.core.model.gated_mlp")

IMPLEMENTATIONS = ("xla", "pallas", "pallas_interpret")
_KERNEL_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
# Tile sizes: rows x intermediate columns per program, and the contraction step.
BLOCK_M, BLOCK_N, BLOCK_K = 64, 128, 64
NUM_WARPS, NUM_STAGES = 4, 3  # not tuned on a GPU yet
# The backward kernel's tiles: three fp32 accumulators and five input tiles per stage; 64
# intermediate columns and 2 stages keep it within an A40's 100 KB of shared memory.
BACKWARD_BLOCK_N, BACKWARD_NUM_WARPS, BACKWARD_NUM_STAGES = 64, 4, 2
_logged: set[tuple] = set()


def xla_gated_product(x: jax.Array, w_gate: jax.Array, w_up: jax.Array) -> jax.Array:
    """silu(x @ w_gate) * (x @ w_up), as XLA computes it (the reference)."""
    return jax.nn.silu(x @ w_gate) * (x @ w_up)


@dataclasses.dataclass(frozen=True)
class GatedMlp:
    """Which gated-product implementation runs, and the mesh it runs under (static)."""

    implementation: str = "xla"
    mesh: Mesh | None = None

    def __post_init__(self) -> None:
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"gated MLP {self.implementation!r}: choose one of {IMPLEMENTATIONS}")

    @classmethod
    def auto(cls, platform: str | None, mesh: Mesh | None = None, requested: str | None = None) -> "GatedMlp":
        """The kernel on GPUs ("gpu" platform, e.g. `attention.platform_of(mesh)`), else XLA;
        `requested` overrides. Shapes and dtypes the kernel cannot take fall back per call."""
        choice = requested or ("pallas" if platform == "gpu" else "xla")
        return cls(choice, mesh)

    def kernel_fits(self, x: jax.Array, w_gate: jax.Array) -> tuple[bool, str]:
        """Whether the kernel takes these operands (the per-shard shapes under a mesh), and why not."""
        if self.implementation == "xla":
            return False, "XLA chosen for this platform"
        if self.implementation == "pallas" and jnp.dtype(x.dtype) not in _KERNEL_DTYPES:
            return False, f"{x.dtype} (the kernel runs bf16/fp16)"
        rows, columns = x.shape[0] // self._row_shards(), w_gate.shape[1] // self._tensor_shards(w_gate)
        if rows % BLOCK_M or columns % BLOCK_N or x.shape[1] % BLOCK_K:
            return False, f"shape rows {rows}, hidden {x.shape[1]}, intermediate {columns} not in whole tiles"
        return True, "Pallas kernel"

    def _use_kernel(self, what: str, x2: jax.Array, w_gate: jax.Array) -> bool:
        """`kernel_fits` for the rows x2 [M, D], logged once per choice and shape."""
        fits, why = self.kernel_fits(x2, w_gate)
        key = (what, self.implementation, fits, str(x2.dtype), x2.shape, w_gate.shape)
        if key not in _logged:
            _logged.add(key)
            log.info("%s: %s (%s; %s, rows %d, %s)", what, "kernel" if fits else "xla", why, x2.dtype,
                     x2.shape[0], w_gate.shape)
        return fits

    def __call__(self, x: jax.Array, w_gate: jax.Array, w_up: jax.Array) -> jax.Array:
        """silu(x @ w_gate) * (x @ w_up) for x [..., D], weights [D, I]."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if not self._use_kernel("MLP gated product", x2, w_gate):
            return xla_gated_product(x, w_gate, w_up)
        run = self._per_shard(_gated_product, w_gate)
        return run(x2, w_gate, w_up).reshape(*lead, w_gate.shape[1])

    def mlp(self, x: jax.Array, w_gate: jax.Array, w_up: jax.Array, w_down: jax.Array) -> jax.Array:
        """The whole bias-free MLP (silu(x @ w_gate) * (x @ w_up)) @ w_down for x [..., D], w_down [I, D].

        With the kernel, differentiating it runs `gated_mlp_backward` (recomputes gate and up per
        tile with d product = dy @ w_down.T, writes the product and d gate, d up) and keeps only x
        for the backward pass: gate, up and d product are never written."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if not self._use_kernel("MLP with backward kernel", x2, w_gate):
            return xla_gated_product(x, w_gate, w_up) @ w_down
        run = self._per_shard(_backward_outputs, w_gate, backward=True)
        return _gated_mlp(self, run, x2, w_gate, w_up, w_down).reshape(*lead, w_down.shape[1])

    def _per_shard(self, kernel: Any, w_gate: jax.Array, backward: bool = False) -> Any:
        """`kernel(interpret, ...)` with interpret mode bound, per shard under a mesh: rows over the
        batch axes, the intermediate dimension over "tensor". Operands: the forward kernel's
        (x, w_gate, w_up), or with `backward` the backward kernel's (x, w_gate, w_up, dy, w_down)."""
        run = functools.partial(kernel, self.implementation == "pallas_interpret")
        if self.mesh is None or self.mesh.size == 1:
            return run
        rows = PartitionSpec(_batch_axes(self.mesh), None)
        cols = _tensor_axis(self.mesh, w_gate)
        weights, product = PartitionSpec(None, cols), PartitionSpec(_batch_axes(self.mesh), cols)
        if backward:
            in_specs, out_specs = (rows, weights, weights, rows, PartitionSpec(cols, None)), (product,) * 3
        else:
            in_specs, out_specs = (rows, weights, weights), product
        return jax.shard_map(run, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    def _row_shards(self) -> int:
        if self.mesh is None:
            return 1
        return math.prod(self.mesh.shape[a] for a in _batch_axes(self.mesh))

    def _tensor_shards(self, w: jax.Array) -> int:
        return self.mesh.shape["tensor"] if self.mesh is not None and _tensor_axis(self.mesh, w) else 1


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
    from openrs_jax.core.sharding import BATCH_AXES

    return tuple(a for a in BATCH_AXES if a in mesh.shape and mesh.shape[a] > 1)


def _tensor_axis(mesh: Mesh, w: jax.Array) -> str | None:
    size = mesh.shape.get("tensor", 1)
    return "tensor" if size > 1 and w.shape[1] % size == 0 else None


# --- the kernel ---------------------------------------------------------------------------


def _accumulate(x_ref: Any, wg_ref: Any, wu_ref: Any, dy_ref: Any = None, wd_ref: Any = None) -> tuple:
    """gate and up tiles [rows, columns] in fp32, over the whole contraction; with `dy_ref` and
    `wd_ref` (the backward kernel) also d product = dy @ w_down.T."""
    from jax.experimental import pallas as pl

    steps = x_ref.shape[1] // BLOCK_K

    def body(i: jax.Array, acc: tuple) -> tuple:
        k = pl.ds(pl.multiple_of(i * BLOCK_K, BLOCK_K), BLOCK_K)
        x = x_ref[:, k]
        g = acc[0] + jnp.dot(x, wg_ref[k, :], preferred_element_type=jnp.float32)
        u = acc[1] + jnp.dot(x, wu_ref[k, :], preferred_element_type=jnp.float32)
        if dy_ref is None:
            return g, u
        return g, u, acc[2] + pl.dot(dy_ref[:, k], wd_ref[:, k], trans_b=True).astype(jnp.float32)

    zeros = jnp.zeros((x_ref.shape[0], wg_ref.shape[1]), jnp.float32)
    return jax.lax.fori_loop(0, steps, body, (zeros,) * (2 if dy_ref is None else 3))


def _forward_kernel(x_ref, wg_ref, wu_ref, out_ref):
    g, u = _accumulate(x_ref, wg_ref, wu_ref)
    out_ref[...] = (g * jax.nn.sigmoid(g) * u).astype(out_ref.dtype)


def _forward_outputs(interpret: bool, x: jax.Array, w_gate: jax.Array, w_up: jax.Array) -> jax.Array:
    """The product [M, I] from x [M, D] and the two [D, I] weights, over [BLOCK_M, BLOCK_N]
    output tiles, named "gated_mlp_forward" (the plan's FLOP count, `bench.hlo_cost`,
    recognises it: two [M, D] x [D, I] matmuls)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu  # Triton, not Mosaic GPU (the default on Hopper)

    m, d = x.shape
    n = w_gate.shape[1]
    weights = pl.BlockSpec((d, BLOCK_N), lambda i, j: (0, j))
    return pl.pallas_call(
        _forward_kernel, grid=(m // BLOCK_M, n // BLOCK_N), name="gated_mlp_forward",
        in_specs=[pl.BlockSpec((BLOCK_M, d), lambda i, j: (i, 0)), weights, weights],
        out_specs=pl.BlockSpec((BLOCK_M, BLOCK_N), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((m, n), x.dtype), interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES),
    )(x, w_gate, w_up)


def _backward_kernel(x_ref, wg_ref, wu_ref, dy_ref, wd_ref, h_ref, dg_ref, du_ref):
    # gate, up and d product = dy @ w_down.T for one [BLOCK_M, BLOCK_N] tile, all on chip (fp32).
    g, u, dp = _accumulate(x_ref, wg_ref, wu_ref, dy_ref, wd_ref)
    sig = jax.nn.sigmoid(g)
    silu = g * sig
    h_ref[...] = (silu * u).astype(h_ref.dtype)
    dg_ref[...] = (dp * u * (sig + silu * (1.0 - sig))).astype(dg_ref.dtype)
    du_ref[...] = (dp * silu).astype(du_ref.dtype)


def _backward_outputs(interpret: bool, x: jax.Array, w_gate: jax.Array, w_up: jax.Array, dy: jax.Array,
                      w_down: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(product, d gate, d up) [M, I] from x [M, D], dy [M, D] and the three weights, named
    "gated_mlp_backward" (`bench.hlo_cost` counts its three [M, D] x [D, I] matmuls)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    m, d = x.shape
    n = w_gate.shape[1]
    rows = pl.BlockSpec((BLOCK_M, d), lambda i, j: (i, 0))
    block_n = BACKWARD_BLOCK_N
    weights = pl.BlockSpec((d, block_n), lambda i, j: (0, j))
    tile = pl.BlockSpec((BLOCK_M, block_n), lambda i, j: (i, j))
    out = jax.ShapeDtypeStruct((m, n), x.dtype)
    return pl.pallas_call(
        _backward_kernel, grid=(m // BLOCK_M, n // block_n), name="gated_mlp_backward",
        in_specs=[rows, weights, weights, rows, pl.BlockSpec((block_n, d), lambda i, j: (j, 0))],
        out_specs=[tile, tile, tile], out_shape=[out, out, out], interpret=interpret,
        compiler_params=plgpu.CompilerParams(num_warps=BACKWARD_NUM_WARPS, num_stages=BACKWARD_NUM_STAGES),
    )(x, w_gate, w_up, dy, w_down)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _gated_mlp(forward: Any, backward: Any, x: jax.Array, w_gate: jax.Array, w_up: jax.Array,
               w_down: jax.Array) -> jax.Array:
    # forward: the gated product (the kernel, as in undifferentiated passes); backward: the
    # backward kernel (per shard under a mesh).
    return forward(x, w_gate, w_up) @ w_down


def _gated_mlp_fwd(forward, backward, x, w_gate, w_up, w_down):
    # Only x and the weights are kept: where the output is not used (the layer recomputation in
    # the backward pass of `layer_grads`), XLA drops the forward kernel altogether.
    return forward(x, w_gate, w_up) @ w_down, (x, w_gate, w_up, w_down)


def _gated_mlp_bwd(forward, backward, residuals, dy):
    x, w_gate, w_up, w_down = residuals
    product, d_gate, d_up = backward(x, w_gate, w_up, dy.astype(x.dtype), w_down)
    return (*_input_grads(x, w_gate, w_up, d_gate, d_up), product.T @ dy.astype(product.dtype))


def _input_grads(x: jax.Array, w_gate: jax.Array, w_up: jax.Array, d_gate: jax.Array,
                 d_up: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gradients of x, w_gate and w_up from those of gate = x @ w_gate and up = x @ w_up."""
    return d_gate @ w_gate.T + d_up @ w_up.T, x.T @ d_gate, x.T @ d_up


_gated_mlp.defvjp(_gated_mlp_fwd, _gated_mlp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gated_product(interpret: bool, x: jax.Array, w_gate: jax.Array, w_up: jax.Array) -> jax.Array:
    # Not differentiated (forward passes): the kernel.
    return _forward_outputs(interpret, x, w_gate, w_up)


def _gated_product_fwd(interpret, x, w_gate, w_up):
    # Differentiated (layers whose down projection has a bias; the model's layers use `mlp`):
    # XLA's matmuls, keeping gate and up for the backward pass.
    gate, up = x @ w_gate, x @ w_up
    return jax.nn.silu(gate) * up, (x, w_gate, w_up, gate, up)


def _gated_product_bwd(interpret, residuals, dp):
    x, w_gate, w_up, gate, up = residuals
    _, vjp = jax.vjp(lambda g, u: jax.nn.silu(g) * u, gate, up)
    return _input_grads(x, w_gate, w_up, *vjp(dp))


_gated_product.defvjp(_gated_product_fwd, _gated_product_bwd)
