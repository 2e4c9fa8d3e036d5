"""Log-probabilities of completion tokens, computed over the sequence in chunks.

A full fp32 logits tensor [rows, T, vocab] would take 2.5 GB per row at T = 4,096 and the
Qwen2 vocabulary, so the output projection runs on `chunk` positions at a time: each chunk's
logits [rows, chunk, V] live only inside one step of a loop, and the backward pass (a custom
gradient) recomputes them chunk by chunk, so it keeps only the hidden states, not the logits.

Sequences are laid out as the trainer builds them: `input_ids [rows, S]` is the left-padded
prompt followed by the completion, which starts at column `completion_start` (static). The
log-prob of completion token t comes from the logits at column completion_start + t - 1.
Inside the program each row is moved to the right-padded layout (real tokens first, same
positions) that fused attention takes (`model.attention`), and the hidden states predicting
the completion tokens are gathered back: the numbers are those of the left-padded layout.

The recipe takes log_softmax of the raw logits, not divided by the sampling temperature; that
is the default (`temperature=1.0`). Pass the sampling temperature to score tokens under the
distribution they were sampled from (what later TRL versions do).

`completion_logprobs(model, ...)` works on a merged module (used inside the update);
`token_logprobs(graphdef, params, ...)` is the jitted, forward-only entry point for reference
and old-policy log-probs (`forward_logprobs`, unjitted, also gives the update's entropies).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from openrs_jax.core.grpo.microbatch import merge_micro_batches, num_micro_batches, split_micro_batches
from openrs_jax.core.model import Qwen2ForCausalLM
from openrs_jax.core.model.attention import platform_of, right_padded
from openrs_jax.core.model.gated_mlp import GatedMlp
from openrs_jax.core.sharding import constrain_batch

DEFAULT_CHUNK = 512


def _chunk_logits(w: jax.Array, h: jax.Array, temperature: float) -> jax.Array:
    """One chunk's logits [B, chunk, V] as fp32 values of the matmul's output in the compute dtype.

    The matmul accumulates in fp32 but writes its [B, chunk, V] output in h's dtype (bf16 in
    training: half the bytes of the largest tensor of the pass, written twice per chunk in the
    update); the log-softmax that reads it runs in fp32. In fp32 (CPU tests) nothing changes.
    """
    logits = jnp.dot(h, w, preferred_element_type=h.dtype).astype(jnp.float32)
    return logits / temperature if temperature != 1.0 else logits


def _chunks_forward(kernel, hs, ts, temperature, with_entropy):
    w = kernel.astype(hs.dtype)  # once per call, not once per chunk

    def body(carry: None, xs: tuple[jax.Array, jax.Array]) -> tuple[None, tuple]:
        h, tgt = xs
        logits = _chunk_logits(w, h, temperature)
        lse = jax.nn.logsumexp(logits, axis=-1)
        logp = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0] - lse
        if with_entropy:
            entropy = lse - jnp.sum(jax.nn.softmax(logits, axis=-1) * logits, axis=-1)
        else:
            entropy = jnp.zeros_like(logp)
        return None, (logp, entropy, lse)

    _, (logp, entropy, lse) = jax.lax.scan(body, None, (hs, ts))
    return (logp, entropy), (kernel, hs, ts, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_logprobs(kernel, hs, ts, temperature, with_entropy):
    """(logp, entropy) [n, B, chunk] of hidden chunks hs [n, B, chunk, D] and targets ts."""
    return _chunks_forward(kernel, hs, ts, temperature, with_entropy)[0]


def _chunked_logprobs_bwd(temperature, with_entropy, residuals, cotangents):
    # Hand-written so that each chunk recomputes its logits once, forms d logits in the compute
    # dtype in one pass, and adds its output-kernel gradient into one fp32 accumulator; the
    # entropy is a metric and gets no gradient.
    kernel, hs, ts, lse = residuals
    g_logp = cotangents[0]
    w = kernel.astype(hs.dtype)
    vocab = kernel.shape[1]

    def body(dw: jax.Array, xs: tuple) -> tuple[jax.Array, jax.Array]:
        h, tgt, chunk_lse, g = xs
        probs = jnp.exp(_chunk_logits(w, h, temperature) - chunk_lse[..., None])
        onehot = jnp.arange(vocab)[None, None, :] == tgt[..., None]
        dlogits = g[..., None] * (onehot.astype(jnp.float32) - probs)
        if temperature != 1.0:
            dlogits = dlogits / temperature
        dlogits = dlogits.astype(h.dtype)
        dh = jnp.einsum("bcv,dv->bcd", dlogits, w, preferred_element_type=jnp.float32).astype(h.dtype)
        dw = dw + jnp.einsum("bcd,bcv->dv", h, dlogits, preferred_element_type=jnp.float32)
        return dw, dh

    dw, dhs = jax.lax.scan(body, jnp.zeros(kernel.shape, jnp.float32), (hs, ts, lse, g_logp.astype(jnp.float32)))
    return dw.astype(kernel.dtype), dhs, None


_chunked_logprobs.defvjp(_chunks_forward, _chunked_logprobs_bwd)


def chunked_token_logprobs(
    hidden: jax.Array,
    kernel: jax.Array,
    targets: jax.Array,
    *,
    chunk: int = DEFAULT_CHUNK,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """log p(targets) and optionally the entropy, both [B, T] fp32, from hidden [B, T, D].

    `kernel` [D, V] (any float dtype; the fp32 master weights in the update) is cast to the
    hidden states' dtype once; logits are accumulated in fp32 and live one chunk at a time,
    forward and backward (a custom gradient recomputes them per chunk and accumulates the
    kernel's gradient in fp32). The entropy carries no gradient (it is a metric).
    """
    b, t, d = hidden.shape
    n = math.ceil(t / max(1, min(chunk, t)))
    # n chunks of equal size (a multiple of 8, at most `chunk`): a bucketed length such as 1,280
    # with chunk 512 is cut into 3 x 432, not padded to 3 x 512.
    chunk = min(max(1, chunk), -(-math.ceil(t / n) // 8) * 8)
    pad = n * chunk - t
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)  # [n, B, chunk, D]
    ts = targets.reshape(b, n, chunk).swapaxes(0, 1)  # [n, B, chunk]
    logp, entropy = _chunked_logprobs(kernel, hs, ts, float(temperature), bool(with_entropy))
    logp = logp.swapaxes(0, 1).reshape(b, n * chunk)[:, :t]
    entropy = entropy.swapaxes(0, 1).reshape(b, n * chunk)[:, :t] if with_entropy else None
    return logp, entropy


def completion_logprobs(
    model: Qwen2ForCausalLM,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    completion_start: int,
    *,
    chunk: int = DEFAULT_CHUNK,
    temperature: float = 1.0,
    with_entropy: bool = False,
    mesh: Mesh | None = None,
    layer_grad_accumulator: Any | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs (and entropies) [rows, S - completion_start] of the completion tokens; 0 where
    the token is padding (attention_mask 0). With a `mesh`, rows stay split over its batch axes.
    `layer_grad_accumulator`: see `Qwen2ForCausalLM.hidden_states` (the layers' gradient then includes it)."""
    if not 1 <= completion_start < input_ids.shape[1]:
        raise ValueError(f"completion_start {completion_start} must be in [1, {input_ids.shape[1]})")
    if mesh is not None:
        input_ids, attention_mask = constrain_batch(input_ids, mesh), constrain_batch(attention_mask, mesh)
    order, lengths = right_padded(attention_mask)
    packed_ids = jnp.take_along_axis(input_ids, order, axis=1)
    hidden, _ = model.hidden_states(  # [rows, S, D]
        packed_ids, seq_lengths=lengths, platform=platform_of(mesh), layer_grad_accumulator=layer_grad_accumulator,
        mlp=GatedMlp.auto(platform_of(mesh), mesh),
    )
    if mesh is not None:
        hidden = constrain_batch(hidden, mesh)
    # Column p of the left-padded row predicts column p + 1; in the packed row, a real token
    # sits at (real tokens up to and including it) - 1.
    packed_column = jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1
    source = jnp.maximum(packed_column[:, completion_start - 1 : -1], 0)
    hidden = jnp.take_along_axis(hidden, source[:, :, None], axis=1)
    targets = input_ids[:, completion_start:]
    logp, entropy = chunked_token_logprobs(
        # The kernel in its stored (fp32 master) dtype: casting inside each chunk makes the
        # chunk loop accumulate its gradient in fp32.
        hidden, model.lm_head_kernel(cast=False), targets, chunk=chunk, temperature=temperature,
        with_entropy=with_entropy,
    )
    real = attention_mask[:, completion_start:].astype(bool)
    logp = jnp.where(real, logp, 0.0)
    return logp, None if entropy is None else jnp.where(real, entropy, 0.0)


def forward_logprobs(
    graphdef: nnx.GraphDef,
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    completion_start: int,
    chunk: int = DEFAULT_CHUNK,
    *,
    micro_batch_size: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    mesh: Mesh | None = None,
) -> jax.Array:
    """Forward-only log-probs [rows, S - completion_start] of completion tokens (with
    `with_entropy`, their entropies instead); `token_logprobs` is this function jitted.

    `params` is the model's parameter tree (a pure dict or `nnx.State`, any dtype: the
    graphdef's config decides the compute dtype). Rows are processed `micro_batch_size` at a
    time (default: all at once; see `grpo.microbatch`) so activation memory matches the update's.
    """
    model = nnx.merge(graphdef, params)
    n = num_micro_batches(input_ids.shape[0], micro_batch_size)

    def run(xs: tuple[jax.Array, jax.Array]) -> jax.Array:
        logp, entropy = completion_logprobs(
            model, *xs, completion_start, chunk=chunk, temperature=temperature, with_entropy=with_entropy, mesh=mesh
        )
        return entropy if with_entropy else logp

    if n == 1:
        return run((input_ids, attention_mask))
    return merge_micro_batches(jax.lax.map(run, split_micro_batches((input_ids, attention_mask), n)))


# The jitted entry point of the reference and old-policy passes.
token_logprobs = jax.jit(
    forward_logprobs,
    static_argnames=(
        "graphdef", "completion_start", "chunk", "micro_batch_size", "temperature", "with_entropy", "mesh"
    ),
)
