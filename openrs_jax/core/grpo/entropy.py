"""High-entropy token selection ("Beyond the 80/20 rule", Wang et al. 2025, arXiv 2506.01939).

Only the top `quantile` fraction of completion tokens by entropy keep their policy-gradient
term. The threshold is one quantile over every completion token of the whole batch (not per
micro-batch), so splitting the batch into micro-batches does not change which tokens count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def high_entropy_mask(entropy: jax.Array, mask: jax.Array, quantile: float) -> jax.Array:
    """1.0 on completion tokens whose entropy is >= the (1 - quantile) quantile of all of them.

    entropy, mask: [rows, T]. The quantile interpolates linearly (numpy's default); `quantile=1`
    keeps every token, `quantile=0` only the highest-entropy one(s). No completion token: all 0.
    """
    on = mask > 0
    threshold = jnp.nanquantile(jnp.where(on, entropy.astype(jnp.float32), jnp.nan), 1.0 - quantile)
    return ((entropy >= threshold) & on).astype(jnp.float32)
