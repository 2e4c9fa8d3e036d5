"""Run configuration: one section per package, command-line overrides, validation.

A run config is an `ml_collections.ConfigDict` with the sections of `SECTIONS` (model, data,
rollout, rewards, grpo, eval, run, mesh, distributed); every key is declared once below with
its default and meaning. Config files (configs/*.py) start from `base_config()` and set the
experiment's values (`c.grpo.learning_rate = 1e-6`); the command line overrides any key with
`--config.SECTION.KEY=VALUE` (`ml_collections.config_flags`). The update's section is `grpo`,
not `update`: `update` is a ConfigDict method, so `c.update.x` would not reach a section.

Each section is checked once, by the dataclass its package owns (`validate`); the keys of the
old flat layout (`learning_rate`) stop a run with one line naming the new key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags
from ml_collections.config_flags import tuple_parser

from openrs_jax.recipe.prompts import SYSTEM_PROMPT


@dataclasses.dataclass(frozen=True)
class AnyType:
    """A default whose key accepts values of any type (a bool or a name, e.g. `scale_rewards`)."""

    value: Any


# section -> (title, {key: (default, meaning)}). The order is the order of `--show_config` and the README.
SECTIONS: dict[str, tuple[str, dict[str, tuple[Any, str]]]] = {
    "model": ("The policy model and its numerics", {
        "path": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Hugging Face directory, training run RUN or RUN/checkpoints/N, openrs-jax checkpoint, Hub name, or builtin:tiny"),
        "tokenizer_path": ("", "tokenizer directory (or builtin:tiny); empty: the model's"),
        "compute_dtype": ("bfloat16", "dtype of the forward and backward passes and of rollouts"),
        "param_dtype": ("float32", "dtype of the master weights and optimizer state"),
        "remat": ("full", "activation recomputation in the backward pass: full, dots (keep matmul outputs) or none"),
    }),
    "data": ("Training prompts (docs/paper-exact.md: how the original run fed the model)", {
        "dataset": ("knoveleng/open-rs", "Hub name, local JSON/JSONL/parquet file or folder, or builtin:sums; rows need problem and solution or answer"),
        "split": ("train", "split of a Hub dataset or of a local folder"),
        "system_prompt": (SYSTEM_PROMPT, "system message before each problem (the recipe's asks for think and answer tags and a boxed answer); empty: none"),
        "max_prompt_length": (512, "prompts longer than this many tokens are dropped and counted"),
        "prompt_order": ("numpy", "prompt order: numpy (seeded shuffle of the kept prompts) or trl (TRL's torch.randperm blocks over the whole dataset)"),
        "long_prompts": ("drop", "prompts over max_prompt_length: drop, or truncate_left (sample from the full prompt, loss on its last tokens)"),
    }),
    "rollout": ("Sampling completions (docs/recipe.md section Rollouts)", {
        "num_generations": (6, "completions per prompt (the GRPO group), >= 2"),
        "prompts_per_step": (12, "prompts per optimizer step"),
        "max_completion_length": (3584, "tokens per completion at most; rows without EOS by then count as truncated"),
        "temperature": (0.7, "sampling temperature (0: greedy)"),
        "top_p": (1.0, "nucleus sampling: smallest set of tokens with this much probability (1.0: off)"),
        "top_k": (0, "sample among the k most likely tokens (0: off)"),
        "ignore_eos": (False, "benchmarks: every completion runs to max_completion_length (no stop at EOS), as vLLM's ignore_eos"),
        "bos": ("single", "single, or double (rollouts start with two BOS tokens, as the original's vLLM did)"),
        "max_model_length": (0, "> 0: prompt + completion capped as vLLM's max_model_len (0: off)"),
        "dynamic_sampling": (False, "DAPO: drop groups with equal rewards, draw more prompts to refill the step"),
        "dynamic_sampling_max_rounds": (4, "extra rollout rounds per step at most (then equal-reward groups fill up)"),
    }),
    "rewards": ("Rewards (docs/recipe.md section Rewards)", {
        "funcs": (("format", "accuracy"), "reward functions (accuracy, format, tag_count, cosine, reasoning_steps, length, repetition_penalty, soft_overlong) or custom 'package.module:function'"),
        "weights": ((1.0, 2.0), "one weight per reward function, in order: the reward is their weighted sum"),
        "num_workers": (2, "worker processes that score completions"),
        "timeout_s": (10.0, "a completion whose scoring takes longer scores 0 (counted as rewards/timeouts)"),
        "cosine_min_value_wrong": (0.0, "cosine reward of a wrong answer at length 0"),
        "cosine_max_value_wrong": (-0.5, "cosine reward of a wrong answer at cosine_max_len characters"),
        "cosine_min_value_correct": (0.5, "cosine reward of a right answer at cosine_max_len characters"),
        "cosine_max_value_correct": (1.0, "cosine reward of a right answer at length 0"),
        "cosine_max_len": (1000, "cosine reward: the length (characters) its cosine schedule spans"),
        "repetition_ngram_size": (3, "repetition_penalty: words per n-gram"),
        "repetition_max_penalty": (-1.0, "repetition_penalty: the penalty when every n-gram repeats (<= 0)"),
        "soft_overlong_max_len": (0, "soft_overlong reward: L_max in tokens; 0: rollout.max_completion_length"),
        "soft_overlong_cache_len": (512, "soft_overlong reward: the punishment ramps over the last this many tokens"),
    }),
    "grpo": ("The GRPO update (docs/recipe.md section GRPO update; variants: docs/grpo-variants.md)", {
        "micro_batch_size": (6, "rows per gradient-accumulation step; divides prompts_per_step x num_generations"),
        "learning_rate": (1e-6, "peak AdamW learning rate"),
        "warmup_ratio": (0.1, "fraction of max_steps of linear warmup"),
        "min_lr_rate": (0.1, "the cosine schedule ends at learning_rate x this (1.0: constant)"),
        "max_steps": (500, "optimizer steps of the run"),
        "beta": (0.04, "KL penalty weight against the initial model (0: no reference pass)"),
        "epsilon_low": (0.2, "PPO clip below: ratio >= 1 - epsilon_low"),
        "epsilon_high": (0.2, "PPO clip above: ratio <= 1 + epsilon_high"),
        "num_iterations": (1, "updates per rollout batch (> 1 also computes old log-probs)"),
        "loss_aggregation": ("group_token_mean", "how token losses are averaged: group_token_mean, seq_mean, token_mean (DAPO), constant_norm (Dr. GRPO)"),
        "scale_rewards": (AnyType("group"), "advantages divided by the group's reward std (group, the recipe), the whole step's (batch) or nothing (none); True/False mean group/none"),
        "max_grad_norm": (1.0, "gradient clipping by global norm"),
        "weight_decay": (0.0, "AdamW weight decay"),
        "logprob_chunk": (512, "completion tokens per chunk of the log-prob pass (bounds the [rows, chunk, vocab] logits)"),
        "length_bucket": (256, "rows sorted by length, each micro-batch padded to its longest completion rounded up to this (one program per length); 0: off"),
        "policy_loss": ("clip", "clip (PPO-style clipped objective) or cispo (MiniMax-M1)"),
        "importance_sampling": ("token", "token, or sequence (GSPO: one ratio per completion)"),
        "delta": (0.0, "two-sided clipping (INTELLECT-2): ratio cap for negative advantages, > 1 + epsilon_high; 0: off"),
        "top_entropy_quantile": (1.0, "fraction of highest-entropy tokens that keep the policy loss (0.2 in the paper; 1.0: all)"),
        "mask_truncated_completions": (False, "DAPO: completions without EOS get no loss tokens"),
        "ref_sync_steps": (0, "> 0: every this many steps the reference becomes a mix with the policy (TR-DPO)"),
        "ref_mixup_alpha": (0.6, "reference <- alpha * policy + (1 - alpha) * reference"),
    }),
    "eval": ("Periodic evaluation during training (every 0: off)", {
        "every": (0, "evaluate every this many steps (0: never)"),
        "tasks": (("aime24",), "benchmarks to evaluate (as python -m openrs_jax.evaluate --tasks)"),
        "data_dir": ("", "folder with the benchmark files; empty: the Hugging Face Hub"),
        "num_samples": (1, "completions per problem"),
        "max_new_tokens": (3584, "tokens per evaluation completion at most"),
        "limit": (0, "problems per task (0: every problem of the task)"),
    }),
    "run": ("Run control and outputs", {
        "seed": (42, "seed of sampling, data order and built-in random weights"),
        "output_dir": ("runs/openrs", "where checkpoints, logs and exports go"),
        "resume": (False, "continue the latest checkpoint in output_dir (an output_dir with a run is refused otherwise)"),
        "save_steps": (50, "checkpoint every this many steps (and at the end and on Ctrl-C/SIGTERM)"),
        "keep_checkpoints": (3, "checkpoints kept (the oldest are deleted)"),
        "export_steps": ((), "steps at which to also write output_dir/hf-step-<n>"),
        "export_dtype": ("bfloat16", "dtype of the Hugging Face exports"),
        "log_completions": (4, "sample completions per step written to completions.jsonl (0: none)"),
        "tensorboard": (True, "also write metrics as TensorBoard events to output_dir/tensorboard"),
        "max_bad_steps": (3, "consecutive non-finite steps before the run stops"),
        "report_to": (("tensorboard",), "metric sinks: tensorboard, wandb (pip install 'openrs-jax[wandb]')"),
        "wandb_project": ("openrs-jax", "Weights & Biases project of the run (with report_to wandb)"),
    }),
    "mesh": ("Device mesh (-1: all remaining devices)", {
        "data": (1, "devices that split the batch and hold whole copies of the weights"),
        "fsdp": (-1, "devices that split the batch and shard the weights and optimizer state"),
        "tensor": (1, "devices that split each matmul (tensor parallelism)"),
    }),
    "distributed": ("Multi-process jobs (README \"Several machines\"); empty/0/-1: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, else SLURM / Open MPI, else one process", {
        "coordinator_address": ("", "host:port of process 0, the same for every process; empty: from the environment"),
        "num_processes": (0, "processes in the job; 0: from the environment"),
        "process_id": (-1, "this process's rank; -1: from the environment"),
        "heartbeat_timeout_s": (100, "a silent peer is declared dead (and this process ends) after this"),
        "init_timeout_s": (300, "how long processes wait for each other at start"),
    }),
}

# Keys of the flat layout whose name changed beyond gaining a section; every other flat key
# `k` is now `SECTION.k` (`FLAT_KEYS` holds both kinds).
RENAMED = {
    "model_path": "model.path", "tokenizer_path": "model.tokenizer_path",
    "dataset_name": "data.dataset", "dataset_split": "data.split",
    "rollout_bos": "rollout.bos", "rollout_max_model_length": "rollout.max_model_length",
    "reward_funcs": "rewards.funcs", "reward_weights": "rewards.weights",
    "reward_num_workers": "rewards.num_workers", "reward_timeout_s": "rewards.timeout_s",
    "eval_every": "eval.every", "eval_tasks": "eval.tasks", "eval_data_dir": "eval.data_dir",
    "eval_num_samples": "eval.num_samples", "eval_max_new_tokens": "eval.max_new_tokens", "eval_limit": "eval.limit",
}
FLAT_KEYS: dict[str, str] = {
    **{key: f"{section}.{key}" for section, (_, keys) in SECTIONS.items() if section != "mesh"
       for key in keys if f"{section}.{key}" not in RENAMED.values()},
    **RENAMED,
}


def _value(default: Any) -> Any:
    return ml_collections.FieldReference(default.value, field_type=object) if isinstance(default, AnyType) else default


def base_config() -> ml_collections.ConfigDict:
    """Every section with every key at its default (the recipe's values where it has one)."""
    return ml_collections.ConfigDict(
        {section: {key: _value(d) for key, (d, _) in keys.items()} for section, (_, keys) in SECTIONS.items()}
    )


# The defaults, so that this module is itself a config file (`--show_config` without `--config`).
get_config = base_config


def original_run_inputs(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` fed as the original open-rs run fed its model (docs/paper-exact.md), for configs/exp1-3.py:
    TRL's prompt order over the unfiltered dataset, over-long prompts truncated on the left for the
    loss, two BOS in rollouts, and vLLM's max_model_len of 4,608 (long prompts get shorter completions)."""
    c.data.prompt_order = "trl"
    c.data.long_prompts = "truncate_left"
    c.rollout.bos = "double"
    c.rollout.max_model_length = 4608
    return c


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One config key: its dotted name, section title, one-line meaning, default and current value."""

    key: str
    section: str
    meaning: str
    default: Any
    value: Any


def describe_keys(config: ml_collections.ConfigDict | None = None) -> list[KeyInfo]:
    """Every declared key in order, with its value in `config` (default: the defaults)."""
    defaults = base_config()
    config = defaults if config is None else config
    return [
        KeyInfo(f"{section}.{key}", f"{section}: {title}", meaning, defaults[section][key], config[section][key])
        for section, (title, keys) in SECTIONS.items()
        for key, (_, meaning) in keys.items()
    ]


def _short(value: Any, width: int = 48) -> str:
    """A value as a reader types it on the command line, cut to `width` characters."""
    if isinstance(value, (tuple, list)):
        text = ",".join(str(v) for v in value) if value else "()"
    elif isinstance(value, str):
        text = repr(value) if not value or value != value.strip() else value
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def format_keys(config: ml_collections.ConfigDict | None = None) -> str:
    """Every key as `section.key = value  # meaning`, by section, marking values that differ from the default."""
    rows = describe_keys(config)
    width = max(len(f"{r.key} = {_short(r.value)}") for r in rows)
    blocks = []
    for section, keys in itertools.groupby(rows, key=lambda r: r.section):
        lines = [f"# {section}"]
        for r in keys:
            left = f"{r.key} = {_short(r.value)}"
            changed = "" if r.value == r.default else f" [default: {_short(r.default)}]"
            lines.append(f"{left:<{width}}  # {r.meaning}{changed}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


README_TABLE_START = "<!-- config keys: generated by python -m openrs_jax.recipe.config --write_readme -->"
README_TABLE_END = "<!-- end of config keys -->"


def markdown_table() -> str:
    """The README's key table: every key, its default and meaning, by section, from `SECTIONS`."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, keys in itertools.groupby(describe_keys(), key=lambda r: r.section):
        lines.append(f"| **{section}** | | |")
        for r in keys:
            default = _short(r.default).replace("|", "\\|")
            meaning = r.meaning.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            lines.append(f"| `{r.key}` | `{default}` | {meaning} |")
    return "\n".join(lines)


def write_readme_table(readme: str | Path) -> bool:
    """Replaces the table between the README's markers by `markdown_table()`; returns whether it changed."""
    path = Path(readme)
    text = path.read_text()
    head, start, rest = text.partition(README_TABLE_START)
    end, tail = rest.partition(README_TABLE_END)[1:]
    if not (start and end):
        raise ValueError(f"{path} has no config key table markers ({README_TABLE_START} ... {README_TABLE_END})")
    new = f"{head}{start}\n{markdown_table()}\n{end}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


# ---- loading: config files and --config.SECTION.KEY overrides ------------------------------------


class _TupleParser(tuple_parser.TupleParser):
    """config_flags' tuple parser, plus the unquoted `a,b` lists the README shows (`accuracy,format`)."""

    def parse(self, argument: Any) -> tuple:
        if isinstance(argument, str):
            try:
                ast.literal_eval(argument)
            except (ValueError, SyntaxError):  # also an empty argument: ()
                return tuple(v.strip() for v in argument.split(",") if v.strip())
        return super().parse(argument)


config_flags.register_flag_parser_for_type(tuple, _TupleParser())


def _key_error(key: str, where: str = "") -> ValueError:
    """The error for an undeclared key: an old flat key (`learning_rate`, or `learning_rate.x`) names
    its new place, any other the closest declared key."""
    prefix = f"{where}: " if where else ""
    head, _, rest = key.partition(".")
    if head in FLAT_KEYS:
        new = FLAT_KEYS[head] + (f".{rest}" if rest else "")
        return ValueError(
            f"{prefix}config key {key!r} is now {new!r} (keys are grouped by section: --config.{new}=..., "
            f"c.{new} = ... in a config file; python -m openrs_jax.train --show_config lists them)"
        )
    close = difflib.get_close_matches(key, [r.key for r in describe_keys()] + list(SECTIONS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; python -m openrs_jax.train --show_config lists every key"
    return ValueError(f"{prefix}unknown config key {key!r}{hint}")


def _flat_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of every leaf of `config`."""
    return [key for k, v in config.items()
            for key in (_flat_keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [prefix + k])]


def check_known_keys(keys: Sequence[str], where: str = "") -> None:
    """Refuses keys that `SECTIONS` does not declare (e.g. a flat `c.learning_rate`)."""
    known = {r.key for r in describe_keys()}
    for key in keys:
        if key not in known:
            raise _key_error(key, where)


def define_config_flag(flag_values: flags.FlagValues, argv: Sequence[str], default: str | None = None) -> None:
    """Defines `--config` (a config file, `ml_collections.config_flags`) with its
    `--config.SECTION.KEY=VALUE` overrides on `flag_values`, for the command line `argv`.

    An override of an undeclared key, e.g. one of the old flat layout (`--config.learning_rate`),
    raises the error naming its new place (or the closest key) before absl parses anything.
    """
    check_known_keys([arg.split("=", 1)[0].split(".", 1)[1] for arg in argv[1:]
                      if arg.startswith(("--config.", "-config.", "--noconfig."))])
    config_flags.DEFINE_config_file(
        "config", default=default, help_string="config file with get_config(), e.g. configs/exp2.py",
        flag_values=flag_values, sys_argv=list(argv),
    )


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(("--config=", "-config=")):
            return arg.split("=", 1)[1]
    return None


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str]:
    """Parses `argv` (argv[0] is the program) into `flag_values`; returns the arguments left over.
    Errors name the problem in one line: a missing config file, an old flat key the file reads,
    absl's flag errors (as ValueError)."""
    path = _config_path(argv)
    if path is not None and not Path(path.split(":", 1)[0]).is_file():
        raise FileNotFoundError(f"config file {path} does not exist (e.g. --config configs/exp2.py)")
    try:
        return flag_values(list(argv))
    except flags.Error as e:
        raise ValueError(str(e)) from None
    except (AttributeError, KeyError) as e:  # raised by the file's get_config(), e.g. reading `c.max_steps`
        if "get_config" in str(e):
            raise ValueError(f"config file {path} defines no get_config()") from None
        name = next((k for k in FLAT_KEYS if f"'{k}'" in str(e)), None)
        if name is None:
            raise
        raise _key_error(name, str(path)) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads a config file with `SECTION.KEY=VALUE` overrides, as `--config PATH --config.SECTION.KEY=VALUE`
    does (also for a config file that builds on another: configs/dapo.py on exp2.py). Validation is
    separate (`validate`)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like --config.section.key=value")
    argv = ["openrs_jax", f"--config={path}", *(f"--config.{o}" for o in overrides)]
    fv = flags.FlagValues()
    define_config_flag(fv, argv)
    parse_flags(fv, argv)
    return config_from_flags(fv)


def config_from_flags(flag_values: flags.FlagValues) -> ml_collections.ConfigDict:
    """The config `define_config_flag` loaded, overrides applied, checked for undeclared keys and
    for model names a run cannot take."""
    from openrs_jax.recipe import toy

    config, where = flag_values.config, config_flags.get_config_filename(flag_values["config"])
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"get_config() in {where} must return an ml_collections.ConfigDict (from base_config())")
    check_known_keys(_flat_keys(config), where)
    # Checked here, where the user typed them, not in `validate`: the bench trains at a `preset:`
    # model shape by setting model.path after loading, which no command line or config file may.
    toy.check_name(config.model.path, "--config.model.path", "model")
    toy.check_name(config.model.tokenizer_path, "--config.model.tokenizer_path", "model")
    config.lock()
    return config


# ---- validation: each section by the dataclass its package owns ----------------------------------


def _check(section: str, build: Callable[[], Any]) -> Any:
    """Runs a section's check; its error names the section so the user finds the key."""
    try:
        return build()
    except (ValueError, TypeError) as e:
        text = str(e)
        match = re.match(r"(unknown )?(\w+)", text)
        if match and match[2] in SECTIONS[section][1]:  # "delta=1.1 must ..." -> "--config.grpo.delta=1.1 must ..."
            raise ValueError(f"--config.{section}.{match[2] + ': ' if match[1] else ''}{text}") from None
        raise ValueError(f"--config.{section}: {text}") from None


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Checks every section before any long work starts; raises ValueError naming the key and the fix."""
    from openrs_jax.core.grpo.advantages import reward_scaling
    from openrs_jax.core.grpo.update import UpdateConfig
    from openrs_jax.core.model.config import DTYPES, check_numerics
    from openrs_jax.core.sampling import SamplingParams
    from openrs_jax.recipe.data import ROLLOUT_BOS, DataConfig, check_choice
    from openrs_jax.recipe.dynamic_sampling import check_dynamic_sampling
    from openrs_jax.recipe.reference import check_ref_sync
    from openrs_jax.recipe.rewards.batch import normalize_config
    from openrs_jax.recipe.run_log import check_report_to
    from openrs_jax.recipe.trainer import reward_params

    c = config
    m, r, g, run, e = c.model, c.rollout, c.grpo, c.run, c.eval
    _check("model", lambda: check_numerics(m.compute_dtype, m.param_dtype, m.remat))
    _check("data", lambda: DataConfig(**dict(c.data.items())))
    _check("rollout", lambda: (
        SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_completion_length),
        _at_least(r, num_generations=2, prompts_per_step=1, max_model_length=0),
        check_choice("bos", r.bos, ROLLOUT_BOS),
        check_dynamic_sampling(r.dynamic_sampling, r.dynamic_sampling_max_rounds)))
    _check("rewards", lambda: (normalize_config(list(c.rewards.funcs), list(c.rewards.weights), reward_params(c)),
                               _at_least(c.rewards, num_workers=0)))
    _check("grpo", lambda: (UpdateConfig.from_config(c), _at_least(g, num_iterations=1),
                            reward_scaling(g.scale_rewards), check_ref_sync(g.ref_sync_steps, g.ref_mixup_alpha, g.beta)))
    _check("eval", lambda: _at_least(e, every=0, num_samples=1, max_new_tokens=1, limit=0))
    _check("run", lambda: (_at_least(run, save_steps=1, keep_checkpoints=1, max_bad_steps=1),
                           check_choice("export_dtype", run.export_dtype, DTYPES), check_report_to(run.report_to)))
    check_batch_layout(c, device_count)


def _at_least(section: ml_collections.ConfigDict, **minimum: int) -> None:
    for key, low in minimum.items():
        if section[key] < low:
            raise ValueError(f"{key}={section[key]} must be >= {low}")


def check_batch_layout(c: ml_collections.ConfigDict, device_count: int | None) -> None:
    """The step's rows (prompts x generations) against micro-batches and devices: keys of two sections."""
    rows = c.rollout.prompts_per_step * c.rollout.num_generations
    mb, g = c.grpo.micro_batch_size, c.rollout.num_generations
    if rows % mb:
        raise ValueError(
            f"grpo.micro_batch_size={mb} must divide rollout.prompts_per_step x rollout.num_generations = {rows}"
        )
    if mb % g and g % mb:
        raise ValueError(f"grpo.micro_batch_size={mb} and rollout.num_generations={g}: one must divide the other")
    if device_count:
        if rows % device_count:
            raise ValueError(
                f"rollout.prompts_per_step x rollout.num_generations = {rows} rows must divide over {device_count} devices"
            )
        batch_devices = device_count // max(1, int(c.mesh.tensor))  # all but the tensor axis split the batch
        if mb % batch_devices:
            raise ValueError(
                f"grpo.micro_batch_size={mb} must be a multiple of the data-parallel device count ({batch_devices})"
            )


if __name__ == "__main__":
    # python -m openrs_jax.recipe.config --write_readme [README.md]: regenerates the README's key table.
    import sys

    args = sys.argv[1:]
    if not args or args[0] != "--write_readme":
        sys.exit("usage: python -m openrs_jax.recipe.config --write_readme [README.md]")
    target = args[1] if len(args) > 1 else "README.md"
    print(f"{target}: {'updated' if write_readme_table(target) else 'already up to date'}")
