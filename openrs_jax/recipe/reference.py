"""Reference-policy refresh (TR-DPO, Gorbatovski et al. 2024, arXiv 2404.09656; TRL's sync_ref_model).

With `ref_sync_steps = k > 0`, after every k-th step the KL reference moves towards the
policy: ref <- alpha * policy + (1 - alpha) * ref (`ref_mixup_alpha`; alpha = 1 copies the
policy). The mix is computed in fp32 and stored in the reference's dtype and placement. The
refreshed reference is part of the run's state: checkpoints save it, so resuming is exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp



def check_ref_sync(sync_steps: int, alpha: float, beta: float) -> None:
    """Raises `ValueError` naming the key for a refresh that cannot work."""
    if sync_steps < 0:
        raise ValueError(f"ref_sync_steps={sync_steps} must be >= 0 (0: the reference stays the initial model)")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"ref_mixup_alpha={alpha} must be in (0, 1] (the policy's share in the new reference)")
    if sync_steps and beta == 0.0:
        raise ValueError(
            f"ref_sync_steps={sync_steps} refreshes the KL reference, but beta=0 uses none: set beta > 0 "
            "or ref_sync_steps=0"
        )


def sync_due(step: int, sync_steps: int) -> bool:
    """Whether the reference is refreshed after optimizer step `step` (1-based)."""
    return sync_steps > 0 and step % sync_steps == 0


def _mix(ref: Any, policy: Any, alpha: jax.Array) -> Any:
    return jax.tree.map(
        lambda r, p: (alpha * p.astype(jnp.float32) + (1.0 - alpha) * r.astype(jnp.float32)).astype(r.dtype),
        ref, policy,
    )


def mix_reference(ref: Any, policy: Any, alpha: float) -> Any:
    """alpha * policy + (1 - alpha) * ref, leaf by leaf, in ref's dtypes and shardings (ref is donated)."""
    shardings = jax.tree.map(lambda x: x.sharding, ref)
    return jax.jit(_mix, out_shardings=shardings, donate_argnums=(0,))(ref, policy, jnp.float32(alpha))
