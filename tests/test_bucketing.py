"""Length-bucketed micro-batches: the plan, and a gradient equal to the one-batch gradient for
every loss aggregation (fp32, 1e-5 relative), with micro-batches that cut across groups."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from openrs_jax.core import sharding
from openrs_jax.core.grpo import AGGREGATIONS, UpdateConfig, aggregation_weights, completion_logprobs, create_train_state, grpo_loss
from openrs_jax.core.grpo.microbatch import MicroBatch, completion_extent, length_buckets, take_micro_batch
from openrs_jax.core.grpo.update import BucketedTrainStep
from tests.conftest import small_random_qwen2

G = 3
ROWS, P, T = 12, 4, 12  # four groups of three


@pytest.fixture(scope="module")
def tiny():
    return small_random_qwen2(seed=7)


def ragged_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Left-padded prompts, completions of lengths 1..T (one row ends at the last column)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 96, (ROWS, P + T)).astype(np.int32)
    attn = np.ones((ROWS, P + T), np.int32)
    attn[1::2, :2] = 0
    lengths = rng.integers(1, T + 1, ROWS)
    lengths[5] = T
    completion = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)
    attn[:, P:] = completion
    return {
        "input_ids": ids, "attention_mask": attn, "completion_mask": completion,
        "advantages": rng.normal(size=ROWS).astype(np.float32),
        "old_logps": None, "ref_logps": None,
    }


def test_plan_sorts_rows_and_pads_each_micro_batch_to_its_bucket():
    extent = np.array([3, 12, 1, 7, 8, 2])
    plans = length_buckets(extent, micro_batch_size=2, bucket=4, max_length=12)
    assert [p.rows.tolist() for p in plans] == [[1, 4], [3, 0], [5, 2]]
    assert [p.completion_length for p in plans] == [12, 8, 4]
    batch = ragged_batch()
    mb = take_micro_batch(batch, MicroBatch(rows=np.array([2, 0]), completion_length=4))
    assert mb["input_ids"].shape == (2, P + 4) and mb["completion_mask"].shape == (2, 4)
    np.testing.assert_array_equal(mb["input_ids"], batch["input_ids"][[2, 0], : P + 4])
    assert mb["ref_logps"] is None
    # The extent covers real and trained tokens, and is 0 for an empty completion.
    attn = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]])
    comp = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(completion_extent(attn, comp), [1, 2, 0])


def test_bucketed_gradient_equals_one_batch_gradient_for_every_aggregation(tiny):
    graphdef, params = tiny
    batch = ragged_batch()
    config = UpdateConfig(num_generations=G, micro_batch_size=2, beta=0.04, max_completion_length=16,
                          length_bucket=4, logprob_chunk=4, learning_rate=1e-3, warmup_ratio=0.0, max_steps=10)

    def logps_of(p):
        return completion_logprobs(nnx.merge(graphdef, p), batch["input_ids"], batch["attention_mask"], P,
                                   chunk=T)[0]

    base = np.asarray(jax.jit(logps_of)(params))
    rng = np.random.default_rng(1)
    batch["old_logps"] = (base + 0.2 * rng.normal(size=base.shape)).astype(np.float32)
    batch["ref_logps"] = (base + 0.3 * rng.normal(size=base.shape)).astype(np.float32)

    # The reference: one batch, no micro-batches, the aggregation's weights over all rows.
    @jax.jit
    def whole_loss_and_grad(p, weights):
        def loss(p):
            return grpo_loss(
                logps_of(p), jnp.asarray(batch["old_logps"]), jnp.asarray(batch["ref_logps"]),
                jnp.asarray(batch["advantages"]), jnp.asarray(batch["completion_mask"]), num_generations=G,
                beta=0.04, loss_weights=weights,
            )[0]
        return jax.value_and_grad(loss)(p)

    mesh = sharding.make_mesh("fsdp=1", jax.devices()[:1])
    step = BucketedTrainStep(graphdef, config, mesh)
    plans = step.plan(batch)
    # Sorted by length: micro-batches mix groups and are padded to different lengths.
    assert len({p.completion_length for p in plans}) > 1
    assert any(len({int(r) // G for r in p.rows}) > 1 for p in plans)
    for aggregation in sorted(AGGREGATIONS):
        # The compiled programs take the weights as inputs: only the host side changes.
        step.config = dataclasses.replace(config, loss_aggregation=aggregation)
        weights = aggregation_weights(jnp.asarray(batch["completion_mask"]), num_generations=G,
                                      aggregation=aggregation, max_completion_length=16)
        want_loss, want = whole_loss_and_grad(params, weights)
        grads, sums = step.gradients(params, step.micro_batches(batch, plans))
        assert float(sums["loss"]) == pytest.approx(float(want_loss), rel=1e-5), aggregation
        assert float(sums["num_tokens"]) == batch["completion_mask"].sum()
        for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want)):
            err = np.linalg.norm(np.asarray(g) - np.asarray(w)) / np.linalg.norm(np.asarray(w))
            assert err <= 1e-5, (aggregation, jax.tree_util.keystr(path), err)

    # The update applies that gradient: AdamW's first step moves every weight by about lr.
    state = create_train_state(params, config, mesh)
    before = np.asarray(state.params["layers"]["q_proj"]["kernel"])
    state, metrics = step(state, step.micro_batches(batch, plans))
    assert float(metrics["skipped"]) == 0.0 and float(metrics["grad_norm"]) > 0
    assert float(metrics["loss"]) == pytest.approx(float(want_loss), rel=1e-5)
    moved = np.abs(np.asarray(state.params["layers"]["q_proj"]["kernel"]) - before)
    assert 0.5e-3 < moved.max() <= 1.01e-3


def test_trainer_step_is_the_same_with_and_without_bucketing(tmp_path):
    """The trainer's bucketed step (several padded lengths) and its one-program step give the
    same first update; beta = 0 with two updates per rollout runs without a reference pass."""
    import json

    from openrs_jax.recipe.config import load_config
    from openrs_jax.recipe.trainer import GRPOTrainer
    from tests.conftest import REPO_ROOT

    def first_step(name: str, *overrides: str) -> dict:
        config = load_config(REPO_ROOT / "configs" / "tiny.py", [
            f"run.output_dir={tmp_path / name}", "rewards.num_workers=0", "run.tensorboard=False", "grpo.max_steps=1",
            *overrides,
        ])
        GRPOTrainer(config).train()
        return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])

    bucketed = first_step("bucketed", "grpo.length_bucket=4")
    whole = first_step("whole", "grpo.length_bucket=0")
    assert bucketed["reward"] == whole["reward"]
    for key in ("loss", "kl", "clip_ratio", "entropy", "num_tokens"):
        assert bucketed[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-7), key
    assert bucketed["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)
    no_reference = first_step("no_reference", "grpo.length_bucket=4", "grpo.beta=0.0", "grpo.num_iterations=2")
    assert "kl" not in no_reference and np.isfinite(no_reference["loss"])
