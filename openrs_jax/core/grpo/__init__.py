"""GRPO core: advantages, chunked token log-probs, the loss and its variants, the jitted update.

- `group_advantages(rewards, num_generations, scale=True)` (`scale=False`: Dr. GRPO's
  centred-only advantages), `reward_std` (the logged within-group std).
- `token_logprobs(graphdef, params, input_ids, attention_mask, completion_start, chunk)`:
  jitted forward-only log-probs [rows, T] for reference and old-policy passes.
- `grpo_loss(logps, old_logps, ref_logps, advantages, mask, ...)` with aggregations
  `group_token_mean` (recipe), `seq_mean`, `token_mean`, `constant_norm` (`AGGREGATIONS`),
  and the variants of docs/grpo-variants.md: `POLICY_LOSSES` (clip, cispo),
  `IMPORTANCE_SAMPLING` (token, sequence), `delta`, a `policy_mask` (`high_entropy_mask`).
- `UpdateConfig`, `TrainState`, `create_train_state(params, config, mesh)`,
  `make_train_step(graphdef, config, mesh) -> step(state, batch) -> (state, metrics)`.
- `BucketedTrainStep(graphdef, config, mesh)`: the same update over length-bucketed
  micro-batches (rows sorted by length, one compiled program per padded length).

Sharding helpers (mesh, partition rules, rollout copy) live in `openrs_jax.core.sharding`;
the optimizer and learning-rate schedule in `openrs_jax.core.optim`.
"""

from openrs_jax.core.grpo.advantages import group_advantages, reward_std
from openrs_jax.core.grpo.logprobs import DEFAULT_CHUNK, chunked_token_logprobs, completion_logprobs, token_logprobs
from openrs_jax.core.grpo.entropy import high_entropy_mask
from openrs_jax.core.grpo.loss import (
    AGGREGATIONS,
    IMPORTANCE_SAMPLING,
    POLICY_LOSSES,
    aggregation_weights,
    grpo_loss,
    token_mean_weights,
)
from openrs_jax.core.grpo.microbatch import merge_micro_batches, num_micro_batches, split_micro_batches
from openrs_jax.core.grpo.update import (
    BATCH_KEYS,
    BucketedTrainStep,
    TrainState,
    UpdateConfig,
    abstract_train_state,
    create_train_state,
    make_train_step,
)

__all__ = [
    "AGGREGATIONS", "BATCH_KEYS", "BucketedTrainStep", "DEFAULT_CHUNK", "IMPORTANCE_SAMPLING", "POLICY_LOSSES",
    "TrainState", "UpdateConfig", "high_entropy_mask",
    "abstract_train_state", "aggregation_weights", "chunked_token_logprobs", "completion_logprobs",
    "create_train_state", "group_advantages", "grpo_loss", "make_train_step", "merge_micro_batches",
    "num_micro_batches", "reward_std", "split_micro_batches", "token_logprobs",
    "token_mean_weights",
]
