"""The jitted GRPO update: gradient accumulation over micro-batches, AdamW, sharded state.

    config = UpdateConfig.from_config(cfg)              # or UpdateConfig(...)
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    graphdef, _ = nnx.split(model)                       # model config: dtype, remat
    state = create_train_state(params, config, mesh)     # fp32, FSDP-sharded
    train_step = make_train_step(graphdef, config, mesh)
    state, metrics = train_step(state, sharding.shard_batch(batch, mesh))

`batch` is a dict (rows = prompts_per_step x num_generations, group-major):

| key              | shape            | meaning                                                  |
|------------------|------------------|----------------------------------------------------------|
| input_ids        | [rows, P + T]    | left-padded prompt, then the completion (int32)          |
| attention_mask   | [rows, P + T]    | 1 on real tokens (prompt and completion)                 |
| completion_mask  | [rows, T]        | 1 on completion tokens up to and including the first EOS |
| advantages       | [rows]           | `group_advantages(rewards, G)`                           |
| old_logps        | [rows, T] / None | policy log-probs at rollout time; None when num_iterations = 1 |
| ref_logps        | [rows, T] / None | reference log-probs; None when beta = 0                  |

P (the completion start) is read from the shapes. The step applies one optimizer update;
for num_iterations > 1 the trainer computes `old_logps` once with `token_logprobs` and calls
the step num_iterations times on the same batch. The input state is donated.

Every loss normaliser is computed from the whole batch before it is split (see
`grpo.loss`), so `micro_batch_size` changes memory and speed, never the update.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from openrs_jax.core import optim
from openrs_jax.core.grpo.entropy import high_entropy_mask
from openrs_jax.core.grpo.logprobs import DEFAULT_CHUNK, completion_logprobs, forward_logprobs
from openrs_jax.core.grpo.loss import (
    AGGREGATIONS,
    IMPORTANCE_SAMPLING,
    POLICY_LOSSES,
    aggregation_weights,
    check_option,
    grpo_loss,
    token_mean_weights,
)
from openrs_jax.core.grpo.microbatch import (
    MicroBatch,
    completion_extent,
    length_buckets,
    num_micro_batches,
    split_micro_batches,
    take_micro_batch,
)
from openrs_jax.core.sharding import constrain_batch, shard_batch, tree_shardings

LAYERS = "layers"  # the stacked decoder layers' entry of the parameter dict
BATCH_KEYS = ("input_ids", "attention_mask", "completion_mask", "advantages", "old_logps", "ref_logps")


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    """Hyper-parameters of the update; the defaults are the recipe's (Exp2)."""

    num_generations: int = 6
    micro_batch_size: int | None = None  # rows per accumulation step, all devices together
    beta: float = 0.04
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    loss_aggregation: str = "group_token_mean"
    max_completion_length: int = 3584  # the configured limit (constant_norm uses it)
    logprob_chunk: int = DEFAULT_CHUNK  # sequence positions per output-projection chunk
    logprob_temperature: float = 1.0  # logits divisor; the recipe uses none
    length_bucket: int = 256  # bucketed micro-batches: completion lengths rounded up to this; 0 = off
    log_entropy: bool = True
    learning_rate: float = 1e-6
    warmup_ratio: float = 0.1
    min_lr_rate: float = 0.1
    max_steps: int = 500
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    # Variants (docs/grpo-variants.md); the defaults are the recipe's GRPO.
    policy_loss: str = "clip"  # or "cispo"
    importance_sampling: str = "token"  # or "sequence" (GSPO)
    delta: float = 0.0  # two-sided clipping bound; 0: off
    top_entropy_quantile: float = 1.0  # < 1: only the highest-entropy tokens keep the policy term

    def __post_init__(self) -> None:
        check_option("loss_aggregation", self.loss_aggregation, AGGREGATIONS)
        check_option("policy_loss", self.policy_loss, POLICY_LOSSES)
        check_option("importance_sampling", self.importance_sampling, IMPORTANCE_SAMPLING)
        if self.num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {self.num_generations}")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            raise ValueError(f"micro_batch_size must be positive, got {self.micro_batch_size}")
        for name in ("beta", "epsilon_low", "epsilon_high", "learning_rate", "max_grad_norm", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.logprob_chunk <= 0 or self.logprob_temperature <= 0:
            raise ValueError("logprob_chunk and logprob_temperature must be positive")
        if self.delta < 0:
            raise ValueError(f"delta={self.delta} must be 0 (off) or > 1 + epsilon_high")
        if self.delta and self.policy_loss != "clip":
            raise ValueError(
                f"delta={self.delta} bounds the clipped objective; policy_loss={self.policy_loss!r} has none: "
                "set delta=0"
            )
        if self.delta and self.delta <= 1.0 + self.epsilon_high:
            raise ValueError(
                f"delta={self.delta} must be > 1 + epsilon_high = {1.0 + self.epsilon_high}: a lower cap would also "
                "cut positive-advantage ratios inside the clip range (a tighter epsilon_high), not bound negative ones"
            )
        if not 0.0 <= self.top_entropy_quantile <= 1.0:
            raise ValueError(
                f"top_entropy_quantile={self.top_entropy_quantile} must be in [0, 1] (the fraction of highest-entropy "
                "tokens kept in the policy loss; 1 keeps all, the paper uses 0.2)"
            )
        if self.length_bucket < 0:
            raise ValueError(f"length_bucket must be >= 0 (0 = no bucketing), got {self.length_bucket}")
        optim.check_schedule(self.max_steps, self.warmup_ratio, self.min_lr_rate)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> "UpdateConfig":
        """Picks this class's fields out of a run config's `grpo` section (with the group size and
        completion length of its `rollout` section) or out of a flat mapping; others are ignored."""
        if isinstance(config, cls):
            return config
        if "grpo" in config:
            rollout = config["rollout"]
            config = {**dict(config["grpo"].items()), "num_generations": rollout["num_generations"],
                      "max_completion_length": rollout["max_completion_length"]}
        values = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
        return cls(**values)

    def loss_options(self) -> dict[str, Any]:
        """The keyword arguments of `grpo_loss` that this config sets (the update passes these)."""
        return dict(
            num_generations=self.num_generations, beta=self.beta, epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high, policy_loss=self.policy_loss,
            importance_sampling=self.importance_sampling, delta=self.delta, aggregation=self.loss_aggregation,
            max_completion_length=self.max_completion_length,
        )

    def schedule(self) -> optax.Schedule:
        return optim.cosine_with_min_lr(self.learning_rate, self.max_steps, self.warmup_ratio, self.min_lr_rate)

    def optimizer(self) -> optax.GradientTransformation:
        return optim.make_optimizer(
            self.schedule(), max_grad_norm=self.max_grad_norm, weight_decay=self.weight_decay,
            b1=self.adam_beta1, b2=self.adam_beta2, eps=self.adam_epsilon,
        )


@struct.dataclass
class TrainState:
    """What an update changes: fp32 parameters (a pure dict), AdamW state, update count."""

    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: updates applied so far


def _init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))


def abstract_train_state(params: Any, config: UpdateConfig, mesh: Mesh) -> TrainState:
    """Shapes, dtypes and shardings of the train state (no memory), e.g. for AOT compiling.

    `params` may be arrays or `jax.ShapeDtypeStruct`s (`nnx.to_pure_dict` of an abstract model).
    """
    tx = config.optimizer()
    shapes = jax.eval_shape(lambda p: _init_state(p, tx), params)
    shardings = tree_shardings(shapes, mesh)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def create_train_state(params: Any, config: UpdateConfig, mesh: Mesh) -> TrainState:
    """The initial train state from a parameter tree (numpy or jax, any float dtype), sharded.

    Parameters are placed shard by shard before the fp32 cast, so no device holds them whole.
    """
    tx = config.optimizer()
    params = jax.device_put(params, tree_shardings(params, mesh))
    shardings = jax.tree.map(lambda s: s.sharding, abstract_train_state(params, config, mesh))
    return jax.jit(lambda p: _init_state(p, tx), out_shardings=shardings)(params)


def _check_batch(batch: Mapping[str, Any], config: UpdateConfig, has_ref: bool) -> None:
    unknown = set(batch) - set(BATCH_KEYS)
    missing = {"input_ids", "attention_mask", "completion_mask", "advantages"} - set(batch)
    if unknown or missing:
        raise ValueError(f"batch keys: missing {sorted(missing)}, unknown {sorted(unknown)}; expected {BATCH_KEYS}")
    rows, seq = batch["input_ids"].shape
    t = batch["completion_mask"].shape[1]
    if batch["completion_mask"].shape[0] != rows or not 0 < t < seq:
        raise ValueError(f"completion_mask {batch['completion_mask'].shape} does not fit input_ids {(rows, seq)}")
    if config.beta != 0.0 and not has_ref:
        raise ValueError("beta != 0 needs batch['ref_logps'] (compute them with token_logprobs)")


def _constrain_like_params(tree: Any, mesh: Mesh | None) -> Any:
    return tree if mesh is None else jax.lax.with_sharding_constraint(tree, tree_shardings(tree, mesh))


def _micro_batch_grad_fn(graphdef: nnx.GraphDef, config: UpdateConfig, mesh: Mesh | None) -> Callable:
    """`(params, mb, grads_sum) -> ((loss, metrics), grads_sum + grads)` of one micro-batch whose
    `loss_weights` and `metric_weights` come from the whole batch (its shares of the batch's loss
    and metrics).

    The running fp32 gradient sum goes into the gradient computation: the decoder layers add
    their gradient into its "layers" part in place (`model.layer_grads`), the other parameters'
    gradients are added after."""

    def micro_batch_loss(params: Any, mb: dict[str, Any], layers_sum: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        model = nnx.merge(graphdef, params)
        completion_start = mb["input_ids"].shape[1] - mb["loss_weights"].shape[1]
        logps, entropy = completion_logprobs(
            model, mb["input_ids"], mb["attention_mask"], completion_start, chunk=config.logprob_chunk,
            temperature=config.logprob_temperature, with_entropy=config.log_entropy, mesh=mesh,
            layer_grad_accumulator=layers_sum,
        )
        return grpo_loss(
            logps, mb.get("old_logps"), mb.get("ref_logps"), mb["advantages"], mb["completion_mask"],
            loss_weights=mb["loss_weights"], metric_weights=mb["metric_weights"], entropy=entropy,
            policy_mask=mb.get("entropy_mask"), row_weights=mb.get("row_weights"), **config.loss_options(),
        )

    grad_fn = jax.value_and_grad(micro_batch_loss, has_aux=True)

    def add_micro_batch(params: Any, mb: dict[str, Any], grads_sum: Any) -> tuple[tuple, Any]:
        (loss, metrics), grads = grad_fn(params, mb, grads_sum[LAYERS])
        rest = {k: jax.tree.map(jnp.add, grads_sum[k], v) for k, v in grads.items() if k != LAYERS}
        return (loss, metrics), _constrain_like_params({**rest, LAYERS: grads[LAYERS]}, mesh)

    return add_micro_batch


def batch_weights(completion_mask: jax.Array, config: UpdateConfig) -> dict[str, jax.Array]:
    """The float completion mask and the whole batch's loss and metric weights, all [rows, T]."""
    mask = jnp.asarray(completion_mask).astype(jnp.float32)
    return {
        "completion_mask": mask,
        "loss_weights": aggregation_weights(
            mask, num_generations=config.num_generations, aggregation=config.loss_aggregation,
            max_completion_length=config.max_completion_length,
        ),
        "metric_weights": token_mean_weights(mask),
        # Row-mean weights for TRL's `kl` metric (mean over rows of each row's token mean).
        "row_weights": aggregation_weights(mask, num_generations=config.num_generations, aggregation="seq_mean"),
    }


def _apply_gradients(
    state: TrainState, grads: Any, sums: dict[str, jax.Array], config: UpdateConfig, mesh: Mesh | None
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW update from the batch's summed gradient and its loss, num_tokens and metric sums;
    a non-finite step changes nothing."""
    tx = config.optimizer()
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(params=params, opt_state=opt_state, step=state.step + 1)
    # A non-finite loss or gradient must not reach the weights or Adam's moments: keep
    # the old state (the trainer counts such steps and stops after too many in a row).
    finite = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    new_state = _constrain_like_params(new_state, mesh)
    metrics = {
        **sums,
        "grad_norm": grad_norm,
        "learning_rate": config.schedule()(state.step),
        "skipped": 1.0 - finite.astype(jnp.float32),
    }
    return new_state, metrics


def make_train_step(
    graphdef: nnx.GraphDef, config: UpdateConfig | Mapping[str, Any], mesh: Mesh | None
) -> Callable[[TrainState, dict[str, Any]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted update `(state, batch) -> (state, metrics)`; the state argument is donated.

    A step whose loss or gradient norm is not finite leaves the state unchanged and reports
    `skipped` = 1. Metrics (scalars): loss, grad_norm (before clipping), learning_rate (the one this update
    used), kl (when ref_logps are given), clip_ratio, clip_ratio/low, clip_ratio/high,
    entropy (when config.log_entropy), num_tokens. `mesh=None` adds no sharding constraints
    (one device).
    """
    config = UpdateConfig.from_config(config)
    grad_fn = _micro_batch_grad_fn(graphdef, config, mesh)

    def step(state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
        _check_batch(batch, config, has_ref=batch.get("ref_logps") is not None)
        # Normalisers from the whole batch: each micro-batch's loss is its exact share.
        data = {k: v for k, v in batch.items() if v is not None}
        data.update(batch_weights(batch["completion_mask"], config))
        mask = data["completion_mask"]
        n = num_micro_batches(mask.shape[0], config.micro_batch_size)
        if config.top_entropy_quantile < 1.0:
            # The entropy threshold is a quantile over the whole batch: one forward pass first.
            entropy = forward_logprobs(
                graphdef, jax.lax.stop_gradient(state.params), data["input_ids"], data["attention_mask"],
                data["input_ids"].shape[1] - mask.shape[1], config.logprob_chunk,
                micro_batch_size=config.micro_batch_size, temperature=config.logprob_temperature, with_entropy=True,
                mesh=mesh,
            )
            data["entropy_mask"] = high_entropy_mask(entropy, mask, config.top_entropy_quantile)

        zeros = _constrain_like_params(jax.tree.map(jnp.zeros_like, state.params), mesh)
        if n == 1:
            (loss, metrics), grads = grad_fn(state.params, data, zeros)
        else:
            def accumulate(grads_sum: Any, mb: dict[str, Any]) -> tuple[Any, tuple]:
                (loss, metrics), grads_sum = grad_fn(state.params, mb, grads_sum)
                return grads_sum, (loss, metrics)

            micro = split_micro_batches(data, n)  # [n, micro_batch_size, ...]
            if mesh is not None:
                micro = jax.tree.map(lambda x: constrain_batch(x, mesh, row_axis=1), micro)
            grads, (losses, metrics) = jax.lax.scan(accumulate, zeros, micro)
            # Micro-batch losses and metrics are shares of the batch's: they add up.
            loss, metrics = losses.sum(), jax.tree.map(lambda x: x.sum(0), metrics)
        return _apply_gradients(state, grads, {"loss": loss, "num_tokens": mask.sum(), **metrics}, config, mesh)

    return jax.jit(step, donate_argnums=(0,))


class BucketedTrainStep:
    """The update over length-bucketed micro-batches: one compiled program per padded length.

        step = BucketedTrainStep(graphdef, config, mesh)
        plans = step.plan(batch)                          # rows sorted by length, cut into micro-batches
        micro = step.micro_batches(batch, plans)          # weights from the whole batch, sharded
        state, metrics = step(state, micro)

    `batch` is the host (numpy) batch of `make_train_step`'s table; `ref_logps`/`old_logps` may
    be given per micro-batch instead (`micro_batches(..., extra=[{"ref_logps": ...}, ...])`),
    as the trainer does to compute them bucket by bucket. Each micro-batch's gradient, loss and
    metric shares are added up on the device (the accumulator is donated), then one program
    applies AdamW. Because every normaliser comes from the whole batch, the update equals
    `make_train_step`'s up to float rounding, whatever the order and padding of the rows.
    """

    def __init__(self, graphdef: nnx.GraphDef, config: UpdateConfig | Mapping[str, Any], mesh: Mesh | None):
        self.config = UpdateConfig.from_config(config)
        if self.config.top_entropy_quantile < 1.0:
            # Its threshold is a quantile over the whole batch, computed inside make_train_step's program.
            raise ValueError("top_entropy_quantile < 1 needs the whole batch in one program: use make_train_step")
        self.mesh = mesh
        grad_fn = _micro_batch_grad_fn(graphdef, self.config, mesh)

        def accumulate(params: Any, acc: tuple, mb: dict[str, Any]) -> tuple:
            (loss, metrics), grads = grad_fn(params, mb, acc[0])
            scalars = {"loss": loss, "num_tokens": mb["completion_mask"].sum(), **metrics}
            return grads, jax.tree.map(jnp.add, acc[1], scalars)

        def zeros(params: Any, scalars: dict[str, Any]) -> tuple:
            grads = _constrain_like_params(jax.tree.map(jnp.zeros_like, params), mesh)
            return grads, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), scalars)

        def apply(state: TrainState, acc: tuple) -> tuple[TrainState, dict[str, jax.Array]]:
            return _apply_gradients(state, *acc, self.config, mesh)  # acc: (gradient sum, scalar sums)

        self._grad_fn = grad_fn
        self._accumulate = jax.jit(accumulate, donate_argnums=(1,))
        self._zeros = jax.jit(zeros)
        self._apply = jax.jit(apply, donate_argnums=(0,))

    def plan(self, batch: Mapping[str, Any]) -> list[MicroBatch]:
        """Micro-batches of rows of similar length (one micro-batch of all rows when
        `length_bucket` is 0: then use `make_train_step`)."""
        t = batch["completion_mask"].shape[1]
        extent = completion_extent(batch["attention_mask"], batch["completion_mask"])
        return length_buckets(extent, self.config.micro_batch_size, self.config.length_bucket or t, t)

    def micro_batches(
        self, batch: Mapping[str, Any], plans: list[MicroBatch], extra: list[dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Host batch -> sharded micro-batches, with the whole batch's loss and metric weights."""
        has_ref = batch.get("ref_logps") is not None or bool(extra) and all(
            e.get("ref_logps") is not None for e in extra
        )
        _check_batch(batch, self.config, has_ref)
        host = dict(batch)
        # On the host's CPU: no wait behind device work already queued (the reference pass).
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            weights = batch_weights(np.asarray(batch["completion_mask"]), self.config)
            host.update({k: np.asarray(v) for k, v in weights.items()})
        out = []
        for i, plan in enumerate(plans):
            mb = {k: v for k, v in take_micro_batch(host, plan).items() if v is not None}
            mb = shard_batch(mb, self.mesh) if self.mesh is not None else jax.tree.map(jnp.asarray, mb)
            if extra is not None:
                mb.update({k: v for k, v in extra[i].items() if v is not None})
            out.append(mb)
        return out

    def gradients(self, params: Any, micro: list[dict[str, Any]]) -> tuple[Any, dict[str, jax.Array]]:
        """The batch's summed gradient and loss/metric sums (what `__call__` applies)."""
        (loss, metrics), _ = jax.eval_shape(self._grad_fn, params, micro[0], params)
        scalars = {"loss": loss, "num_tokens": jax.ShapeDtypeStruct((), jnp.float32), **metrics}
        acc = self._zeros(params, scalars)
        for mb in micro:
            acc = self._accumulate(params, acc, mb)
        return acc

    def __call__(self, state: TrainState, micro: list[dict[str, Any]]) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer update over the micro-batches; the state argument is donated."""
        return self._apply(state, self.gradients(state.params, micro))
