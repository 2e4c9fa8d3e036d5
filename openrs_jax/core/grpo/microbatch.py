"""Splitting a batch's rows into micro-batches inside jit, and putting them back.

Micro-batch j holds rows j, j + n, j + 2n, ... (n micro-batches). With rows split over the
devices in contiguous blocks, each device then keeps its own rows in every micro-batch
whenever the micro-batch size is a multiple of the device count: no data moves. Which rows
share a micro-batch does not matter for the update, since every loss normaliser is computed
from the whole batch (see `grpo.loss.aggregation_weights`).

Length bucketing (`length_buckets`, `take_micro_batch`) works on the host instead: rows are
sorted by length and each micro-batch keeps only the columns its longest row needs, so the
update runs one compiled program per padded length instead of padding every micro-batch to the
step's longest completion.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np


def num_micro_batches(rows: int, micro_batch_size: int | None) -> int:
    """How many micro-batches `rows` make; `None` or `rows` means one."""
    if micro_batch_size is None or micro_batch_size >= rows:
        return 1
    if micro_batch_size <= 0 or rows % micro_batch_size:
        raise ValueError(f"micro_batch_size {micro_batch_size} must be positive and divide the {rows} rows of a step")
    return rows // micro_batch_size


def split_micro_batches(tree: Any, n: int) -> Any:
    """Every [rows, ...] leaf -> [n, rows // n, ...] (micro-batch j = rows j, j + n, ...)."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), tree)


def merge_micro_batches(tree: Any) -> Any:
    """Inverse of `split_micro_batches`: [n, rows // n, ...] -> [rows, ...]."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


# --- length-bucketed micro-batches (built on the host, one program per padded length) ------


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """Which rows of a step form one micro-batch, and the completion length they are padded to."""

    rows: np.ndarray  # int indices into the step's rows
    completion_length: int


def completion_extent(attention_mask: np.ndarray, completion_mask: np.ndarray) -> np.ndarray:
    """Per row, one past the last completion column holding a real or trained token: [rows]."""
    t = completion_mask.shape[1]
    used = (np.asarray(attention_mask)[:, -t:] != 0) | (np.asarray(completion_mask) != 0)
    return np.where(used.any(axis=1), t - np.argmax(used[:, ::-1], axis=1), 0)


def length_buckets(extent: np.ndarray, micro_batch_size: int | None, bucket: int, max_length: int) -> list[MicroBatch]:
    """Rows sorted by completion extent (longest first), cut into micro-batches of
    `micro_batch_size` rows, each padded to its longest row rounded up to `bucket` tokens
    (at most `max_length`). Sorting groups rows of similar length, so little padding is left.
    """
    rows = len(extent)
    size = rows // num_micro_batches(rows, micro_batch_size)
    order = np.argsort(-np.asarray(extent), kind="stable")
    plans = []
    for start in range(0, rows, size):
        picked = order[start : start + size]
        longest = max(int(extent[picked].max()), 1)
        plans.append(MicroBatch(rows=picked, completion_length=min(-(-longest // bucket) * bucket, max_length)))
    return plans


def take_micro_batch(batch: Mapping[str, Any], plan: MicroBatch) -> dict[str, Any]:
    """The rows and columns of one micro-batch from a host batch (numpy leaves).

    Leaves of shape [rows] are indexed; [rows, T] leaves (completion-aligned: masks, weights,
    log-probs) keep the first `completion_length` columns; [rows, P + T] leaves (input_ids,
    attention_mask) keep the prompt and those columns. None stays None.
    """
    drop = batch["completion_mask"].shape[1] - plan.completion_length  # padding columns at the end

    def take(x: Any) -> np.ndarray:
        x = np.asarray(x)[plan.rows]
        return x[:, : x.shape[1] - drop] if x.ndim >= 2 else x

    return {key: None if x is None else take(x) for key, x in batch.items()}
