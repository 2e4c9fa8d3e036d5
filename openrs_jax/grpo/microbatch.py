"""Splitting a batch's rows into micro-batches inside jit, and putting them back.

Micro-batch j holds rows j, j + n, j + 2n, ... (n micro-batches). With rows split over the
devices in contiguous blocks, each device then keeps its own rows in every micro-batch
whenever the micro-batch size is a multiple of the device count: no data moves. Which rows
share a micro-batch does not matter for the update, since every loss normaliser is computed
from the whole batch (see `grpo.loss.aggregation_weights`).
"""

from __future__ import annotations

from typing import Any

import jax

from openrs_jax.errors import UserError


def num_micro_batches(rows: int, micro_batch_size: int | None) -> int:
    """How many micro-batches `rows` make; `None` or `rows` means one."""
    if micro_batch_size is None or micro_batch_size >= rows:
        return 1
    if micro_batch_size <= 0 or rows % micro_batch_size:
        raise UserError(f"micro_batch_size {micro_batch_size} must be positive and divide the {rows} rows of a step")
    return rows // micro_batch_size


def split_micro_batches(tree: Any, n: int) -> Any:
    """Every [rows, ...] leaf -> [n, rows // n, ...] (micro-batch j = rows j, j + n, ...)."""

    def split(x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, tree)


def merge_micro_batches(tree: Any) -> Any:
    """Inverse of `split_micro_batches`: [n, rows // n, ...] -> [rows, ...]."""

    def merge(x: jax.Array) -> jax.Array:
        return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])

    return jax.tree.map(merge, tree)
