"""Run configuration: ml_collections files with `get_config()`, command-line overrides, validation.

Every key a run understands is declared in `base_config()` with its default; config files
(configs/*.py) start from it and set the experiment's values. The dict is locked, so a
misspelt key in a file or an override is an error that names it and suggests the right one.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import inspect
import io
import re
import tokenize
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
    """All keys with their defaults (the recipe's values where it has one).

    The comment that ends each key's line is its meaning: `describe_keys()` reads it for
    `python -m openrs_jax.train --show_config` and the README's key table.
    """
    c = ml_collections.ConfigDict()
    # Model and data.
    c.model_path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # Hugging Face directory, training run RUN or RUN/checkpoints/N, openrs-jax checkpoint, Hub name, or builtin:tiny
    c.tokenizer_path = ""  # tokenizer directory (or builtin:tiny); empty: the model's
    c.dataset_name = "knoveleng/open-rs"  # Hub name, local JSON/JSONL/parquet file or folder, or builtin:sums; rows need problem and solution or answer
    c.dataset_split = "train"  # split of a Hub dataset or of a local folder
    c.system_prompt = SYSTEM_PROMPT  # system message before each problem (the recipe's asks for think and answer tags and a boxed answer); empty: none
    c.max_prompt_length = 512  # prompts longer than this many tokens are dropped and counted
    # How the original run fed the model (docs/paper-exact.md); configs/exp1-3.py set the paper's.
    c.prompt_order = "numpy"  # prompt order: numpy (seeded shuffle of the kept prompts) or trl (TRL's torch.randperm blocks over the whole dataset)
    c.long_prompts = "drop"  # prompts over max_prompt_length: drop, or truncate_left (sample from the full prompt, loss on its last tokens)
    c.rollout_bos = "single"  # single, or double (rollouts start with two BOS tokens, as the original's vLLM did)
    c.rollout_max_model_length = 0  # > 0: prompt + completion capped as vLLM's max_model_len (0: off)
    # Rewards (docs/recipe.md section Rewards). Weights pair with reward_funcs in order.
    c.reward_funcs = ("format", "accuracy")  # reward functions (accuracy, format, tag_count, cosine, reasoning_steps, length, repetition_penalty) or custom 'package.module:function'
    c.reward_weights = (1.0, 2.0)  # one weight per reward function: the reward is their weighted sum
    c.cosine_min_value_wrong = 0.0  # cosine reward of a wrong answer at length 0
    c.cosine_max_value_wrong = -0.5  # cosine reward of a wrong answer at cosine_max_len characters
    c.cosine_min_value_correct = 0.5  # cosine reward of a right answer at cosine_max_len characters
    c.cosine_max_value_correct = 1.0  # cosine reward of a right answer at length 0
    c.cosine_max_len = 1000  # cosine reward: the length (characters) its cosine schedule spans
    c.repetition_ngram_size = 3  # repetition_penalty: words per n-gram
    c.repetition_max_penalty = -1.0  # repetition_penalty: the penalty when every n-gram repeats (<= 0)
    c.reward_num_workers = 2  # worker processes that score completions
    c.reward_timeout_s = 10.0  # a completion whose scoring takes longer scores 0 (counted as rewards/timeouts)
    # Rollouts (docs/recipe.md section Rollouts).
    c.num_generations = 6  # completions per prompt (the GRPO group), >= 2
    c.prompts_per_step = 12  # prompts per optimizer step
    c.max_completion_length = 3584  # tokens per completion at most; rows without EOS by then count as truncated
    c.temperature = 0.7  # sampling temperature (0: greedy)
    c.top_p = 1.0  # nucleus sampling: smallest set of tokens with this much probability (1.0: off)
    c.top_k = 0  # sample among the k most likely tokens (0: off)
    # Update (docs/recipe.md section GRPO update).
    c.micro_batch_size = 6  # rows per gradient-accumulation step; divides prompts_per_step x num_generations
    c.learning_rate = 1e-6  # peak AdamW learning rate
    c.warmup_ratio = 0.1  # fraction of max_steps of linear warmup
    c.min_lr_rate = 0.1  # the cosine schedule ends at learning_rate x this (1.0: constant)
    c.max_steps = 500  # optimizer steps of the run
    c.beta = 0.04  # KL penalty weight against the initial model (0: no reference pass)
    c.epsilon_low = 0.2  # PPO clip below: ratio >= 1 - epsilon_low
    c.epsilon_high = 0.2  # PPO clip above: ratio <= 1 + epsilon_high
    c.num_iterations = 1  # updates per rollout batch (> 1 also computes old log-probs)
    c.loss_aggregation = "group_token_mean"  # how token losses are averaged: group_token_mean, seq_mean, token_mean (DAPO), constant_norm (Dr. GRPO)
    c.scale_rewards = ml_collections.FieldReference("group", field_type=object)  # advantages divided by the group's reward std (group, the recipe), the whole step's (batch) or nothing (none); True/False mean group/none
    c.max_grad_norm = 1.0  # gradient clipping by global norm
    c.weight_decay = 0.0  # AdamW weight decay
    c.logprob_chunk = 512  # completion tokens per chunk of the log-prob pass (bounds the [rows, chunk, vocab] logits)
    c.length_bucket = 256  # rows sorted by length, each micro-batch padded to its longest completion rounded up to this (one program per length); 0: off
    # Numerics and placement.
    c.compute_dtype = "bfloat16"  # dtype of the forward and backward passes and of rollouts
    c.param_dtype = "float32"  # dtype of the master weights and optimizer state
    c.remat = "full"  # activation recomputation in the backward pass: full, dots (keep matmul outputs) or none
    c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})  # device mesh axes (data, fsdp, tensor); -1: all remaining devices
    # Multi-process jobs (README "Several machines"): empty/0/-1 read JAX_COORDINATOR_ADDRESS,
    # JAX_NUM_PROCESSES, JAX_PROCESS_ID, else SLURM / Open MPI; none of them: one process.
    c.coordinator_address = ""  # host:port of process 0, the same for every process; empty: from the environment
    c.num_processes = 0  # processes in the job; 0: from the environment
    c.process_id = -1  # this process's rank; -1: from the environment
    c.heartbeat_timeout_s = 100  # a silent peer is declared dead (and this process ends) after this
    c.init_timeout_s = 300  # how long processes wait for each other at start
    # Run control and outputs.
    c.seed = 42  # seed of sampling, data order and built-in random weights
    c.output_dir = "runs/openrs"  # where checkpoints, logs and exports go
    c.resume = False  # continue the latest checkpoint in output_dir (an output_dir with a run is refused otherwise)
    c.save_steps = 50  # checkpoint every this many steps (and at the end and on Ctrl-C/SIGTERM)
    c.keep_checkpoints = 3  # checkpoints kept (the oldest are deleted)
    c.export_steps = ()  # steps at which to also write output_dir/hf-step-<n>
    c.export_dtype = "bfloat16"  # dtype of the Hugging Face exports
    c.log_completions = 4  # sample completions per step written to completions.jsonl (0: none)
    c.tensorboard = True  # also write metrics as TensorBoard events to output_dir/tensorboard
    c.max_bad_steps = 3  # consecutive non-finite steps before the run stops
    # Periodic evaluation (0 = off).
    c.eval_every = 0  # evaluate every this many steps (0: never)
    c.eval_tasks = ("aime24",)  # benchmarks to evaluate (as python -m openrs_jax.evaluate --tasks)
    c.eval_data_dir = ""  # folder with the benchmark files; empty: the Hugging Face Hub
    c.eval_num_samples = 1  # completions per problem
    c.eval_max_new_tokens = 3584  # tokens per evaluation completion at most
    c.eval_limit = 0  # problems per task (0: every problem of the task)
    # GRPO variants (docs/grpo-variants.md: formulas and sources); the defaults are the recipe's GRPO.
    c.policy_loss = "clip"  # clip (PPO-style clipped objective) or cispo (MiniMax-M1)
    c.importance_sampling = "token"  # token, or sequence (GSPO: one ratio per completion)
    c.delta = 0.0  # two-sided clipping (INTELLECT-2): ratio cap for negative advantages, > 1 + epsilon_high; 0: off
    c.top_entropy_quantile = 1.0  # fraction of highest-entropy tokens that keep the policy loss (0.2 in the paper; 1.0: all)
    c.mask_truncated_completions = False  # DAPO: completions without EOS get no loss tokens
    c.soft_overlong_max_len = 0  # soft_overlong reward: L_max in tokens; 0: max_completion_length
    c.soft_overlong_cache_len = 512  # soft_overlong reward: the punishment ramps over the last this many tokens
    c.dynamic_sampling = False  # DAPO: drop groups with equal rewards, draw more prompts to refill the step
    c.dynamic_sampling_max_rounds = 4  # extra rollout rounds per step at most (then equal-reward groups fill up)
    c.ref_sync_steps = 0  # > 0: every this many steps the reference becomes a mix with the policy (TR-DPO)
    c.ref_mixup_alpha = 0.6  # reference <- alpha * policy + (1 - alpha) * reference
    c.report_to = ("tensorboard",)  # metric sinks: tensorboard, wandb (pip install 'openrs-jax[wandb]')
    c.wandb_project = "openrs-jax"  # Weights & Biases project of the run (with report_to wandb)
    return c


def describe_keys(config: ml_collections.ConfigDict | None = None) -> list[KeyInfo]:
    """Every key of `base_config()` in declaration order, with its section, default, its value in
    `config` (default: the defaults) and its meaning (the comment on its line in `base_config`)."""
    defaults = base_config()
    config = defaults if config is None else config
    declared = _declarations()
    order = [k for k in declared if k in defaults] + [k for k in defaults.keys() if k not in declared]
    return [
        KeyInfo(key, *declared.get(key, ("", "")), default=defaults[key], value=config[key])
        for key in order
    ]


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One config key: its name, section, one-line meaning, default and current value."""

    key: str
    section: str
    meaning: str
    default: Any
    value: Any


def _declarations() -> dict[str, tuple[str, str]]:
    """key -> (section, meaning), in the order of `base_config`'s source: a meaning is the comment
    that ends the key's `c.<key> = ...` line, a section the first line of a comment block."""
    try:
        source = inspect.getsource(base_config)
    except (OSError, TypeError):  # no source shipped: keys without meanings
        return {}
    found: dict[str, tuple[str, str]] = {}
    section, key, block = "", None, False
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and tok.line.strip().startswith("#"):
            if not block:  # a block's first line names the section: "Rewards (...). More." -> "Rewards"
                section = re.split(r" \(|[.:]( |$)", tok.string.lstrip("#").strip(), maxsplit=1)[0]
            block = True
            continue
        block = block and tok.type == tokenize.NL
        if tok.type == tokenize.NAME and tok.string == "c" and key is None:
            match = re.match(r"c\.(\w+)\s*=", tok.line.strip())
            key = match.group(1) if match else None
        elif tok.type == tokenize.COMMENT and key:
            found[key] = (section, tok.string.lstrip("#").strip())
            key = None
        elif tok.type == tokenize.NEWLINE:
            if key:
                found[key] = (section, "")
            key = None
    return found


def _short(value: Any, width: int = 48) -> str:
    """A value as a reader types it on the command line, cut to `width` characters."""
    if isinstance(value, ml_collections.ConfigDict):
        text = ",".join(f"{k}={v}" for k, v in value.items())
    elif isinstance(value, (tuple, list)):
        text = ",".join(str(v) for v in value) if value else "()"
    elif isinstance(value, str):
        text = repr(value) if not value or value != value.strip() else value
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def format_keys(config: ml_collections.ConfigDict | None = None) -> str:
    """Every key as `key = value  # meaning`, by section, marking values that differ from the default."""
    rows = describe_keys(config)
    width = max(len(f"{r.key} = {_short(r.value)}") for r in rows)
    lines, section = [], None
    for r in rows:
        if r.section != section:
            section = r.section
            lines.append(f"{'' if not lines else chr(10)}# {section or 'Other'}")
        left = f"{r.key} = {_short(r.value)}"
        changed = "" if r.value == r.default else f" [default: {_short(r.default)}]"
        lines.append(f"{left:<{width}}  # {r.meaning}{changed}")
    return "\n".join(lines)


README_TABLE_START = "<!-- config keys: generated by python -m openrs_jax.config --write_readme -->"
README_TABLE_END = "<!-- end of config keys -->"


def markdown_table() -> str:
    """The README's key table: every key, its default and meaning, by section, from `base_config()`."""
    lines, section = ["| key | default | meaning |", "|---|---|---|"], None
    for r in describe_keys():
        if r.section != section:
            section = r.section
            lines.append(f"| **{section or 'Other'}** | | |")
        default = _short(r.default).replace("|", "\\|")
        meaning = r.meaning.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `{r.key}` | `{default}` | {meaning} |")
    return "\n".join(lines)


def write_readme_table(readme: str | Path) -> bool:
    """Replaces the table between the README's markers by `markdown_table()`; returns whether it changed."""
    path = Path(readme)
    text = path.read_text()
    if README_TABLE_START not in text or README_TABLE_END not in text:
        raise UserError(f"{path} has no config key table markers ({README_TABLE_START} ... {README_TABLE_END})")
    head, rest = text.split(README_TABLE_START, 1)
    _, tail = rest.split(README_TABLE_END, 1)
    new = f"{head}{README_TABLE_START}\n{markdown_table()}\n{README_TABLE_END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


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
    from openrs_jax import toy
    from openrs_jax.rewards import REWARD_FUNCTIONS
    from openrs_jax.rewards.registry import get_spec

    c = config
    toy.check_name(c.model_path, "--config.model_path", "model")
    toy.check_name(c.tokenizer_path, "--config.tokenizer_path", "model")
    toy.check_name(c.dataset_name, "--config.dataset_name", "dataset")
    if c.num_generations < 2:
        raise UserError(f"num_generations={c.num_generations}: GRPO needs at least 2 completions per prompt")
    if c.prompts_per_step < 1:
        raise UserError(f"prompts_per_step={c.prompts_per_step} must be >= 1")
    rows = c.prompts_per_step * c.num_generations
    if c.micro_batch_size < 1 or rows % c.micro_batch_size:
        raise UserError(
            f"micro_batch_size={c.micro_batch_size} must divide prompts_per_step x num_generations = {rows}"
        )
    if c.get("length_bucket", 0) < 0:
        raise UserError(f"length_bucket={c.length_bucket} must be >= 0 (0 turns length bucketing off)")
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


if __name__ == "__main__":
    # python -m openrs_jax.config --write_readme [README.md]: regenerates the README's key table.
    import sys

    args = sys.argv[1:]
    if not args or args[0] != "--write_readme":
        sys.exit("usage: python -m openrs_jax.config --write_readme [README.md]")
    target = args[1] if len(args) > 1 else "README.md"
    print(f"{target}: {'updated' if write_readme_table(target) else 'already up to date'}")
