"""Drawing K completions per prompt, as evaluate and curate difficulty do: static sampler batches
or the slot engine (continuous batching), both seen by the caller as one stream of
(index, sample, Generation), so a caller saves each result as it comes and resumes by asking
only for what is missing (into a folder whose stored settings match, `check_same_settings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from openrs_jax.files import read_json


@dataclass(frozen=True)
class Generation:
    """One sampled completion: its tokens (up to and including EOS) and whether it hit the limit."""

    token_ids: list[int]
    truncated: bool


# (prompt ids, samples per prompt, seed) -> len(prompts) * samples generations; the samples of
# one prompt are consecutive (prompt-major), as the sampler's group rollouts lay them out.
GenerateFn = Callable[[list[list[int]], int, int], list[Generation]]


class StreamGenerate(Protocol):
    """A generator that takes a whole queue (the slot engine, `openrs_jax.core.engine`): called with
    prompt ids by problem index, the (index, sample) requests, a seed and a progress callback;
    yields (index, sample, Generation) as each request finishes. A request's sample depends only
    on (seed, index, sample), so a resumed run draws what an uninterrupted one would have."""

    def __call__(self, prompts: Mapping[int, list[int]], requests: list[tuple[int, int]], seed: int,
                 on_progress: Callable[[Mapping[str, int]], None]) -> Iterable[tuple[int, int, Generation]]: ...


def static_stream(generate: GenerateFn, prompts: Mapping[int, list[int]], todo: Mapping[int, Sequence[int]],
                  batches: Iterable[tuple[list[int], int]]) -> Iterator[tuple[int, int, Generation]]:
    """Static batches in the stream's form: each (problem indices, seed) batch is one `generate`
    call drawing the sample numbers `todo[index]` of each problem (as many for every problem)."""
    for batch, seed in batches:
        count = len(todo[batch[0]])
        outs = generate([prompts[i] for i in batch], count, seed)
        if len(outs) != len(batch) * count:
            raise RuntimeError(f"generate returned {len(outs)} completions for {len(batch)} x {count}")
        for row, out in enumerate(outs):
            index = batch[row // count]
            yield index, todo[index][row % count], out


def check_same_settings(path: Path, new: Mapping[str, Any], holds: str, fix: str,
                        section: str | None = None) -> dict[str, Any] | None:
    """The settings stored at `path` (None: no such file), checked against `new`.

    Samples drawn with other settings must not be mixed into one estimate: when the stored
    settings (their `section`) differ from `new`, this raises naming each change, that the
    folder holds `holds` and what to do (`fix`).
    """
    if not path.is_file():
        return None
    try:
        stored = read_json(path)
    except ValueError as e:
        raise ValueError(f"{e}: {fix}") from None
    old = stored.get(section, {}) if section else stored
    diff = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                     for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"{path.parent} holds {holds} with other settings ({diff}); {fix}")
    return stored


def sampler_generate_fn(sampler: Any, params: Any, sampling: Any) -> GenerateFn:
    """Adapts the project's `Sampler` (with `SamplingParams` `sampling`) to a `GenerateFn`."""

    def generate(prompts: list[list[int]], num_samples: int, seed: int) -> list[Generation]:
        out = sampler.generate(params, prompts, num_samples, sampling, seed)
        return [Generation(ids, bool(t)) for ids, t in zip(out.completions(), out.truncated)]

    return generate


def load_policy(model: str, tokenizer: str | None, *, dtype: str, **options: Any) -> Any:
    """The `Policy` of the --model and --tokenizer flags, weights not read yet (JAX starts here,
    not before); `options`: more `Policy.load` arguments."""
    from openrs_jax.core.policy import DECODE_MESH, Policy
    from openrs_jax.recipe import toy

    toy.check_name(model, "--model", "model")
    toy.check_name(tokenizer or "", "--tokenizer", "model")
    return Policy.load(model, tokenizer_path=tokenizer or "", mesh=DECODE_MESH, compute_dtype=dtype,
                       param_dtype=dtype, flags=("--model", "--tokenizer"), **options)


def load_decoder(model: str, tokenizer: str | None, *, dtype: str, slots: int | None, prompt_bucket: int,
                 sampling: Mapping[str, Any], seed: int = 0,
                 require_chat_template: bool = False) -> tuple[Any, GenerateFn | StreamGenerate, bool]:
    """The model's `Policy` (`load_policy`) and how to draw from it: a `GenerateFn` over static
    sampler batches, or the slot engine's `StreamGenerate` (`engine.decode_devices` chooses from
    `slots`), and whether it is the latter. `sampling`: `SamplingParams` fields other than the
    stop and pad ids; `seed` draws the random weights of built-in models."""
    from openrs_jax.core.engine import Engine, decode_devices, stream_by_index
    from openrs_jax.core.sampling import SamplingParams

    devices, use_engine = decode_devices(slots)
    policy = load_policy(model, tokenizer, dtype=dtype, devices=devices, prompt_bucket=prompt_bucket,
                         require_chat_template=require_chat_template)
    weights = policy.sampler.prepare(policy.load_params(seed))
    params = SamplingParams(**sampling, eos_ids=policy.eos_ids, pad_id=policy.tokenizer.pad_id)
    if not use_engine:
        return policy, sampler_generate_fn(policy.sampler, weights, params), False
    engine = Engine(policy.sampler, slots=slots)

    def stream(prompts, requests, seed, on_progress):
        for c in stream_by_index(engine, weights, prompts, requests, params, seed, on_progress):
            yield c.request.prompt, c.request.sample, Generation(c.token_ids, c.truncated)

    return policy, stream, True
