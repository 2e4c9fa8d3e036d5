"""Scanned decoder layers whose gradient is added into an fp32 accumulator, layer by layer.

The update sums gradients over micro-batches into an fp32 accumulator. With a plain scan over
stacked layers that costs, on top of the accumulator, a compute-dtype copy of every layer's
weights (cast before the scan) and a compute-dtype stack of every layer's weight gradient (the
scan's transpose), which is then converted and added to the accumulator: two extra copies of
the layers' parameters (2 x 2.6 GB for the 1.5B model in bf16), both alive at the update's peak.

`accumulating_layer_scan` is a scan over the layers with a hand-written backward pass that
rematerialises each layer from its saved input (what `jax.checkpoint` with "nothing saveable"
does) and adds that layer's weight gradient into its slice of the accumulator, in place. Each
layer's weights are cast to the compute dtype where they are used, so neither extra copy
exists. The gradient it reports for the stacked weights is accumulator + this call's gradient:
the caller passes the running sum in and gets the new sum back, in the same fp32 buffer.

`adding_cast` gives the same contract (gradient = accumulator + this call's) for paths that keep
the plain scan (no remat, selective remat, masked attention).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

# layer(h, weights of one layer in the compute dtype, *consts) -> h
Layer = Callable[..., jax.Array]


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype), tree)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5))
def accumulating_layer_scan(
    layer: Layer, h: jax.Array, weights: Any, accumulator: Any, consts: tuple, dtype: Any
) -> jax.Array:
    """`h` through every layer of `weights` (a tree of [L, ...] arrays in their stored dtype).

    The gradient with respect to `weights` is `accumulator` (same tree, fp32) plus this call's
    gradient; `accumulator` itself gets none. `consts` (RoPE tables, sequence lengths) get no
    gradient. `layer` and `dtype` must be hashable and static (e.g. a `functools.partial` of a
    module function, a `jnp.dtype`).
    """
    return _forward(layer, dtype, h, weights, consts)[0]


def _forward(layer: Layer, dtype: Any, h: jax.Array, weights: Any, consts: tuple) -> tuple[jax.Array, jax.Array]:
    def body(h: jax.Array, w: Any) -> tuple[jax.Array, jax.Array]:
        return layer(h, _cast(w, dtype), *consts), h

    return jax.lax.scan(body, h, weights)  # (output, every layer's input [L, ...])


def _scan_fwd(layer, h, weights, accumulator, consts, dtype):
    out, inputs = _forward(layer, dtype, h, weights, consts)
    return out, (inputs, weights, accumulator, consts)


def _scan_bwd(layer, dtype, residuals, g):
    inputs, weights, accumulator, consts = residuals

    def body(carry: tuple, xs: tuple) -> tuple[tuple, None]:
        dh, acc = carry
        i, h = xs
        w = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False), weights)
        # Recompute layer i from its input, then its backward pass (one layer's activations live).
        _, vjp = jax.vjp(lambda h, w: layer(h, _cast(w, dtype), *consts), h, w)
        dh, dw = vjp(dh)

        def add(a: jax.Array, d: jax.Array) -> jax.Array:
            return a.at[i].add(d.astype(a.dtype))

        return (dh, jax.tree.map(add, acc, dw)), None

    layers = jnp.arange(inputs.shape[0])
    (dh, acc), _ = jax.lax.scan(body, (g, accumulator), (layers, inputs), reverse=True)
    return dh, acc, None, None


accumulating_layer_scan.defvjp(_scan_fwd, _scan_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def adding_cast(weights: Any, accumulator: Any, dtype: Any) -> Any:
    """`weights` cast to `dtype` (static); their gradient is `accumulator` + the cast's gradient
    (in the accumulator's dtype), the accumulator's is zero."""
    return _cast(weights, dtype)


def _adding_cast_fwd(weights, accumulator, dtype):
    return _cast(weights, dtype), accumulator


def _adding_cast_bwd(dtype, accumulator, g):
    return jax.tree.map(lambda a, d: a + d.astype(a.dtype), accumulator, g), None


adding_cast.defvjp(_adding_cast_fwd, _adding_cast_bwd)
