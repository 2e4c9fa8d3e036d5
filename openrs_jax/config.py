"""Run configuration: ml_collections files with `get_config()`, command-line overrides, validation.

Every key a run understands is declared in `base_config()` with its default; config files
(configs/*.py) start from it and set the experiment's values. The dict is locked, so a
misspelt key in a file or an override is an error that names it and suggests the right one.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from openrs_jax.errors import UserError

LOSS_AGGREGATIONS = ("group_token_mean", "seq_mean", "token_mean", "constant_norm")

SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer, and put your final answer within \\boxed{{}} . The reasoning process and answer are enclosed "
    "within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here "
    "</think> <answer> answer here </answer>."
)
ENGLISH_ONLY = " Note that respond by English, NOT use other languages."


def base_config() -> ml_collections.ConfigDict:
    """All keys with their defaults (the recipe's values where it has one)."""
    c = ml_collections.ConfigDict()
    # Model and data.
    c.model_path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    c.tokenizer_path = ""  # empty: same as model_path
    c.dataset_name = "knoveleng/open-rs"
    c.dataset_split = "train"
    c.system_prompt = SYSTEM_PROMPT
    c.max_prompt_length = 512
    # How the original run fed the model (docs/paper-exact.md); configs/exp1-3.py set the paper's.
    c.prompt_order = "numpy"  # numpy: seeded shuffle of the kept prompts; trl: TRL's torch.randperm blocks
    c.long_prompts = "drop"  # drop | truncate_left (sample from the full prompt, loss on its last tokens)
    c.rollout_bos = "single"  # single | double (rollouts start with two BOS tokens, as vLLM's did)
    c.rollout_max_model_length = 0  # > 0: prompt + completion capped as vLLM's max_model_len (0: off)
    # Rewards (docs/recipe.md section Rewards). Weights pair with reward_funcs in order.
    c.reward_funcs = ("format", "accuracy")
    c.reward_weights = (1.0, 2.0)
    c.cosine_min_value_wrong = 0.0
    c.cosine_max_value_wrong = -0.5
    c.cosine_min_value_correct = 0.5
    c.cosine_max_value_correct = 1.0
    c.cosine_max_len = 1000
    c.repetition_ngram_size = 3
    c.repetition_max_penalty = -1.0
    c.reward_num_workers = 2
    c.reward_timeout_s = 10.0
    # Rollouts (docs/recipe.md section Rollouts).
    c.num_generations = 6
    c.prompts_per_step = 12
    c.max_completion_length = 3584
    c.temperature = 0.7
    c.top_p = 1.0
    c.top_k = 0
    # Update (docs/recipe.md section GRPO update).
    c.micro_batch_size = 6
    c.learning_rate = 1e-6
    c.warmup_ratio = 0.1
    c.min_lr_rate = 0.1
    c.max_steps = 500
    c.beta = 0.04
    c.epsilon_low = 0.2
    c.epsilon_high = 0.2
    c.num_iterations = 1
    c.loss_aggregation = "group_token_mean"
    # "group" (the recipe), "batch" or "none"; True/False still mean group/none.
    c.scale_rewards = ml_collections.FieldReference("group", field_type=object)
    c.max_grad_norm = 1.0
    c.weight_decay = 0.0
    c.logprob_chunk = 256
    # Numerics and placement.
    c.compute_dtype = "bfloat16"
    c.param_dtype = "float32"
    c.remat = "full"
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # -1: all remaining devices
    # Multi-process jobs (README "Several machines"): empty/0/-1 read JAX_COORDINATOR_ADDRESS,
    # JAX_NUM_PROCESSES, JAX_PROCESS_ID, else SLURM / Open MPI; none of them: one process.
    c.coordinator_address = ""  # host:port of process 0, the same for every process
    c.num_processes = 0
    c.process_id = -1
    c.heartbeat_timeout_s = 100  # a silent peer is declared dead (and this process ends) after this
    c.init_timeout_s = 300  # how long processes wait for each other at start
    # Run control and outputs.
    c.seed = 42
    c.output_dir = "runs/openrs"
    c.resume = False
    c.save_steps = 50
    c.keep_checkpoints = 3
    c.export_steps = ()  # steps at which to also write output_dir/hf-step-<n>
    c.export_dtype = "bfloat16"
    c.log_completions = 4  # sample completions per step written to completions.jsonl
    c.tensorboard = True
    c.max_bad_steps = 3  # consecutive non-finite steps before the run stops
    # Periodic evaluation (0 = off).
    c.eval_every = 0
    c.eval_tasks = ("aime24",)
    c.eval_data_dir = ""
    c.eval_num_samples = 1
    c.eval_max_new_tokens = 3584
    c.eval_limit = 0  # 0: every problem of the task
    # GRPO variants (docs/grpo-variants.md: formulas and sources); the defaults are the recipe's GRPO.
    c.policy_loss = "clip"  # "clip" (PPO-style clipped objective) or "cispo" (MiniMax-M1)
    c.importance_sampling = "token"  # "token" or "sequence" (GSPO: one ratio per completion)
    c.delta = 0.0  # two-sided clipping (INTELLECT-2): ratio cap for negative advantages, > 1 + epsilon_high; 0: off
    c.top_entropy_quantile = 1.0  # fraction of highest-entropy tokens that keep the policy loss (0.2 in the paper)
    c.mask_truncated_completions = False  # DAPO: completions without EOS get no loss tokens
    c.soft_overlong_max_len = 0  # soft_overlong reward: L_max in tokens; 0: max_completion_length
    c.soft_overlong_cache_len = 512  # soft_overlong reward: the punishment ramps over the last this many tokens
    c.dynamic_sampling = False  # DAPO: drop groups with equal rewards, draw more prompts to refill the step
    c.dynamic_sampling_max_rounds = 4  # extra rollout rounds per step at most (then equal-reward groups fill up)
    c.ref_sync_steps = 0  # > 0: every this many steps the reference becomes a mix with the policy (TR-DPO)
    c.ref_mixup_alpha = 0.6  # reference <- alpha * policy + (1 - alpha) * reference
    c.report_to = ("tensorboard",)  # metric sinks: "tensorboard", "wandb" (pip install wandb)
    c.wandb_project = "openrs-jax"
    return c


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Runs `get_config()` of a Python config file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist (e.g. --config configs/exp2.py)")
    spec = importlib.util.spec_from_file_location(f"openrs_config_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {p} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"get_config() in {p} must return an ml_collections.ConfigDict")
    return config


def _unknown_key_error(key: str, config: ml_collections.ConfigDict) -> UserError:
    keys = sorted(_flat_keys(config))
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(keys)}"
    return UserError(f"unknown config key {key!r}{hint}")


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_flat_keys(v, prefix + k + "."))
    return keys


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parses an override string into the type of the key's current value."""
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(text).lower() in ("true", "false", "1", "0"):
            return str(text).lower() in ("true", "1")
    elif isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(current, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(current, (tuple, list)):
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)):
            return tuple(value)
        return (value,)
    elif current is None:
        return value
    raise UserError(f"--config.{key}={text}: expected a {type(current).__name__}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `key=value` or `key.sub=value` overrides (the `--config.` prefix already removed)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like --config.key=value")
        key, text = item.split("=", 1)
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise _unknown_key_error(key, config)
            node = node[part]
        if parts[-1] not in node:
            raise _unknown_key_error(key, config)
        with node.unlocked():
            node[parts[-1]] = _parse_value(text, node[parts[-1]], key)
    return config


def check_known_keys(config: ml_collections.ConfigDict, where: str) -> None:
    """Refuses keys a config file added that `base_config()` does not declare."""
    known = set(_flat_keys(base_config()))
    for key in _flat_keys(config):
        if key not in known:
            err = _unknown_key_error(key, base_config())
            raise UserError(f"{where}: {err}")


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Checks values before any long work starts; raises `UserError` naming the key and the fix."""
    from openrs_jax.rewards import REWARD_FUNCTIONS
    from openrs_jax.rewards.registry import get_spec

    c = config
    if c.num_generations < 2:
        raise UserError(f"num_generations={c.num_generations}: GRPO needs at least 2 completions per prompt")
    if c.prompts_per_step < 1:
        raise UserError(f"prompts_per_step={c.prompts_per_step} must be >= 1")
    rows = c.prompts_per_step * c.num_generations
    if c.micro_batch_size < 1 or rows % c.micro_batch_size:
        raise UserError(
            f"micro_batch_size={c.micro_batch_size} must divide prompts_per_step x num_generations = {rows}"
        )
    if c.micro_batch_size % c.num_generations and c.num_generations % c.micro_batch_size:
        raise UserError(
            f"micro_batch_size={c.micro_batch_size} and num_generations={c.num_generations}: one must divide the other"
        )
    if device_count:
        if rows % device_count:
            raise UserError(f"prompts_per_step x num_generations = {rows} rows must divide over {device_count} devices")
        if c.micro_batch_size % _batch_devices(c, device_count):
            raise UserError(
                f"micro_batch_size={c.micro_batch_size} must be a multiple of the data-parallel device count "
                f"({_batch_devices(c, device_count)})"
            )
    unknown = [f for f in c.reward_funcs if f not in REWARD_FUNCTIONS and ":" not in f]
    if unknown:
        raise UserError(
            f"unknown reward function(s) {unknown}; valid: {', '.join(sorted(REWARD_FUNCTIONS))} "
            "(or a custom one as 'package.module:function')"
        )
    for name in c.reward_funcs:
        try:
            get_spec(name)  # imports custom rewards now rather than in the first step
        except ValueError as e:
            raise UserError(str(e)) from None
    if len(c.reward_weights) != len(c.reward_funcs):
        raise UserError(
            f"reward_weights has {len(c.reward_weights)} values but reward_funcs has {len(c.reward_funcs)}"
        )
    if c.loss_aggregation not in LOSS_AGGREGATIONS:
        raise UserError(f"unknown loss_aggregation {c.loss_aggregation!r}; valid: {', '.join(LOSS_AGGREGATIONS)}")
    for key in ("max_steps", "max_prompt_length", "max_completion_length", "num_iterations", "save_steps"):
        if c[key] < 1:
            raise UserError(f"{key}={c[key]} must be >= 1")
    for key in ("learning_rate", "beta", "epsilon_low", "epsilon_high", "max_grad_norm", "weight_decay"):
        if c[key] < 0:
            raise UserError(f"{key}={c[key]} must be >= 0")
    if not 0 <= c.warmup_ratio < 1:
        raise UserError(f"warmup_ratio={c.warmup_ratio} must be in [0, 1)")
    if not 0 <= c.min_lr_rate <= 1:
        raise UserError(f"min_lr_rate={c.min_lr_rate} must be in [0, 1]")
    if c.temperature < 0 or not 0 < c.top_p <= 1:
        raise UserError(f"temperature={c.temperature} must be >= 0 and top_p={c.top_p} in (0, 1]")
    for key in ("compute_dtype", "param_dtype", "export_dtype"):
        if c[key] not in ("float32", "bfloat16", "float16"):
            raise UserError(f"{key}={c[key]!r}: use float32 or bfloat16")
    if c.remat not in ("none", "full", "dots"):
        raise UserError(f"remat={c.remat!r}: use none, full or dots")
    from openrs_jax.data import LONG_PROMPTS, PROMPT_ORDERS, ROLLOUT_BOS

    if c.rollout_max_model_length < 0:
        raise UserError(f"rollout_max_model_length={c.rollout_max_model_length} must be >= 0 (0: no cap)")
    for key, valid in (("prompt_order", PROMPT_ORDERS), ("long_prompts", LONG_PROMPTS), ("rollout_bos", ROLLOUT_BOS)):
        if c[key] not in valid:
            raise UserError(f"{key}={c[key]!r}: use {' or '.join(valid)}")
    validate_variants(c)


def validate_variants(c: ml_collections.ConfigDict) -> None:
    """Checks the GRPO variant keys (docs/grpo-variants.md); each check lives with its feature."""
    from openrs_jax.dynamic_sampling import check_dynamic_sampling
    from openrs_jax.grpo.advantages import reward_scaling
    from openrs_jax.grpo.loss import check_loss_options
    from openrs_jax.reference import check_ref_sync
    from openrs_jax.rewards.overlong import check_soft_overlong
    from openrs_jax.run_log import check_report_to

    reward_scaling(c.scale_rewards)
    check_loss_options(
        policy_loss=c.policy_loss, importance_sampling=c.importance_sampling, delta=c.delta,
        epsilon_low=c.epsilon_low, epsilon_high=c.epsilon_high, top_entropy_quantile=c.top_entropy_quantile,
    )
    if "soft_overlong" in c.reward_funcs:
        try:
            check_soft_overlong(max_len=c.soft_overlong_max_len or c.max_completion_length,
                                cache_len=c.soft_overlong_cache_len)
        except ValueError as e:
            raise UserError(f"{e} (config keys soft_overlong_max_len, soft_overlong_cache_len)") from None
    check_dynamic_sampling(c.dynamic_sampling, c.dynamic_sampling_max_rounds)
    check_ref_sync(c.ref_sync_steps, c.ref_mixup_alpha, c.beta)
    check_report_to(c.report_to)


def _batch_devices(config: ml_collections.ConfigDict, device_count: int) -> int:
    """Devices the batch is split over (all but the tensor axis)."""
    return device_count // max(1, int(config.mesh.tensor))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config file, checks its keys, applies overrides. Validation is separate (`validate`)."""
    config = load_config_file(path)
    check_known_keys(config, str(path))
    config = apply_overrides(config, overrides)
    if not config.tokenizer_path:
        with config.unlocked():
            config.tokenizer_path = config.model_path
    config.lock()
    return config
