"""Full-sequence causal attention over right-padded rows: fused on GPU, plain XLA elsewhere.

Training, reference and old-policy passes run whole sequences through the model. Their rows
are laid out as real tokens first (prompt, then completion) and padding last, so that padding
is one number per row, the row's length: that is the form cuDNN's flash attention takes
(`query_seq_lengths` / `key_value_seq_lengths`), and it never builds the [T, T] score matrix.

`implementation(dtype, head_dim, platform)` is the one place that picks the kernel:

- `"cudnn"`: `jax.nn.dot_product_attention(..., implementation="cudnn")` on CUDA GPUs for
  bf16/fp16 inputs and head sizes cuDNN's flash kernel accepts (a multiple of 8, at most 128);
- `"xla"`: the same function's XLA implementation (fp32 softmax, explicit masks) for anything
  else: CPU, fp32, other head sizes. Numbers match the plain einsum attention of the model.

The platform is the one the program is compiled for: callers that hold a mesh pass
`platform_of(mesh)` (compile-only GPU devices report "gpu" although the host has none).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

log = logging.getLogger("openrs_jax.attention")

# bf16/fp16 only: cuDNN's flash kernel has no fp32 variant.
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_CUDNN_MAX_HEAD_DIM = 128
_logged: set[tuple] = set()


def platform_of(mesh: Mesh | None) -> str:
    """"gpu", "cpu", "tpu", ... of the devices a program runs on (the default backend without a mesh)."""
    if mesh is None:
        return jax.default_backend()
    platform = mesh.devices.flat[0].platform
    return "gpu" if platform in ("cuda", "rocm") else platform


def implementation(dtype: Any, head_dim: int, platform: str | None = None) -> str:
    """"cudnn" or "xla": the kernel `causal_attention` uses for these inputs (logged once per choice)."""
    platform = platform or jax.default_backend()
    dtype = jnp.dtype(dtype)
    if platform != "gpu":
        choice, why = "xla", f"platform {platform}"
    elif dtype not in _CUDNN_DTYPES:
        choice, why = "xla", f"{dtype} has no cuDNN flash kernel"
    elif head_dim % 8 or head_dim > _CUDNN_MAX_HEAD_DIM:
        choice, why = "xla", f"head_dim {head_dim} not supported by cuDNN flash attention"
    else:
        choice, why = "cudnn", "cuDNN flash attention"
    key = (choice, platform, str(dtype), head_dim)
    if key not in _logged:
        _logged.add(key)
        log.info("full-sequence attention: %s (%s; %s, head_dim %d)", choice, why, dtype, head_dim)
    return choice


def causal_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, seq_lengths: jax.Array, platform: str | None = None,
    zero_padding: bool = True,
) -> jax.Array:
    """Causal grouped-query attention over right-padded rows -> [B, T, H * D].

    q: [B, T, H, D]; k, v: [B, T, KV, D] (query head h uses key/value head h // (H // KV));
    seq_lengths: [B] real tokens at the start of each row. Outputs at padding positions are 0,
    or, with `zero_padding=False`, whatever the kernel left there (the model's layer drops them
    itself, after its output projection).
    """
    b, t, h, d = q.shape
    lengths = seq_lengths.astype(jnp.int32)
    impl = implementation(q.dtype, d, platform)
    out = jax.nn.dot_product_attention(
        q, k.astype(q.dtype), v.astype(q.dtype), is_causal=True, query_seq_lengths=lengths,
        key_value_seq_lengths=lengths, implementation=impl,
    )
    if zero_padding:
        # Padding queries: whatever a kernel leaves there must not be NaN (it would reach the
        # gradients through the next layer's padding rows); `where` also blocks their gradient.
        valid = jnp.arange(t)[None, :] < lengths[:, None]
        out = jnp.where(valid[:, :, None, None], out, jnp.zeros((), out.dtype))
    return out.reshape(b, t, h * d)


def right_padded(attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """How to lay out rows with any padding as real tokens first: (order [B, S], lengths [B]).

    `take_along_axis(x, order, axis=1)` moves each row's real tokens (in their order) to the
    front and its padding to the back. Positions do not change: a real token's position is the
    count of real tokens before it in either layout.
    """
    mask = attention_mask.astype(bool)
    order = jnp.argsort(~mask, axis=1, stable=True)
    return order.astype(jnp.int32), mask.sum(axis=1, dtype=jnp.int32)
