"""High-entropy token selection ("Beyond the 80/20 rule", Wang et al. 2025, arXiv 2506.01939).

Only the top `quantile` fraction of completion tokens by entropy keep their policy-gradient
term. The threshold is one quantile over every completion token of the whole batch (not per
micro-batch), so splitting the batch into micro-batches does not change which tokens count.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from openrs_jax.core.grpo.logprobs import completion_logprobs
from openrs_jax.core.grpo.microbatch import merge_micro_batches, split_micro_batches
from openrs_jax.core.sharding import constrain_batch


def high_entropy_mask(entropy: jax.Array, mask: jax.Array, quantile: float) -> jax.Array:
    """1.0 on completion tokens whose entropy is >= the (1 - quantile) quantile of all of them.

    entropy, mask: [rows, T]. The quantile interpolates linearly (numpy's default); `quantile=1`
    keeps every token, `quantile=0` only the highest-entropy one(s). No completion token: all 0.
    """
    on = mask > 0
    threshold = jnp.nanquantile(jnp.where(on, entropy.astype(jnp.float32), jnp.nan), 1.0 - quantile)
    return ((entropy >= threshold) & on).astype(jnp.float32)


def batch_entropies(
    graphdef: nnx.GraphDef,
    params: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    completion_start: int,
    *,
    num_micro_batches: int,
    chunk: int,
    temperature: float,
    mesh: Mesh | None,
) -> jax.Array:
    """Forward-only per-token entropies [rows, T] of the whole batch, micro-batch by micro-batch
    (for use inside a jitted update)."""
    params = jax.lax.stop_gradient(params)
    model = nnx.merge(graphdef, params)

    def run(xs: tuple[jax.Array, jax.Array]) -> jax.Array:
        ids, mask = xs
        if mesh is not None:
            ids, mask = constrain_batch(ids, mesh), constrain_batch(mask, mesh)
        _, entropy = completion_logprobs(
            model, ids, mask, completion_start, chunk=chunk, temperature=temperature, with_entropy=True, mesh=mesh
        )
        return entropy

    if num_micro_batches == 1:
        return run((input_ids, attention_mask))
    micro = split_micro_batches((input_ids, attention_mask), num_micro_batches)
    return merge_micro_batches(jax.lax.map(run, micro))
