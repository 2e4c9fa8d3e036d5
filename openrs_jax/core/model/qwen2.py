"""Qwen2 causal language model in Flax NNX.

Layers are stacked on a leading axis and applied with `lax.scan`, so compile time does not
grow with depth and remat is set in one place. Parameters are stored in `param_dtype` and
cast to the compute `dtype` at use; RMSNorm, RoPE, softmax and logits run in fp32.

Cached decoding (pass a `KVCache`) unrolls the layer loop instead: each layer has its own
cache array, written in place, and its weights are read where they lie, so a decode step
copies neither cache slices nor weight matrices out of stacked arrays (what a scan over
stacked layers does every step). One new token per row attends through `DecodeAttention`
(a kernel reading only each row's live slots on GPUs); longer inputs (prefill) use the
masked attention of the full forward pass.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from openrs_jax.core.model import attention as fused
from openrs_jax.core.model import layer_grads
from openrs_jax.core.model.config import Qwen2Config
from openrs_jax.core.model.decode_attention import DecodeAttention
from openrs_jax.core.model.gated_mlp import GatedMlp

# A large finite negative instead of -inf: a fully masked (padding) query row then gives a
# finite, ignorable output instead of NaNs that could leak into gradients.
_MASK_VALUE = -1e30

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@struct.dataclass
class KVCache:
    """Keys and values of every layer for `batch` rows and `max_len` slots.

    k, v: one array per layer, [batch, kv_heads, max_len, head_dim] (heads before slots, so that
    a decode step reads each head's keys contiguously; one array per layer, so that each is
    updated in place and read without slicing a stacked array); mask: [batch, max_len] marks
    slots holding a real (non-padding) token; index: number of slots written so far (shared by
    all rows, since prompts are left-padded to a common length). live: [batch] bool or None:
    rows still decoding; single-token steps through the kernel skip the others (their attention
    output is 0). attention: the decode-attention implementation (static).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array
    live: jax.Array | None = None
    attention: DecodeAttention = struct.field(pytree_node=False, default=DecodeAttention())

    @classmethod
    def create(
        cls, config: Qwen2Config, batch: int, max_len: int, dtype: Any = None,
        attention: DecodeAttention = DecodeAttention(),
    ) -> "KVCache":
        dtype = jnp.dtype(dtype or config.dtype)
        shape = (batch, config.num_key_value_heads, max_len, config.head_dim)
        layers = range(config.num_hidden_layers)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in layers),
            v=tuple(jnp.zeros(shape, dtype) for _ in layers),
            mask=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
            attention=attention,
        )

    @staticmethod
    def num_bytes(config: Qwen2Config, batch: int, max_len: int, dtype: Any = None) -> int:
        """Memory the cache will take, computed before allocating it."""
        itemsize = jnp.dtype(dtype or config.dtype).itemsize
        kv = 2 * config.num_hidden_layers * batch * max_len * config.num_key_value_heads * config.head_dim
        return kv * itemsize + batch * max_len

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


def positions_from_mask(attention_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """Position ids as Hugging Face computes them: count of real tokens before each one.

    Left padding therefore does not shift the positions of real tokens. `offset` [B] or scalar
    is the number of real tokens already in the cache.
    """
    offset = jnp.asarray(offset)
    if offset.ndim == 1:
        offset = offset[:, None]
    pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1 + offset
    return jnp.maximum(pos, 0)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, T, head_dim] in fp32 (halves concatenated, as in HF `rotate_half`)."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x [B, T, heads, head_dim] by the tables [B, T, head_dim]."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)


def rms_scale(x: jax.Array, eps: float) -> jax.Array:
    """1 / RMS of x over its last axis (kept), in fp32."""
    xf = x.astype(jnp.float32)
    return jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in fp32, result cast back to x's dtype."""
    return (weight.astype(jnp.float32) * (x.astype(jnp.float32) * rms_scale(x, eps))).astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, kv_heads_major: bool = False) -> jax.Array:
    """Grouped-query attention with an fp32 softmax.

    q: [B, T, H, D]; k, v: [B, S, KV, D], or [B, KV, S, D] with kv_heads_major (the cache
    layout); mask: [B, T, S] (True = may attend). Query head h
    uses key/value head h // (H // KV), as Hugging Face's `repeat_kv` does.
    """
    b, t, h, d = q.shape
    kv = k.shape[1] if kv_heads_major else k.shape[2]
    kv_spec = "bksd" if kv_heads_major else "bskd"
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum(f"btkgd,{kv_spec}->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores * (1.0 / np.sqrt(d))
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum(f"bkgts,{kv_spec}->btkgd", probs, v)
    return out.reshape(b, t, h * d)


@struct.dataclass
class DecodeWeights:
    """The parameters in the layout cached decoding reads: compute dtype, one dict per layer.

    Slicing a layer out of a stacked [L, ...] array inside a decode loop makes XLA copy it every
    step; arrays of their own are read in place. With `fuse`, each layer's q/k/v kernels (and
    biases) and its gate/up kernels are concatenated once ("qkv_proj" [D, (H + 2 KV) * hd],
    "gate_up_proj" [D, 2 * I]): XLA's GPU backend otherwise merges the matmuls that share an
    input by concatenating their weights every step. `fuse` also folds each RMSNorm's weight
    into the kernel that follows it (norm(h) @ W = (h @ (w * W)) / RMS(h), per row), so that no
    normed copy of the hidden states is written; the layer then has no "*_norm" entries.
    """

    embed: jax.Array  # [V, D]
    norm: jax.Array  # [D]
    lm_head: jax.Array  # [D, V]
    layers: tuple[dict[str, Any], ...]


def decode_weights(model: "Qwen2ForCausalLM", fuse: bool = False) -> DecodeWeights:
    """`DecodeWeights` of a model (inside jit: one copy of the weights, made once per call)."""
    dtype = jnp.dtype(model.config.dtype)
    stacked = nnx.to_pure_dict(nnx.state(model.layers))
    layers = []
    for i in range(model.config.num_hidden_layers):
        if not fuse:
            layers.append(jax.tree.map(lambda x: x[i].astype(dtype), stacked))
            continue
        p = jax.tree.map(lambda x: x[i].astype(jnp.float32), stacked)  # fold in fp32, round once
        fused = {
            "qkv_proj": _concat_linears([p.pop(n) for n in ("q_proj", "k_proj", "v_proj")], p.pop("input_norm")),
            "gate_up_proj": _concat_linears([p.pop(n) for n in ("gate_proj", "up_proj")], p.pop("post_attn_norm")),
        }
        layers.append(jax.tree.map(lambda x: x.astype(dtype), {**p, **fused}))
    return DecodeWeights(
        embed=model.embed_tokens[...].astype(dtype), norm=model.norm[...].astype(dtype),
        lm_head=model.lm_head_kernel(), layers=tuple(layers),
    )


def _concat_linears(linears: list[dict[str, Any]], norm: jax.Array) -> dict[str, Any]:
    """One linear map computing several that share their input (outputs side by side), with the
    weight of the RMSNorm before them folded into its rows."""
    out = {"kernel": norm[:, None] * jnp.concatenate([p["kernel"] for p in linears], axis=-1)}
    if linears[0].get("bias") is not None:
        out["bias"] = jnp.concatenate([p["bias"] for p in linears], axis=-1)
    return out


def cached_hidden_states(
    config: Qwen2Config,
    weights: DecodeWeights,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    positions: jax.Array | None,
    cache: KVCache,
) -> tuple[jax.Array, KVCache]:
    """`Qwen2ForCausalLM.hidden_states` with a cache: the layers unrolled, each writing its own
    cache array. input_ids, attention_mask [B, T]; returns final-normed hidden states [B, T, D]."""
    c = config
    dtype = jnp.dtype(c.dtype)
    b, t = input_ids.shape
    if positions is None:
        positions = positions_from_mask(attention_mask, cache.mask.sum(-1, dtype=jnp.int32))
    write_index = cache.index
    kv_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, write_index))
    if t == 1 and cache.attention.uses_kernel:
        # Live slots of a row: from its first real one (left padding) through the new token.
        start = jnp.argmax(kv_mask, axis=-1).astype(jnp.int32)
        length = jnp.minimum(write_index + 1, cache.max_len) * jnp.ones((b,), jnp.int32)
        if cache.live is not None:
            length = jnp.where(cache.live, length, 0)  # finished rows: nothing to read

        def read(q, k, v):
            return cache.attention(q[:, 0], k, v, start, length).reshape(b, 1, -1)
    else:
        slots = jnp.arange(cache.max_len)
        causal = slots[None, :] <= (write_index + jnp.arange(t))[:, None]  # [T, S]
        mask = causal[None] & kv_mask[:, None, :]  # [B, T, S]

        def read(q, k, v):
            return attention(q, k, v, mask, kv_heads_major=True)

    cos, sin = rope_tables(positions, c.head_dim, c.rope_theta)
    h = jnp.take(weights.embed, input_ids, axis=0).astype(dtype)
    ks, vs = list(cache.k), list(cache.v)
    for i in range(c.num_hidden_layers):

        def attend(q, k, v, i=i):
            # Write only the new slots of layer i's array in place; attend over the whole layer.
            k, v = (x.swapaxes(1, 2).astype(ks[i].dtype) for x in (k, v))  # [B, KV, T, D]
            ks[i] = jax.lax.dynamic_update_slice(ks[i], k, (0, 0, write_index, 0))
            vs[i] = jax.lax.dynamic_update_slice(vs[i], v, (0, 0, write_index, 0))
            return read(q, ks[i].astype(dtype), vs[i].astype(dtype))

        h = _decoder_layer(c, h, weights.layers[i], cos, sin, None, attend)
    h = rms_norm(h, weights.norm, c.rms_norm_eps)
    new_cache = KVCache(k=tuple(ks), v=tuple(vs), mask=kv_mask, index=cache.index + t, live=cache.live,
                        attention=cache.attention)
    return h, new_cache


class StackedLinear(nnx.Module):
    """`layers` linear maps stacked on a leading axis: kernel [L, in, out], optional bias [L, out]."""

    def __init__(self, layers: int, d_in: int, d_out: int, *, bias: bool, config: Qwen2Config, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.param_dtype)
        self.kernel = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (layers, d_in, d_out), dtype))
        self.bias = nnx.Param(jnp.zeros((layers, d_out), dtype)) if bias else None


class DecoderLayers(nnx.Module):
    """All decoder layers' parameters, stacked; applied by `Qwen2ForCausalLM` with scan."""

    def __init__(self, config: Qwen2Config, rngs: nnx.Rngs):
        c, n = config, config.num_hidden_layers
        q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        dtype = jnp.dtype(c.param_dtype)
        lin = lambda i, o, bias=False: StackedLinear(n, i, o, bias=bias, config=c, rngs=rngs)  # noqa: E731
        self.input_norm = nnx.Param(jnp.ones((n, c.hidden_size), dtype))
        self.q_proj = lin(c.hidden_size, q_dim, c.qkv_bias)
        self.k_proj = lin(c.hidden_size, kv_dim, c.qkv_bias)
        self.v_proj = lin(c.hidden_size, kv_dim, c.qkv_bias)
        self.o_proj = lin(q_dim, c.hidden_size)
        self.post_attn_norm = nnx.Param(jnp.ones((n, c.hidden_size), dtype))
        self.gate_proj = lin(c.hidden_size, c.intermediate_size)
        self.up_proj = lin(c.hidden_size, c.intermediate_size)
        self.down_proj = lin(c.intermediate_size, c.hidden_size)


def _linear(x: jax.Array, p: dict[str, jax.Array], row_scale: jax.Array | None = None) -> jax.Array:
    y = x @ p["kernel"]
    if row_scale is not None:  # a folded RMSNorm's 1 / RMS per row, applied after the matmul
        y = (y.astype(jnp.float32) * row_scale).astype(y.dtype)
    if p.get("bias") is not None:
        y = y + p["bias"]
    return y


def _decoder_layer(
    config: Qwen2Config,
    h: jax.Array,
    p: dict[str, Any],
    cos: jax.Array,
    sin: jax.Array,
    mask: jax.Array | None,
    attend: Callable[[jax.Array, jax.Array, jax.Array], jax.Array] | None = None,
    mlp: GatedMlp | None = None,
    real_rows: jax.Array | None = None,
) -> jax.Array:
    """One pre-norm decoder layer, h: [B, T, D] -> [B, T, D].

    Without `attend`, attention over this call's keys/values with `mask` [B, T, T]. `attend(q, k, v)
    -> [B, T, H * D]` (q [B, T, H, D], k/v [B, T, KV, D], rotated) replaces it: the cached path's
    writes the keys/values into the cache and attends over it; right-padded full sequences use
    `model.attention.causal_attention` (cuDNN flash attention on GPUs). `mlp` computes the gated
    product silu(gate) * up (`model.gated_mlp`: a kernel on GPUs) where the layer has separate,
    bias-free gate/up kernels, and with a bias-free down projection the whole MLP (`GatedMlp.mlp`,
    with its backward kernel). `real_rows` [B, T] bool: where False (right padding), the
    attention output is dropped after the output projection (whatever an attention kernel left
    in padding rows, NaN included, goes no further and gets no gradient); the select fuses into
    the projection's matmul, where zeroing the attention output would be a pass of its own.
    """
    c = config
    b, t, _ = h.shape

    def normed(h: jax.Array, norm: str) -> tuple[jax.Array, jax.Array | None]:
        # The next matmul's input and, where `DecodeWeights` folded the norm's weight into that
        # matmul's kernel, the per-row scale to apply after it (no normed copy of h is written).
        if norm in p:
            return rms_norm(h, p[norm], c.rms_norm_eps), None
        return h, rms_scale(h, c.rms_norm_eps)

    x, scale = normed(h, "input_norm")
    if "qkv_proj" in p:  # fused in `DecodeWeights`
        q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        q, k, v = jnp.split(_linear(x, p["qkv_proj"], scale), (q_dim, q_dim + kv_dim), axis=-1)
    else:
        q, k, v = (_linear(x, p[name]) for name in ("q_proj", "k_proj", "v_proj"))
    q = q.reshape(b, t, c.num_attention_heads, c.head_dim)
    k = k.reshape(b, t, c.num_key_value_heads, c.head_dim)
    v = v.reshape(b, t, c.num_key_value_heads, c.head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = attention(q, k, v, mask) if attend is None else attend(q, k, v)
    attended = h + _linear(out, p["o_proj"])
    h = attended if real_rows is None else jnp.where(real_rows[..., None], attended, h)
    x, scale = normed(h, "post_attn_norm")
    if "gate_up_proj" in p:  # fused in `DecodeWeights`: one matmul, split after
        gate, up = jnp.split(_linear(x, p["gate_up_proj"], scale), 2, axis=-1)
    elif mlp is not None and scale is None and p["gate_proj"].get("bias") is None:
        if p["down_proj"].get("bias") is None:  # the whole MLP, with its backward kernel
            return h + mlp.mlp(x, p["gate_proj"]["kernel"], p["up_proj"]["kernel"], p["down_proj"]["kernel"])
        return h + _linear(mlp(x, p["gate_proj"]["kernel"], p["up_proj"]["kernel"]), p["down_proj"])
    else:
        gate, up = _linear(x, p["gate_proj"]), _linear(x, p["up_proj"])
    return h + _linear(jax.nn.silu(gate) * up, p["down_proj"])


def _right_padded_layer(
    config: Qwen2Config, platform: str | None, mlp: GatedMlp | None, h: jax.Array, p: dict[str, Any],
    cos: jax.Array, sin: jax.Array, seq_lengths: jax.Array, real_rows: jax.Array,
) -> jax.Array:
    """`_decoder_layer` over right-padded rows (the layer `layer_grads.accumulating_layer_scan` scans);
    real_rows [B, T] bool comes from outside the scan, as in `hidden_states`."""
    return _decoder_layer(
        config, h, p, cos, sin, None, mlp=mlp, real_rows=real_rows,
        attend=lambda q, k, v: fused.causal_attention(q, k, v, seq_lengths, platform, zero_padding=False),
    )


class Qwen2ForCausalLM(nnx.Module):
    """Qwen2 decoder with an LM head.

    `model(input_ids [B, T] int32, attention_mask [B, T] | None)` returns fp32 logits
    [B, T, V]. With `cache=` it returns `(logits, new_cache)`.
    """

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        dtype = jnp.dtype(c.param_dtype)
        init = nnx.initializers.normal(0.02)
        self.embed_tokens = nnx.Param(init(rngs.params(), (c.vocab_size, c.hidden_size), dtype))
        self.layers = DecoderLayers(c, rngs)
        self.norm = nnx.Param(jnp.ones((c.hidden_size,), dtype))
        self.lm_head = None if c.tie_word_embeddings else nnx.Param(init(rngs.params(), (c.hidden_size, c.vocab_size), dtype))

    def lm_head_kernel(self, cast: bool = True) -> jax.Array:
        """The output projection [D, V] (the embedding, transposed, when tied), in compute dtype,
        or in its stored dtype with `cast=False`."""
        w = self.embed_tokens[...].T if self.lm_head is None else self.lm_head[...]
        return w.astype(self.config.dtype) if cast else w

    def hidden_states(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
        seq_lengths: jax.Array | None = None,
        platform: str | None = None,
        layer_grad_accumulator: Any | None = None,
        mlp: GatedMlp | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [B, T, D] in compute dtype, and the updated cache.

        `seq_lengths` [B] (no cache): rows are right-padded, real tokens in the first
        seq_lengths columns (`attention_mask` is then ignored); attention runs through
        `model.attention.causal_attention` (cuDNN flash attention when `platform` is "gpu").

        `layer_grad_accumulator` (no cache; a tree like the stacked layer parameters, fp32):
        the gradient of the layers' parameters becomes accumulator + this call's gradient
        (`model.layer_grads`); with right-padded rows and `remat="full"` it is added layer by
        layer in place, with no compute-dtype copy of the stacked weights or their gradient.
        `mlp` (no cache): the layers' gated-product implementation (`GatedMlp.auto`; default XLA).
        """
        c = self.config
        dtype = jnp.dtype(c.dtype)
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        attention_mask = attention_mask.astype(bool)
        if cache is not None:
            return cached_hidden_states(c, decode_weights(self), input_ids, attention_mask, positions, cache)

        attend = mask = real_rows = None
        if seq_lengths is not None:
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
            # Built once, outside the layer scan: built per layer, XLA no longer fuses the padding
            # select into the o-proj GEMM (+25 GB read per Exp2 reference pass; docs/benchmarks.md).
            real_rows = jnp.arange(t)[None, :] < seq_lengths[:, None]
            attend = lambda q, k, v: fused.causal_attention(  # noqa: E731
                q, k, v, seq_lengths, platform, zero_padding=False)
        else:
            if positions is None:
                positions = positions_from_mask(attention_mask)
            causal = jnp.tril(jnp.ones((t, t), bool))
            mask = causal[None] & attention_mask[:, None, :]  # [B, T, T]

        cos, sin = rope_tables(positions, c.head_dim, c.rope_theta)
        h = jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(dtype)
        stacked = nnx.to_pure_dict(nnx.state(self.layers))
        if layer_grad_accumulator is not None and seq_lengths is not None and c.remat == "full":
            layer = functools.partial(_right_padded_layer, c, platform, mlp)
            h = layer_grads.accumulating_layer_scan(layer, h, stacked, layer_grad_accumulator,
                                                    (cos, sin, seq_lengths, real_rows), dtype)
            return rms_norm(h, self.norm[...], c.rms_norm_eps), None
        if layer_grad_accumulator is not None:
            layer_params = layer_grads.adding_cast(stacked, layer_grad_accumulator, dtype)
        else:
            layer_params = jax.tree.map(lambda x: x.astype(dtype), stacked)

        def body(h, p):
            return _decoder_layer(c, h, p, cos, sin, mask, attend=attend, mlp=mlp, real_rows=real_rows), None

        if c.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[c.remat], prevent_cse=False)
        h, _ = jax.lax.scan(body, h, layer_params)
        return rms_norm(h, self.norm[...], c.rms_norm_eps), None

    def logits(self, hidden: jax.Array) -> jax.Array:
        """fp32 logits of hidden states [..., D] -> [..., V]."""
        return jnp.dot(hidden, self.lm_head_kernel(), preferred_element_type=jnp.float32)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ):
        h, new_cache = self.hidden_states(input_ids, attention_mask, positions=positions, cache=cache)
        logits = self.logits(h)
        return logits if cache is None else (logits, new_cache)


def init_model(config: Qwen2Config, seed: int = 0) -> Qwen2ForCausalLM:
    """A model with random weights (normal(0, 0.02) matrices, unit norms, zero biases)."""
    return Qwen2ForCausalLM(config, rngs=nnx.Rngs(seed))


def abstract_model(config: Qwen2Config) -> Qwen2ForCausalLM:
    """The model with shapes only (no memory): for loading weights into, or ahead-of-time compiling."""
    return nnx.eval_shape(lambda: Qwen2ForCausalLM(config, rngs=nnx.Rngs(0)))
