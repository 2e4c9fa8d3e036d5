"""Full GRPO optimizer steps of the product's trainer, timed by part; optionally against TRL.

    python -m openrs_jax.bench step --config configs/exp2.py --model preset:1.5b --steps 2 --out step.json
    python -m openrs_jax.bench step --model builtin:tiny --prompt_len 16 --max_new_tokens 4 --out step.json
    python -m openrs_jax.bench step --model DIR --dataset FILE --reward_funcs format,accuracy \
        --reward_weights 1.0,2.0 --prompts_per_step 4 --num_generations 4 --max_new_tokens 64 --compare_trl

Builds the product's `GRPOTrainer` from a run config (`--config`, default the recipe's base
config) with the flags below laid over it, and calls its `train_one_step()`: one warm-up step
(which compiles), then `--steps` timed steps. The trainer reports its parts itself
(`time/rollout_s`, `time/reward_s`, `time/reference_s`, `time/update_s`, and the sampler's own
`time/prefill_s` and `time/decode_s`); this module adds only the figures derived from them
(medians, completion tokens/s, decode bandwidth use, model FLOPs and MFU of the update and of
the forward-only reference pass, peak device memory) and the TRL comparison.

Every step does the same work:
- prompts: the run's dataset holds exactly `--prompts_per_step` prompts, so every step trains on
  them: the first ones of `--dataset` that fit `--prompt_len` tokens or, without `--dataset`,
  generated sums (`12+7+...=`) whose rendered prompt fills `--prompt_len` tokens with any
  tokenizer;
- lengths: the run config's `ignore_eos` (unless `--keep_eos`): every row decodes exactly
  `--max_new_tokens` tokens;
- rewards: `--reward_funcs` through the trainer's reward pool; by default `BENCH_REWARD`, a custom
  reward of near-zero cost that needs no math-verify (give `format,accuracy` to time real scoring).

`--compare_trl` also runs TRL's GRPOTrainer in the same process on the same initial weights
(exported by the trainer), tokenizer, prompts and lengths (EOS suppressed with `min_new_tokens`),
with `use_vllm=False` and the rest read from the trainer's run config: G, sampling, beta,
clipping, learning rate, gradient clipping, micro-batch, reward functions with their parameters.
After our warm-up step, TRL trains `--steps` + 1 steps and each of our timed steps runs between
two of TRL's (outside TRL's timing), so both sides see the same background load on a shared
machine. TRL is timed through public hooks only: a `TrainerCallback` for the steps, our reward
functions for `trl_reward_s`, and the policy model's public `generate()` for `trl_rollout_s`;
`trl_reference_s` is the rest of TRL's batch preparation before the rewards (tokenising, the
reference forward pass) and `trl_update_s` the rest of the step. `ratio_vs_trl` =
trl_step_time_s / step_time_s (> 1: we are faster; `ratio_vs_trl_best` compares the fastest steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from openrs_jax.bench import shapes

# The default reward: a custom reward (the trainer's 'package.module:function' mechanism).
BENCH_REWARD = "openrs_jax.bench.step:parity_reward"
PARTS = ("rollout_s", "reward_s", "reference_s", "update_s")

# Flags that `--config RUN_CONFIG` fills (see bench.shapes), with update's and sampler's.
CONFIG_FIELDS: dict[str, shapes.FieldSource] = {
    "prompts_per_step": "rollout.prompts_per_step",
    "num_generations": "rollout.num_generations",
    "prompt_len": "data.max_prompt_length",
    "max_new_tokens": "rollout.max_completion_length",
    "logprob_chunk": "grpo.logprob_chunk",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `python -m openrs_jax.bench step`."""
    from openrs_jax.bench import sampler, update

    parser.add_argument("--model", required=True,
                        help="the run's model_path: a model directory, a run or checkpoint, builtin:tiny, or "
                        "preset:NAME (random weights at a named shape)")
    parser.add_argument("--tokenizer", default="", help="the run's tokenizer_path (default: the model's)")
    parser.add_argument("--dataset", default=None,
                        help="JSON/JSONL/parquet of problems or builtin:sums (default: generated prompts that fill "
                        "--prompt_len tokens)")
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64, help="completion tokens per row")
    parser.add_argument("--prompt_len", type=int, default=None,
                        help="max_prompt_length, which generated prompts fill (default: the run config's)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    update.add_update_arguments(parser)
    sampler.add_sampling_arguments(parser)
    parser.add_argument("--logprob_chunk", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the run config's")
    parser.add_argument("--reward_funcs", default=BENCH_REWARD,
                        help="reward functions, comma-separated (names or package.module:function)")
    parser.add_argument("--reward_weights", default="1.0")
    parser.add_argument("--reward_num_workers", type=int, default=2)
    parser.add_argument("--system_prompt", default=None, help="default: the run config's")
    parser.add_argument("--keep_eos", action="store_true", help="stop rows at EOS (default: decode every token)")
    parser.add_argument("--no_copy_bandwidth", action="store_true", help="skip the copy-bandwidth measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare_trl", action="store_true", help="also time TRL's GRPOTrainer")
    parser.add_argument("--trl_threads", type=int, default=None,
                        help="torch threads for TRL (default: torch's own, one per core; on a busy shared host "
                        "1 can be several times faster)")
    shapes.add_config_argument(parser, {**CONFIG_FIELDS, **update.UPDATE_FIELDS, **sampler.SAMPLING_FIELDS})


def parity_reward(completions: list[str], solutions: list[str]) -> list[float]:
    """The bench's reward: 1 when most characters have an even code point, else 0. It means
    nothing; it costs next to nothing, needs no math-verify, and varies within a group."""
    return [float(2 * sum(ord(ch) % 2 == 0 for ch in text) > len(text)) for text in completions]


# ---------------------------------------------------------------------------------------------
# The run: prompts, config, trainer
# ---------------------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _select_rows(dataset: str, tokenizer: Any, system_prompt: str, count: int, max_prompt_length: int) -> list[dict]:
    """The first `count` rows whose rendered prompt fits `max_prompt_length` tokens."""
    from openrs_jax.recipe import toy
    from openrs_jax.recipe.data import check_columns, load_rows
    from openrs_jax.recipe.prompts import render_prompt_ids

    # A local file or a built-in dataset: the bench never waits on the Hub.
    path = Path(toy.resolve(toy.check_name(dataset, "--dataset", "dataset"))).expanduser()
    if not path.exists():
        raise ValueError(f"--dataset {dataset} does not exist: give a JSON/JSONL/parquet file of problems "
                        f"or {', '.join(toy.BUILTIN_DATASETS)}")
    rows = load_rows(str(path))
    check_columns(rows, dataset)
    chosen = []
    for row in rows:
        if len(render_prompt_ids(tokenizer, row["problem"], system_prompt)) <= max_prompt_length:
            chosen.append(row)
            if len(chosen) == count:
                return chosen
    raise ValueError(f"{dataset} has fewer than {count} prompts of at most {max_prompt_length} tokens")


def filled_rows(tokenizer: Any, system_prompt: str, count: int, prompt_len: int, seed: int = 0) -> list[dict]:
    """`count` sums (`a+b+...=`, answer their total) whose rendered prompts are as long as fits in
    `prompt_len` tokens: fixed prompt work with any tokenizer (digits, '+' and '=' only)."""
    from openrs_jax.recipe.prompts import render_prompt_ids

    rows = []
    for i in range(count):
        rng = random.Random(seed * 1_000_003 + i)
        terms = [rng.randint(1, 99) for _ in range(prompt_len)]

        def length(k: int) -> int:
            return len(render_prompt_ids(tokenizer, "+".join(map(str, terms[:k])) + "=", system_prompt))

        if length(1) > prompt_len:
            raise ValueError(f"--prompt_len {prompt_len} is shorter than the rendered prompt of one term "
                            f"({length(1)} tokens with this system prompt): raise it")
        lo, hi = 1, prompt_len  # each term adds at least one token: the most that fit is at most prompt_len
        while lo < hi:  # the largest k whose prompt fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if length(mid) <= prompt_len else (lo, mid - 1)
        rows.append({"problem": "+".join(map(str, terms[:lo])) + "=", "answer": str(sum(terms[:lo]))})
    return rows


def run_config(args: argparse.Namespace, dtype: str, data_file: Path, output_dir: Path) -> Any:
    """The trainer's config: the run config (or the recipe's base) with the bench's flags over it."""
    from openrs_jax.core import sharding
    from openrs_jax.recipe.config import base_config, load_config

    c = load_config(args.config) if args.config else base_config()
    c.model.path, c.model.tokenizer_path, c.data.dataset = args.model, args.tokenizer, str(data_file)
    c.run.output_dir = str(output_dir)
    if args.system_prompt is not None:
        c.data.system_prompt = args.system_prompt
    if args.learning_rate is not None:
        c.grpo.learning_rate = args.learning_rate
    c.rewards.funcs = tuple(f.strip() for f in args.reward_funcs.split(",") if f.strip())
    try:
        c.rewards.weights = tuple(float(w) for w in args.reward_weights.split(",") if w.strip())
    except ValueError:
        raise ValueError(f"--reward_weights {args.reward_weights!r}: give numbers separated by commas, "
                         "e.g. 1.0,2.0") from None
    c.rewards.num_workers = args.reward_num_workers
    c.rollout.prompts_per_step, c.rollout.num_generations = args.prompts_per_step, args.num_generations
    c.grpo.micro_batch_size = args.micro_batch_size or args.prompts_per_step * args.num_generations
    c.data.max_prompt_length, c.rollout.max_completion_length = args.prompt_len, args.max_new_tokens
    c.rollout.ignore_eos = not args.keep_eos
    c.rollout.temperature, c.rollout.top_p, c.rollout.top_k = args.temperature, args.top_p, args.top_k
    c.grpo.beta, c.grpo.loss_aggregation = args.beta, args.loss_aggregation
    c.model.compute_dtype, c.model.remat, c.grpo.logprob_chunk = dtype, args.remat, args.logprob_chunk
    mesh = sharding.parse_mesh_spec(args.mesh)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
    c.grpo.max_steps, c.run.seed = args.steps + 1, args.seed
    c.run.tensorboard, c.run.log_completions, c.eval.every = False, 0, 0
    return c


def _prompt_rows(args: argparse.Namespace, c: Any) -> list[dict]:
    """One step's prompts (see the module's docstring)."""
    from openrs_jax.core.policy import Policy

    tokenizer = Policy.load(c.model.path, tokenizer_path=c.model.tokenizer_path).tokenizer
    if args.dataset:
        return _select_rows(args.dataset, tokenizer, c.data.system_prompt, args.prompts_per_step, args.prompt_len)
    return filled_rows(tokenizer, c.data.system_prompt, args.prompts_per_step, args.prompt_len, args.seed)


def step_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """What the bench keeps of one step's trainer metrics."""
    record = {key: metrics[f"time/{key}"] for key in ("step_s", *PARTS, "prefill_s", "decode_s")
              if f"time/{key}" in metrics}
    record.update({key: metrics.get(key, 0.0) for key in ("loss", "kl", "reward", "completion_length", "completion_length_max")})
    return record


def run_trainer(args: argparse.Namespace, dtype: str, workdir: Path) -> dict[str, Any]:
    """Steps of the product's GRPOTrainer on one step's prompts (TRL's steps interleaved)."""
    from openrs_jax.bench.common import describe_model, device_memory
    from openrs_jax.core.sampling import bucket_length
    from openrs_jax.files import write_jsonl
    from openrs_jax.recipe.trainer import GRPOTrainer, trained_width

    data_file = workdir / "prompts.jsonl"
    c = run_config(args, dtype, data_file, workdir / "run")
    rows = _prompt_rows(args, c)
    write_jsonl(data_file, rows)
    c.lock()
    trainer = GRPOTrainer(c)
    try:
        if args.compare_trl:  # TRL starts from the same weights: the trainer's own export, before any step
            trainer.export_hf(workdir / "model", dtype="float32")
        per_step: list[dict[str, Any]] = []

        def one_step() -> None:
            per_step.append(step_record(trainer.train_one_step()))

        one_step()  # warm-up: compiles
        info: dict[str, Any] = {
            "random_weights": trainer.policy.random_weights,
            **describe_model(trainer.policy.model_config),
            "remat": c.model.remat,
            "mesh": dict(trainer.mesh.shape),
            "tokenizer": str(trainer.policy.tokenizer_dir),
            "dataset": str(args.dataset) if args.dataset else "generated",
            "reward_funcs": list(c.rewards.funcs),
            "reward_weights": list(c.rewards.weights),
            "prompt_tokens": [len(e.rollout_ids) for e in trainer.dataset.examples],
            # The rollout's prompt width (decode figures) and the update's (FLOPs): they differ
            # where rollouts see a second BOS (rollout.bos="double", as in exp2).
            "prompt_len_bucketed": bucket_length(max(len(e.rollout_ids) for e in trainer.dataset.examples),
                                                 trainer.policy.sampler.prompt_bucket),
            "prompt_len_trained": trainer.loss_prompts(trainer.dataset.examples)[0].shape[1],
        }
        if args.compare_trl:
            memory = device_memory()  # before torch shares the process

            def between_trl_steps() -> None:
                if len(per_step) < args.steps + 1:
                    one_step()

            # Our timed steps run between TRL's, so that both see the same load from other jobs.
            trl_inputs = TrlInputs(workdir / "model", rows, c)
            info["_trl"] = run_trl(args, trl_inputs, workdir, between_trl_steps)
            info["_memory"] = memory
        while len(per_step) < args.steps + 1:
            one_step()
        longest = int(per_step[-1]["completion_length_max"])
        info.update({
            "completion_len_trained": trained_width(longest, args.max_new_tokens),
            "completion_tokens_per_step": int(round(per_step[-1]["completion_length"] * args.prompts_per_step
                                                    * args.num_generations)),
            "sampler_compilations": trainer.policy.sampler.num_compilations,
            "_config": trainer.policy.model_config,
            "_per_step": per_step,
        })
        return info
    finally:
        trainer.close()


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _phases(per_step: list[dict[str, float]]) -> dict[str, Any]:
    """Warm-up figures and medians of the timed steps."""
    first, timed = per_step[0], per_step[1:]
    out: dict[str, Any] = {"first_step_s": first["step_s"], "step_times_s": [s["step_s"] for s in timed]}
    for key in ("step_s", *PARTS, "decode_s", "prefill_s"):
        if key in first:
            out["step_time_s" if key == "step_s" else key] = _median([s[key] for s in timed])
    out["step_time_min_s"] = min(s["step_s"] for s in timed)
    # What no part covers (host work between parts), per step, then the median.
    out["other_s"] = _median([s["step_s"] - sum(s.get(k, 0.0) for k in PARTS) for s in timed])
    out["per_step"] = timed
    return out


def phase_figures(
    config: Any, *, rows: int, prompt_len: int, train_prompt_len: int, completion_len: int, new_tokens: int,
    update_s: float, reference_s: float | None, decode_s: float | None, copy_bw: float | None, peak: float | None,
    devices: int,
) -> dict[str, Any]:
    """FLOPs, MFU and decode bandwidth use of one step's phases (update, reference, decode).

    prompt_len: the rollout's (bucketed) prompt width; train_prompt_len: the update's."""
    from openrs_jax.bench.common import decode_figures
    from openrs_jax.bench.update import flops_fields, forward_flops_per_token, train_flops_per_token

    seq = train_prompt_len + completion_len
    out = flops_fields("update", train_flops_per_token(config, seq) * rows * seq, update_s, peak, devices)
    if reference_s:
        out.update(flops_fields("reference", forward_flops_per_token(config, seq) * rows * seq, reference_s, peak,
                                devices))
    if decode_s and new_tokens > 1:
        out.update(decode_figures(config, rows, prompt_len, new_tokens, decode_s / (new_tokens - 1), copy_bw, devices))
    return out


# ---------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrlInputs:
    """What TRL's run shares with ours."""

    hf_dir: Path  # our initial weights and tokenizer, exported by the trainer
    rows: list[dict]  # the step's problems
    config: Any  # our trainer's run config: TRL's settings are read from it


class _CallTimes:
    """(start, end) of each call of the wrapped functions, read per TRL step."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.calls.append((start, time.perf_counter()))
        return timed

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(a, b) for a, b in self.calls if start <= a and b <= end]


def _trl_reward(name: str, params: dict[str, Any], times: _CallTimes) -> Callable[..., list[float]]:
    """One of our reward functions, with the run's `params` (the trainer's `reward_params`), in
    TRL's calling convention (in-process, as TRL runs them)."""
    from openrs_jax.recipe.rewards import get_reward_function

    fn = get_reward_function(name, **params)

    def reward(prompts: list, completions: list, gold: list[str], completion_ids: list, **kwargs: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(x) for x in fn(texts, gold, lengths=[len(ids) for ids in completion_ids])]

    timed = times.wrap(reward)
    timed.__name__ = name.rsplit(":", 1)[-1]
    return timed


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def run_trl(
    args: argparse.Namespace, ours: TrlInputs, workdir: Path, between_steps: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """TRL's GRPOTrainer on the same weights, tokenizer, prompts and settings; per-step times.

    `between_steps` runs after each TRL step (outside its timing): our steps, interleaved.
    `--trl_threads` sets torch's threads for the run (restored afterwards).
    """
    import torch

    threads_before = torch.get_num_threads()
    if args.trl_threads:
        torch.set_num_threads(args.trl_threads)
    try:
        return _run_trl(args, ours, workdir, between_steps)
    finally:
        torch.set_num_threads(threads_before)


def _trl_settings(c: Any, workdir: Path, grpo_config: type) -> dict[str, Any]:
    """Arguments of `grpo_config` (TRL's GRPOConfig) matching our trainer's run config `c`."""
    from openrs_jax.core.grpo.advantages import reward_scaling

    r, g = c.rollout, c.grpo
    total = r.prompts_per_step * r.num_generations
    settings = dict(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=g.micro_batch_size,
        gradient_accumulation_steps=total // g.micro_batch_size, num_generations=r.num_generations,
        max_completion_length=r.max_completion_length, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
        beta=g.beta, epsilon=g.epsilon_low, epsilon_high=g.epsilon_high, num_iterations=g.num_iterations,
        loss_type="dapo", scale_rewards=reward_scaling(g.scale_rewards), reward_weights=list(c.rewards.weights),
        learning_rate=g.learning_rate, max_grad_norm=g.max_grad_norm, weight_decay=g.weight_decay,
        max_steps=g.max_steps, logging_steps=1, save_strategy="no", report_to="none", use_vllm=False,
        bf16=c.model.compute_dtype == "bfloat16", disable_tqdm=True, log_completions=False, seed=c.run.seed,
        dataloader_num_workers=0, use_cpu=True,
    )
    # transformers 5 renamed gradient_checkpointing (the old name still works, with a warning).
    fields = {f.name for f in dataclasses.fields(grpo_config)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    settings[checkpointing] = c.model.remat != "none"
    if r.ignore_eos:
        settings["generation_kwargs"] = {"min_new_tokens": r.max_completion_length}  # no EOS before: every row is full
    return settings


def _run_trl(
    args: argparse.Namespace, ours: TrlInputs, workdir: Path, between_steps: Callable[[], None],
) -> dict[str, Any]:
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    from openrs_jax.core.tokenizer import load_tokenizer
    from openrs_jax.recipe.prompts import build_messages, render_prompt_ids
    from openrs_jax.recipe.rewards import gold_from_row
    from openrs_jax.recipe.trainer import reward_params

    tokenizer = AutoTokenizer.from_pretrained(ours.hf_dir)
    ours_tok = load_tokenizer(ours.hf_dir)
    system_prompt = ours.config.data.system_prompt
    messages = [build_messages(r["problem"], system_prompt) for r in ours.rows]
    prompts_match = all(
        _chat_ids(tokenizer, m) == render_prompt_ids(ours_tok, r["problem"], system_prompt)
        for m, r in zip(messages, ours.rows)
    )
    dataset = datasets.Dataset.from_list([{"prompt": m, "gold": gold_from_row(r)} for m, r in zip(messages, ours.rows)])
    c = ours.config
    params = reward_params(c)
    settings = _trl_settings(c, workdir, trl.GRPOConfig)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[c.model.compute_dtype]
    config = trl.GRPOConfig(**settings)  # TRL loads its reference model (beta > 0) in the policy's dtype
    generate_times, reward_times = _CallTimes(), _CallTimes()

    class TimedGenerate(transformers.Qwen2ForCausalLM):
        """The policy, whose public generate() (TRL's rollout) records its wall time."""

        def generate(self, *a: Any, **k: Any) -> Any:
            return generate_times.wrap(super().generate)(*a, **k)

    class StepTimer(TrainerCallback):
        """Step times from one step's end to the next, less what runs between them (our steps)."""

        def __init__(self) -> None:
            self.start = 0.0
            self.windows: list[tuple[float, float]] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.windows.append((self.start, time.perf_counter()))
            between_steps()
            self.start = time.perf_counter()

    timer = StepTimer()
    trainer = trl.GRPOTrainer(
        model=TimedGenerate.from_pretrained(ours.hf_dir, dtype=torch_dtype),
        reward_funcs=[_trl_reward(f, params.get(f, {}), reward_times) for f in c.rewards.funcs], args=config,
        train_dataset=dataset, processing_class=tokenizer, callbacks=[timer],
    )
    trainer.train()
    per_step = []
    for start, end in timer.windows:
        rewards = reward_times.between(start, end)
        rollout = sum(b - a for a, b in generate_times.between(start, end))
        first_reward, last_reward = (rewards[0][0], rewards[-1][1]) if rewards else (end, end)
        per_step.append({
            "step_s": end - start,
            "rollout_s": rollout,
            "reward_s": sum(b - a for a, b in rewards),
            # Tokenising, decoding and the reference forward pass: the rest of the preparation.
            "reference_s": first_reward - start - rollout,
            "update_s": end - last_reward,
        })
    lengths = [h.get("completions/mean_length") for h in trainer.state.log_history if "loss" in h]
    timed_steps = per_step[1:]
    result = {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "trl_settings": {k: v for k, v in settings.items() if k != "output_dir"},
        "trl_prompts_match_ours": prompts_match,
        "trl_first_step_s": per_step[0]["step_s"] if per_step else None,
        "trl_step_times_s": [s["step_s"] for s in timed_steps],
        "trl_step_time_s": _median([s["step_s"] for s in timed_steps]),
        "trl_step_time_min_s": min((s["step_s"] for s in timed_steps), default=float("nan")),
        "trl_completion_mean_length": lengths,
        "trl_per_step": timed_steps,
    }
    for key in PARTS:
        result[f"trl_{key}"] = _median([s[key] for s in timed_steps])
    del trainer
    return result


# ---------------------------------------------------------------------------------------------
# Entry
# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark; returns the JSON fields (the dispatcher adds date, device, command)."""
    import jax

    from openrs_jax.bench.common import copy_bandwidth, device_memory
    from openrs_jax.bench.update import peak_flops
    from openrs_jax.core.policy import resolve_dtype
    from openrs_jax.recipe.config import base_config

    shapes.apply_run_config(args)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.num_generations < 2:
        raise ValueError("--num_generations must be >= 2 (GRPO compares completions of one prompt)")
    rows = args.prompts_per_step * args.num_generations
    if args.micro_batch_size is not None and rows % args.micro_batch_size:
        raise ValueError(f"--micro_batch_size {args.micro_batch_size} must divide {rows} rows")
    if args.prompt_len is None:
        args.prompt_len = base_config().data.max_prompt_length
    dtype = resolve_dtype(args.dtype)
    copy = None if args.no_copy_bandwidth else copy_bandwidth()

    with tempfile.TemporaryDirectory(prefix="openrs-bench-step-") as tmp:
        ours = run_trainer(args, dtype, Path(tmp))
    memory = ours.pop("_memory", None) or device_memory()
    trl_result = ours.pop("_trl", None)
    config, per_step = ours.pop("_config"), ours.pop("_per_step")
    phases = _phases(per_step)
    result: dict[str, Any] = {
        "model": str(args.model),
        **ours,
        "prompts_per_step": args.prompts_per_step,
        "num_generations": args.num_generations,
        "rows": rows,
        "max_new_tokens": args.max_new_tokens,
        "eos_ignored": not args.keep_eos,
        "micro_batch_size": args.micro_batch_size or rows,
        "beta": args.beta,
        "loss_aggregation": args.loss_aggregation,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "steps": args.steps,
        "run_config": args.config,
        **phases,
        "completion_tokens_per_s": ours["completion_tokens_per_step"] / phases["step_time_s"],
        **phase_figures(
            config, rows=rows, prompt_len=ours["prompt_len_bucketed"], train_prompt_len=ours["prompt_len_trained"],
            completion_len=ours["completion_len_trained"], new_tokens=args.max_new_tokens,
            update_s=phases["update_s"], reference_s=phases.get("reference_s") if args.beta > 0 else None,
            decode_s=phases.get("decode_s"), copy_bw=copy["copy_bandwidth_bytes_per_s"] if copy else None,
            peak=peak_flops(args.peak_tflops, dtype), devices=jax.device_count(),
        ),
        **(copy or {}),
        **memory,
    }
    if trl_result is not None:
        result.update(trl_result)
        result["ratio_vs_trl"] = trl_result["trl_step_time_s"] / result["step_time_s"]
        # Fastest step against fastest step: less sensitive to other jobs on a shared machine.
        result["ratio_vs_trl_best"] = trl_result["trl_step_time_min_s"] / result["step_time_min_s"]
        for key in PARTS:
            if result.get(key):
                result[f"ratio_vs_trl_{key[:-2]}"] = trl_result[f"trl_{key}"] / result[key]
    return result
