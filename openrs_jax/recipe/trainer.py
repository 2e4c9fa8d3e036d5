"""One GRPO run end to end: setup, the step loop, logging, checkpoints, exports.

One step (docs/design.md, data flow): draw `prompts_per_step` prompts -> sample `num_generations`
completions each with the bf16 rollout copy -> dispatch the reference log-probs (skipped when
beta = 0) and old log-probs (only when num_iterations > 1), which need no rewards, so the devices
compute them while the host decodes and scores in the reward pool -> group advantages -> jitted
update(s) with gradient accumulation over length-bucketed micro-batches (`length_bucket`) ->
metrics, checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from openrs_jax.core import distributed, sharding
from openrs_jax.core.checkpoint import Checkpointer
from openrs_jax.core.grpo import (
    BucketedTrainStep, UpdateConfig, abstract_train_state, create_train_state, group_advantages, make_train_step,
    reward_std, token_logprobs,
)
from openrs_jax.core.grpo.loss import truncation_mask
from openrs_jax.core.grpo.microbatch import take_micro_batch
from openrs_jax.core.model import Qwen2Config, write_hf_directory
from openrs_jax.core.model.sources import save_run_tokenizer
from openrs_jax.core.policy import Policy, build_mesh
from openrs_jax.core.sampling import SampleOutput, SamplingParams, bucket_length, left_pad
from openrs_jax.files import atomic_write_text
from openrs_jax.recipe import dynamic_sampling, reference, toy
from openrs_jax.recipe.config import validate
from openrs_jax.recipe.data import PromptDataset, build_dataset, load_rows, make_prompt_order
from openrs_jax.recipe.dynamic_sampling import Rollout
from openrs_jax.recipe.rewards import RewardScorer
from openrs_jax.recipe.run_log import METRICS_FILE, RunLog, outputs_summary

log = logging.getLogger("openrs_jax.recipe.trainer")

# Completions are trained on their longest length in the batch rounded up to this many tokens,
# not on max_completion_length: most rows end early, and few buckets mean few compilations.
COMPLETION_BUCKET = 256

# Configurable reward functions -> the prefix of their keys in the rewards section
# (rewards.cosine_max_len is the `max_len` parameter of `cosine`).
REWARD_PARAM_PREFIXES = {"soft_overlong": "soft_overlong_", "cosine": "cosine_", "repetition_penalty": "repetition_"}


def rollout_prompt_bucket(max_prompt_length: int) -> int:
    """Rollout prompts are padded to a multiple of this, so a run compiles a handful of rollout programs."""
    return min(64, bucket_length(max_prompt_length, 8))


def rollout_sampling(c: ml_collections.ConfigDict, eos_ids: tuple[int, ...], pad_id: int) -> SamplingParams:
    """The rollout's sampling settings of run config `c` (no stop ids with rollout.ignore_eos)."""
    r = c.rollout
    return SamplingParams(
        temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_completion_length,
        eos_ids=() if r.ignore_eos else tuple(eos_ids), pad_id=pad_id,
    )


def trained_width(longest: int, sampled_width: int) -> int:
    """Completion tokens the update trains on: the longest completion rounded up to
    COMPLETION_BUCKET, within the `sampled_width` the sampler returned."""
    return min(bucket_length(longest, COMPLETION_BUCKET), sampled_width)


def reward_params(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """Parameters of the configurable reward functions, from the run config's rewards section."""
    r = config.rewards
    params = {name: {key.removeprefix(prefix): r[key] for key in r.keys() if key.startswith(prefix)}
              for name, prefix in REWARD_PARAM_PREFIXES.items()}
    params["soft_overlong"]["max_len"] = r.soft_overlong_max_len or config.rollout.max_completion_length
    if "soft_overlong" not in r.funcs:
        del params["soft_overlong"]
    return params


@contextlib.contextmanager
def stop_requested() -> Iterator[list[int]]:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (then saves and exits):
    the list of signals received, empty until one comes."""
    received: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        if received:  # a second Ctrl-C: stop right away
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("received %s: finishing this step, saving a checkpoint, then exiting",
                    signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class PendingBatch:
    """A step's host batch (no advantages yet) and the log-prob passes already dispatched on it."""

    batch: dict[str, np.ndarray]
    prompt_len: int  # prompt columns of `batch` (the loss-side prompt bucket)
    plans: Any  # the micro-batch plans of length bucketing, or None
    logps: list[dict[str, Any]]  # per plan (or for the whole batch): ref_logps / old_logps on the devices


class StepClock:
    """Wall time of a step's parts: `with clock("rollout"):` adds to that part."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.parts[part] = self.parts.get(part, 0.0) + time.perf_counter() - start


class GRPOTrainer:
    """Builds everything a run needs from a validated config; `train()` runs the steps."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = c = config
        self.output_dir = Path(c.run.output_dir).expanduser()
        # In a multi-process job every process runs all of this (the same seeded data order,
        # the same host arrays each step); only process 0 writes logs, config.json and exports.
        self.writer = distributed.is_writer()
        if not c.run.resume and ((self.output_dir / METRICS_FILE).is_file()
                                 or any((self.output_dir / "checkpoints").glob("*"))):
            raise ValueError(
                f"output_dir {self.output_dir} already holds a run; pass --config.run.resume=True to continue it "
                "or choose another --config.run.output_dir"
            )
        self.mesh = build_mesh(c.mesh.to_dict())
        validate(c, self.mesh.size)

        # Cheap checks first (model config, tokenizer, data), weights last: a mistake in the
        # setup stops the run in seconds, not after loading 7 GB.
        self.policy = Policy.load(
            c.model.path, tokenizer_path=c.model.tokenizer_path, mesh=self.mesh, compute_dtype=c.model.compute_dtype,
            param_dtype=c.model.param_dtype, remat=c.model.remat, require_chat_template=True,
            prompt_bucket=rollout_prompt_bucket(c.data.max_prompt_length),
        )
        tokenizer = self.policy.tokenizer
        self.dataset: PromptDataset = build_dataset(
            load_rows(toy.resolve(c.data.dataset), c.data.split), tokenizer, c.data.system_prompt,
            c.data.max_prompt_length, dataset_name=c.data.dataset, long_prompts=c.data.long_prompts,
            rollout_bos=c.rollout.bos,
        )
        if c.data.prompt_order == "trl" and self.dataset.dropped_too_long:
            raise ValueError(
                f"prompt_order='trl' permutes the unfiltered dataset, but {self.dataset.dropped_too_long} prompts "
                f"longer than max_prompt_length={c.data.max_prompt_length} were dropped; set "
                "--config.data.long_prompts=truncate_left (as the original run) or --config.data.prompt_order=numpy"
            )
        params = self.policy.load_params(c.run.seed)
        self.order = make_prompt_order(c.data.prompt_order, len(self.dataset), c.run.seed, c.rollout.prompts_per_step)

        self.update_config = UpdateConfig.from_config(c)
        self.state = create_train_state(params, self.update_config, self.mesh)
        # The reference policy: a frozen copy of the initial weights in the compute dtype.
        self.ref_params = (
            sharding.rollout_params(self.state.params, self.mesh, c.model.compute_dtype) if c.grpo.beta > 0 else None
        )
        # A refreshed reference is run state: checkpoints carry it.
        self.saves_reference = self.ref_params is not None and c.grpo.ref_sync_steps > 0
        # length_bucket > 0: one program per micro-batch length; 0: one program per step.
        self.train_step = (
            BucketedTrainStep(self.policy.graphdef, self.update_config, self.mesh)
            if c.grpo.length_bucket and c.grpo.top_entropy_quantile >= 1.0  # its quantile needs the whole batch
            else make_train_step(self.policy.graphdef, self.update_config, self.mesh)
        )
        self.sampling = rollout_sampling(c, self.policy.eos_ids, tokenizer.pad_id)
        self.lr_schedule = self.update_config.schedule()  # the HF Trainer logs the rate after each step
        self.checkpointer = Checkpointer(self.output_dir, keep=c.run.keep_checkpoints)
        self.step = 0
        self.bad_steps = 0
        if c.run.resume:
            self._resume()
        self.scorer = RewardScorer(
            list(c.rewards.funcs), list(c.rewards.weights), reward_params(c),
            num_workers=c.rewards.num_workers, timeout_s=c.rewards.timeout_s,
        )
        self.run_log = RunLog(
            self.output_dir, tensorboard=c.run.tensorboard and "tensorboard" in c.run.report_to, enabled=self.writer,
            wandb_project=c.run.wandb_project if "wandb" in c.run.report_to else None, wandb_config=c.to_dict(),
        )
        self.run_log.truncate_after(self.step)
        if self.writer:
            atomic_write_text(self.output_dir / "config.json", c.to_json_best_effort(indent=2))
            save_run_tokenizer(self.policy.tokenizer_dir, self.output_dir)  # so its checkpoints can be used alone
        self.rng = jax.random.key(c.run.seed)

    # --- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        metadata = {"step": self.step, "data_order": self.order.state(), "bad_steps": self.bad_steps,
                    "model_config": self.policy.model_config.to_hf_dict(), "has_reference": self.saves_reference}
        extra = {"reference": self.ref_params} if self.saves_reference else None
        self.checkpointer.save(self.step, self.state, metadata, extra=extra)

    def _resume(self) -> None:
        """Continues from the latest complete checkpoint, saying in one line what it found."""
        if self.checkpointer.latest_step() is None:
            log.warning("resume: no complete checkpoint in %s: starting from step 0", self.checkpointer.directory)
            return
        saved = Qwen2Config.from_hf_dict(self.checkpointer.restore_metadata()["model_config"])
        if saved.to_hf_dict() != self.policy.model_config.to_hf_dict():
            raise ValueError(
                f"the checkpoint in {self.checkpointer.directory} was written for another model shape; "
                "resume with the same model_path, or choose another output_dir"
            )
        abstract = abstract_train_state(self.state.params, self.update_config, self.mesh)
        self.state, meta = self.checkpointer.restore(abstract)
        self.step = int(meta["step"])
        self.bad_steps = int(meta.get("bad_steps", 0))
        self.order.restore(meta["data_order"])
        if self.saves_reference and meta.get("has_reference"):
            abstract_ref = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                        self.ref_params)
            self.ref_params = self.checkpointer.restore_extra("reference", abstract_ref)
            log.info("reference policy = the refreshed one saved at step %d", self.step)
        elif self.ref_params is not None:
            log.info("reference policy = the initial weights of model_path (unchanged by resuming)")
        max_steps = self.config.grpo.max_steps
        if self.step >= max_steps:
            log.warning("resume: the run in %s is complete (step %d, max_steps=%d): nothing to train; "
                        "raise --config.grpo.max_steps to continue it", self.output_dir, self.step, max_steps)
        else:
            log.info("resuming from step %d (checkpoint %s)", self.step, self.checkpointer.directory / str(self.step))

    def export_hf(self, directory: Path, dtype: str | None = None) -> Path:
        """Writes the current policy as a Hugging Face directory (with the tokenizer files).

        Every process must call it (the parameters are gathered from all); process 0 writes.
        """
        params = jax.tree.map(np.asarray, sharding.to_host(self.state.params))
        if not self.writer:
            return directory
        return write_hf_directory(
            directory, params, self.policy.model_config, dtype=dtype or self.config.run.export_dtype,
            tokenizer_dir=self.policy.tokenizer_dir,
        )

    # --- one step ----------------------------------------------------------------------------
    # train_one_step reads top to bottom; each part below is a method a caller (the benchmark)
    # can time on its own, and the step reports the wall time of each part as time/*.

    def train_one_step(self) -> dict[str, Any]:
        """One optimizer step: draw prompts -> rollout -> start the log-prob passes -> score
        (and refill, with dynamic sampling) -> advantages -> update -> metrics."""
        c = self.config
        clock = StepClock()
        examples = self.draw_prompts()
        with clock("rollout"):
            out = self.rollout(examples)
        sampler_timings = out.timings  # the sampler's own prefill / decode split of the rollout

        # The log-prob passes need no rewards: start them, then score on the host meanwhile.
        pending = None
        if not c.rollout.dynamic_sampling:
            with clock("reference"):
                pending = self.start_logprob_passes(examples, out)

        sampling_metrics: dict[str, float] = {}
        with clock("reward"):
            scored = self.score(examples, out)
            if c.rollout.dynamic_sampling:
                scored, sampling_metrics = self.fill_informative_groups(scored)
            rewards = np.asarray(scored.scores.total, np.float32)
            advantages = self.advantages(rewards)

        # time/reference_s: what the log-prob passes cost beyond the reward scoring they overlap with.
        with clock("reference"):
            if pending is None:  # dynamic sampling: the step's rows are known only after scoring
                pending = self.start_logprob_passes(scored.examples, scored.out)
            batch = self.finish_batch(pending, advantages)

        with clock("update"):
            update_metrics = self.update(batch)
        self.end_step(update_metrics)

        metrics = {
            **self.step_metrics(scored, rewards, update_metrics, pending.prompt_len, clock),
            **sampling_metrics,
            **{f"time/{k}": v for k, v in sampler_timings.items() if k in ("prefill_s", "decode_s")},
        }
        if c.run.log_completions and self.writer:
            self.log_samples(scored, rewards)
        return metrics

    def draw_prompts(self) -> list:
        """The next `prompts_per_step` examples of the data order."""
        return [self.dataset.examples[i] for i in self.order.next_indices(self.config.rollout.prompts_per_step)]

    def rollout(self, examples: list, refill: int = 0) -> SampleOutput:
        """Samples the groups of `examples`; `refill` > 0: dynamic sampling's extra round (own key)."""
        r, sampler = self.config.rollout, self.policy.sampler
        # The decode layout straight from the training parameters: one copy of the weights alive.
        params = sampler.prepare(self.state.params)
        key = jax.random.fold_in(self.rng, self.step)
        if refill:
            key = jax.random.fold_in(key, refill)
        out = sampler.generate(params, [list(e.rollout_ids) for e in examples], r.num_generations, self.sampling, key)
        if r.max_model_length:
            caps = [r.max_model_length + 1 - len(e.rollout_ids) for e in examples]
            out = cap_completions(out, np.repeat(caps, r.num_generations), self.policy.tokenizer.pad_id)
        return out

    def loss_prompts(self, examples: list) -> tuple[np.ndarray, np.ndarray]:
        """The prompts as the loss sees them (single BOS, at most max_prompt_length tokens), one row
        per sample, left-padded as the sampler pads; equal to the rollout's prompts in the clean mode."""
        prompts = [e.prompt_ids for e in examples]
        width = bucket_length(max(len(p) for p in prompts), self.policy.sampler.prompt_bucket)
        ids, mask = left_pad(prompts, width, self.policy.tokenizer.pad_id)
        g = self.config.rollout.num_generations
        return np.repeat(ids, g, axis=0), np.repeat(mask, g, axis=0)

    def dispatch_logprobs(self, batch: dict[str, Any], prompt_len: int) -> tuple[Any, list[dict[str, Any]]]:
        """Starts the reference (beta > 0) and old-policy (num_iterations > 1) log-prob passes
        without waiting for them (JAX dispatches asynchronously).

        Returns (micro-batch plans or None, one dict of log-probs per plan, or one for the
        whole batch when length bucketing is off).
        """
        g = self.config.grpo
        passes = {"ref_logps": self.ref_params} if g.beta > 0 else {}
        if g.num_iterations > 1:
            passes["old_logps"] = self.state.params
        plans = self.train_step.plan(batch) if isinstance(self.train_step, BucketedTrainStep) else None
        logps = []
        for piece in [batch] if plans is None else [take_micro_batch(batch, p) for p in plans]:
            if passes:  # (placing the rows on the devices is for the passes only)
                piece = sharding.shard_batch(piece, self.mesh)
            logps.append({
                key: token_logprobs(self.policy.graphdef, params, piece["input_ids"], piece["attention_mask"],
                                    prompt_len, g.logprob_chunk, mesh=self.mesh,
                                    micro_batch_size=g.micro_batch_size if plans is None else None)
                for key, params in passes.items()
            })
        return plans, logps

    def start_logprob_passes(self, examples: list, out: SampleOutput) -> "PendingBatch":
        """The host batch of these rows (no advantages yet): the loss-side prompts and the
        completions trimmed to the longest one (bucketed), with its log-prob passes dispatched."""
        prompt_ids, prompt_mask = self.loss_prompts(examples)
        t = trained_width(int(out.lengths.max()), out.completion_ids.shape[1])
        completion_mask = out.completion_mask[:, :t]
        if self.config.grpo.mask_truncated_completions:
            completion_mask = truncation_mask(completion_mask, out.truncated)
        batch = {
            "input_ids": np.concatenate([prompt_ids, out.completion_ids[:, :t]], axis=1).astype(np.int32),
            "attention_mask": np.concatenate([prompt_mask, completion_mask], axis=1).astype(np.int32),
            "completion_mask": completion_mask.astype(np.int32),
        }
        plans, logps = self.dispatch_logprobs(batch, prompt_ids.shape[1])
        return PendingBatch(batch, prompt_ids.shape[1], plans, logps)

    def score(self, examples: list, out: SampleOutput) -> Rollout:
        """The whole batch's rewards; this process decodes and scores its share of the groups
        and only the numbers travel between processes."""
        g = self.config.rollout.num_generations
        golds = [e.gold for e in examples for _ in range(g)]
        share = distributed.process_rows(len(examples), g)
        texts = self._completion_texts(out, share)
        local = self.scorer.score(texts, golds[share.start:share.stop], g, lengths=out.lengths[share.start:share.stop])
        return Rollout(examples, out, distributed.gather_scores(local, len(examples), g))

    def fill_informative_groups(self, scored: Rollout) -> tuple[Rollout, dict[str, float]]:
        """Dynamic sampling: drops equal-reward groups and refills the step from extra rounds."""
        c = self.config
        start = time.perf_counter()
        picked, metrics = dynamic_sampling.fill_step(
            scored, self._extra_rollout,
            prompts_per_step=c.rollout.prompts_per_step, num_generations=c.rollout.num_generations,
            max_rounds=c.rollout.dynamic_sampling_max_rounds, pad_id=self.policy.tokenizer.pad_id,
        )
        metrics["time/dynamic_sampling_s"] = time.perf_counter() - start
        return picked, metrics

    def _extra_rollout(self, refill: int) -> Rollout:
        """Dynamic sampling's extra round: the next prompts_per_step prompts, sampled and scored."""
        examples = self.draw_prompts()
        return self.score(examples, self.rollout(examples, refill))

    def advantages(self, rewards: np.ndarray) -> np.ndarray:
        """Group-relative advantages of the step's rewards (rows group-major)."""
        c = self.config
        return np.asarray(group_advantages(jnp.asarray(rewards), c.rollout.num_generations, scale=c.grpo.scale_rewards))

    def finish_batch(self, pending: "PendingBatch", advantages: np.ndarray) -> Any:
        """The update's device batch: the pending rows with their advantages and log-probs
        (waits for the log-prob passes)."""
        batch = {**pending.batch, "advantages": advantages.astype(np.float32)}
        if pending.plans is not None:
            batch = self.train_step.micro_batches(batch, pending.plans, pending.logps)
        else:
            batch = {**sharding.shard_batch(batch, self.mesh), **pending.logps[0]}
        jax.block_until_ready(pending.logps)
        return batch

    def update(self, batch: Any) -> dict[str, float]:
        """The jitted update(s) on `batch` (num_iterations of them); the figures under TRL's names."""
        for _ in range(self.config.grpo.num_iterations):
            self.state, update_metrics = self.train_step(self.state, batch)
        return trl_named(
            {k: float(v) for k, v in sharding.to_host(update_metrics).items()},
            float(self.lr_schedule(int(sharding.to_host(self.state.step)))),
        )

    def end_step(self, update_metrics: dict[str, float]) -> None:
        """Counts the step, refreshes the reference when due, and counts non-finite updates."""
        c = self.config
        self.step += 1
        if self.ref_params is not None and reference.sync_due(self.step, c.grpo.ref_sync_steps):
            self.ref_params = reference.mix_reference(self.ref_params, self.state.params, c.grpo.ref_mixup_alpha)
        self.bad_steps = self.bad_steps + 1 if update_metrics["skipped"] else 0
        if self.bad_steps:
            log.warning("step %d: non-finite loss or gradient; the update was not applied (%d in a row)",
                        self.step, self.bad_steps)

    def step_metrics(self, scored: Rollout, rewards: np.ndarray, update_metrics: dict[str, float],
                     prompt_len: int, clock: "StepClock") -> dict[str, Any]:
        """The step's log scalars: rewards, lengths, the update's figures, the parts' times."""
        g = self.config.rollout.num_generations
        lengths = scored.out.lengths
        step_s = time.perf_counter() - clock.start
        return {
            **scored.scores.metrics(),
            "reward_std": float(reward_std(jnp.asarray(rewards), g)),
            "completion_length": float(lengths.mean()),
            "completion_length_min": int(lengths.min()),
            "completion_length_max": int(lengths.max()),
            "truncated_fraction": float(np.mean(scored.out.truncated)),
            "prompts_truncated": sum(e.truncated for e in scored.examples) * g,  # rows whose loss prompt was cut
            **update_metrics,
            **{f"time/{part}_s": clock.parts.get(part, 0.0) for part in ("rollout", "reward", "reference", "update")},
            "time/step_s": step_s,
            "tokens_per_s": float(lengths.sum() + len(lengths) * prompt_len) / step_s,
            "epoch": self.order.epoch,
            "bad_steps": self.bad_steps,
        }

    def log_samples(self, scored: Rollout, rewards: np.ndarray) -> None:
        """Writes the first `log_completions` rows (prompt, completion, reward, gold) to the run log."""
        g = self.config.rollout.num_generations
        rows = range(min(self.config.run.log_completions, len(rewards)))
        texts = self._completion_texts(scored.out, rows)  # decoded again: a few rows, on the writer only
        samples = [
            {"prompt": scored.examples[r // g].problem, "completion": texts[r], "reward": float(rewards[r]),
             "gold": scored.examples[r // g].gold}
            for r in rows
        ]
        self.run_log.log_completions(self.step, samples)

    def _completion_texts(self, out: SampleOutput, rows: range) -> list[str]:
        """Completion texts of sampler output rows `rows`."""
        return self.policy.tokenizer.decode_batch(out.completions()[rows.start:rows.stop])

    def evaluate(self) -> dict[str, float]:
        """Pass@1 of the current policy on `eval_tasks` (paper prompt and scoring), as log scalars.

        Details go to output_dir/eval/step-<n>/ (details_<task>.jsonl, results.json).
        """
        from openrs_jax.evaluation import evaluate_tasks, flat_metrics

        c = self.config
        p = self.policy
        params = p.sampler.prepare(self.state.params)  # as rollouts: one copy of the weights alive
        results = evaluate_tasks(
            p.sampler, params, p.tokenizer, list(c.eval.tasks), data_dir=c.eval.data_dir or None,
            num_samples=c.eval.num_samples, max_new_tokens=c.eval.max_new_tokens, seed=c.run.seed,
            limit=c.eval.limit or None, eos_ids=p.eos_ids,
            out_dir=self.output_dir / "eval" / f"step-{self.step}" if self.writer else None,
        )
        return flat_metrics(results)

    # --- the loop ----------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Runs until max_steps (or a stop signal); returns the last step's metrics."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        c = self.config
        metrics: dict[str, Any] = {}
        if self.step >= c.grpo.max_steps:  # a finished run, resumed: its outputs stay as they are
            self.close()
            return metrics
        log.info("dataset: %d prompts (%d dropped, %d cut on the left for the loss, as longer than %d tokens); "
                 "%d devices; mesh %s", len(self.dataset), self.dataset.dropped_too_long,
                 self.dataset.truncated_too_long, c.data.max_prompt_length, jax.device_count(), dict(self.mesh.shape))
        bar = tqdm(total=c.grpo.max_steps, initial=self.step, desc="GRPO", unit="step", dynamic_ncols=True,
                   disable=not self.writer)
        try:
            # Log lines go through tqdm.write while the bar is up, so they do not land on the bar's line.
            with stop_requested() as stop, logging_redirect_tqdm():
                stopping = False  # a signal on any process stops every process after the same step
                while self.step < c.grpo.max_steps and not stopping:
                    metrics = self.train_one_step()
                    if c.eval.every and self.step % c.eval.every == 0:
                        metrics.update(self.evaluate())
                    self.run_log.log_metrics(self.step, metrics)
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0.0):.4f}")
                    if self.writer:
                        bar.write(format_summary(self.step, metrics, c.rewards.funcs))
                    stopping = distributed.any_process(bool(stop))
                    too_many_bad = self.bad_steps >= c.run.max_bad_steps
                    if self.step % c.run.save_steps == 0 or self.step == c.grpo.max_steps or stopping or too_many_bad:
                        self.save_checkpoint()
                    if too_many_bad:
                        raise ValueError(
                            f"stopping at step {self.step}: {self.bad_steps} steps in a row had a non-finite loss "
                            "or gradient and were not applied; the checkpoint just saved holds the last good "
                            "weights. Lower learning_rate, check the rewards for NaN, or raise max_bad_steps"
                        )
                    if self.step in tuple(c.run.export_steps):
                        self.export_hf(self.output_dir / f"hf-step-{self.step}")
                if stopping:
                    bar.write(f"stopped by signal at step {self.step}; checkpoint saved, resume with "
                              "--config.run.resume=True")
                else:
                    self.export_hf(self.output_dir / "hf")
        finally:
            bar.close()
            self.close()
        if self.writer:
            print(outputs_summary(self.output_dir, self.step, None if stopping else self.output_dir / "hf",
                                  tensorboard=c.run.tensorboard))
        return metrics

    def close(self) -> None:
        self.scorer.close()
        self.run_log.close()
        self.checkpointer.close()


def cap_completions(out: Any, caps: np.ndarray, pad_id: int) -> Any:
    """Sampler output with row i cut to at most caps[i] (>= 1) completion tokens.

    vLLM 0.7.2 ends a sequence once prompt + output exceed its max_model_len, so a long prompt
    left fewer tokens to its completion (rollout_max_model_length; docs/paper-exact.md). Tokens
    are causal, so cutting a longer sample is sampling with the shorter limit.
    """
    caps = np.maximum(np.asarray(caps, np.int32), 1)
    keep = np.arange(out.completion_ids.shape[1])[None, :] < caps[:, None]
    mask = out.completion_mask & keep
    return dataclasses.replace(
        out, completion_ids=np.where(keep, out.completion_ids, pad_id).astype(out.completion_ids.dtype),
        completion_mask=mask, lengths=mask.sum(1).astype(np.int32), truncated=out.truncated | (out.lengths > caps),
        logprobs=np.where(mask, out.logprobs, 0.0).astype(np.float32),
    )


def trl_named(update_metrics: dict[str, float], lr_after_step: float) -> dict[str, float]:
    """The update's figures under TRL's names, so curves overlay the original run's.

    `kl`: TRL's, the mean over rows of each row's token-mean KL (`kl/row_mean` of the update);
    the token mean over the batch stays as `kl/token_mean`. `learning_rate`: the HF Trainer's,
    read after the scheduler step (the rate of the next update); the rate this update used is
    `learning_rate/used`.
    """
    renamed = {"kl": "kl/token_mean", "kl/row_mean": "kl", "learning_rate": "learning_rate/used"}
    return {**{renamed.get(k, k): v for k, v in update_metrics.items()}, "learning_rate": lr_after_step}


def format_summary(step: int, metrics: dict[str, Any], reward_funcs: Any) -> str:
    """One console line per step."""
    parts = [f"step {step}", f"reward {metrics['reward']:.3f}"]
    parts += [f"{name} {metrics.get(f'rewards/{name}', math.nan):.3f}" for name in reward_funcs]
    parts += [
        f"len {metrics['completion_length']:.0f}",
        f"kl {metrics.get('kl', 0.0):.4f}",
        f"loss {metrics['loss']:.4f}",
        f"lr {metrics['learning_rate']:.2e}",
        f"{metrics['time/step_s']:.1f}s",
    ]
    return " | ".join(parts)
