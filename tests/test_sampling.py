"""Sampler checks against independent references: transformers generate and forward passes,
transformers' logits warpers, and the softmax distribution (chi-square)."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from scipy import stats

from tests.conftest import make_hf_model
from openrs_jax.core import sampling
from openrs_jax.core.model import from_pretrained, params_of
from openrs_jax.core.sampling import (
    Sampler,
    SamplingParams,
    first_argmax,
    mask_top_k,
    mask_top_p,
    sample_categorical,
)

EOS, PAD = 2, 0
PROMPT_LENGTHS = (3, 11, 6, 1, 17)
MAX_NEW = 14


@pytest.fixture(scope="module")
def eos_model(tmp_path_factory):
    """A tiny HF model whose EOS logit is raised until greedy rows stop at different steps.

    Returns (directory, torch model, our model, prompts, HF greedy completions [P, MAX_NEW]).
    """
    from transformers import AutoModelForCausalLM

    base = make_hf_model(tmp_path_factory.mktemp("sampling") / "base")
    hf = AutoModelForCausalLM.from_pretrained(base).eval()
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 256, size=n).tolist() for n in PROMPT_LENGTHS]
    row = hf.lm_head.weight.data[EOS].clone()
    for scale in (4.0, 6.0, 8.0, 11.0, 15.0, 20.0):
        hf.lm_head.weight.data[EOS] = row * scale
        reference = hf_greedy(hf, prompts, MAX_NEW)
        eos_at = [np.flatnonzero(r == EOS) for r in reference]
        stops = {int(e[0]) for e in eos_at if e.size}
        if len(stops) >= 2 and any(e.size == 0 for e in eos_at):
            break
    else:
        pytest.fail("could not make EOS stop rows at different steps")
    directory = tmp_path_factory.mktemp("sampling") / "eos"
    hf.save_pretrained(directory)
    return directory, hf, from_pretrained(directory), prompts, reference


@pytest.fixture(scope="module")
def sampler(eos_model) -> Sampler:
    """One sampler shared by the tests below, so that equal shapes reuse compiled programs."""
    return Sampler(eos_model[2].config, prompt_bucket=8)


def sampled(max_new: int = 8) -> SamplingParams:
    return SamplingParams(temperature=1.0, max_new_tokens=max_new, eos_ids=(EOS,), pad_id=PAD)


def hf_greedy(hf, prompts: list[list[int]], max_new: int) -> np.ndarray:
    """transformers greedy generate on left-padded prompts, padded to max_new columns."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                          eos_token_id=EOS, pad_token_id=PAD)
    gen = out[:, width:].numpy()
    return np.pad(gen, ((0, 0), (0, max_new - gen.shape[1])), constant_values=PAD)


def hf_logits(hf, ids: list[int]) -> np.ndarray:
    """Full-forward logits [T, V] of one unpadded sequence."""
    with torch.inference_mode():
        return hf(torch.tensor([ids])).logits[0].double().numpy()


def greedy(max_new: int = MAX_NEW) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_new_tokens=max_new, eos_ids=(EOS,), pad_id=PAD)


def test_greedy_matches_transformers(eos_model, sampler):
    _, _, model, prompts, reference = eos_model
    out = sampler.generate(model, prompts, 3, greedy(), 0)
    expected = np.repeat(reference, 3, axis=0)
    np.testing.assert_array_equal(out.completion_ids, expected)
    # Masks, lengths and flags follow the first EOS.
    for row, ids in enumerate(expected):
        eos = np.flatnonzero(ids == EOS)
        length = eos[0] + 1 if eos.size else MAX_NEW
        assert out.lengths[row] == length
        assert out.truncated[row] == (eos.size == 0)
        assert out.completion_mask[row].sum() == length and out.completion_mask[row, :length].all()
        assert (out.completion_ids[row, length:] == PAD).all() and (out.logprobs[row, length:] == 0).all()
    assert out.completions()[0] == expected[0][: out.lengths[0]].tolist()
    # The prompts are returned as used: left-padded to the bucket, one row per sample.
    assert out.prompt_ids.shape == (15, 24) and out.prompt_mask.sum(1).tolist() == np.repeat(PROMPT_LENGTHS, 3).tolist()
    assert out.prompt_ids[2, -PROMPT_LENGTHS[0]:].tolist() == prompts[0]


def test_cached_logits_and_logprobs_match_full_forward(eos_model, sampler):
    """Every step's logits (cache + prefill copied to G rows) equal a full forward of the text so far."""
    _, hf, model, prompts, _ = eos_model
    params = SamplingParams(temperature=1.3, top_k=40, max_new_tokens=10, eos_ids=(EOS,), pad_id=PAD)
    out = sampler.generate(model, prompts[:3], 2, params, 5, keep_logits=True)
    for row in range(6):
        prompt = prompts[row // 2]
        n = out.lengths[row]
        completion = out.completion_ids[row, :n].tolist()
        full = hf_logits(hf, prompt + completion)[len(prompt) - 1 : len(prompt) - 1 + n]  # [n, V]
        np.testing.assert_allclose(out.logits[row, :n], full, atol=2e-4)
        # Log-prob of each sampled token under the temperature + top-k distribution (float64 reference).
        x = full / 1.3
        kth = np.sort(x, axis=-1)[:, -40][:, None]
        x = np.where(x >= kth, x, -np.inf)
        logp = x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
        np.testing.assert_allclose(out.logprobs[row, :n], logp[np.arange(n), completion], atol=2e-4)


def test_first_token_frequencies_follow_softmax(eos_model, sampler):
    _, hf, model, prompts, _ = eos_model
    temperature, rows = 0.7, 6000
    params = SamplingParams(temperature=temperature, max_new_tokens=1, eos_ids=(EOS,), pad_id=PAD)
    out = sampler.generate(model, [prompts[1]], rows, params, 11)
    logits = hf_logits(hf, prompts[1])[-1] / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    counts = np.bincount(out.completion_ids[:, 0], minlength=probs.size)
    assert_follows(counts, probs)


def assert_follows(counts: np.ndarray, probs: np.ndarray) -> None:
    """Chi-square goodness of fit, pooling the rare outcomes so every bin expects >= 5."""
    total = counts.sum()
    assert counts[probs == 0].sum() == 0, "drew an excluded token"
    order = np.argsort(probs)
    expected, observed = probs[order] * total, counts[order]
    rare = np.cumsum(expected) < 5
    e = np.concatenate([[expected[rare].sum()], expected[~rare]]) if rare.any() else expected
    o = np.concatenate([[observed[rare].sum()], observed[~rare]]) if rare.any() else observed
    p_value = stats.chisquare(o, e).pvalue
    assert p_value > 1e-3, f"frequencies do not follow the distribution (p = {p_value:.2e})"


def test_sample_categorical_is_exact_on_a_skewed_distribution():
    # 700 entries (not a multiple of the block), some excluded, probabilities spanning 1e-4..0.2.
    rng = np.random.default_rng(0)
    v, n = 700, 40000
    logits = rng.normal(0, 2.0, v).astype(np.float32)
    logits[rng.choice(v, 200, replace=False)] = -np.inf
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    x = jnp.broadcast_to(jnp.asarray(logits), (n, v))
    u = jax.random.uniform(jax.random.key(3), (n, 2))
    idx, logprob = jax.jit(sample_categorical)(x, u)
    idx = np.asarray(idx)
    assert_follows(np.bincount(idx, minlength=v), probs)
    np.testing.assert_allclose(np.asarray(logprob), np.log(probs[idx]), rtol=1e-5, atol=1e-5)


def test_first_argmax_takes_the_first_maximum():
    x = jnp.asarray([[0.0, 3.0, 3.0, 1.0], [-1.0, -2.0, -1.0, -5.0], [2.0, 2.0, 2.0, 2.0]])
    assert first_argmax(x).tolist() == [1, 0, 0] == torch.argmax(torch.tensor(np.asarray(x)), -1).tolist()


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.999])
@pytest.mark.parametrize("candidates", [64, 4])
def test_top_p_and_top_k_match_transformers_warpers(top_p, candidates):
    """Our filters keep exactly the tokens transformers' warpers keep (fast and fallback paths)."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(int(top_p * 1000) + candidates)
    x = (rng.standard_normal((16, 300)) * rng.uniform(0.3, 4.0, (16, 1))).astype(np.float32)
    kept = np.isfinite(np.asarray(jax.jit(mask_top_p, static_argnums=2)(jnp.asarray(x), jnp.float32(top_p), candidates)))
    ref = TopPLogitsWarper(top_p)(None, torch.tensor(x))
    np.testing.assert_array_equal(kept, torch.isfinite(ref).numpy())
    kept_k = np.isfinite(np.asarray(mask_top_k(jnp.asarray(x), 7)))
    np.testing.assert_array_equal(kept_k, torch.isfinite(TopKLogitsWarper(7)(None, torch.tensor(x))).numpy())


@pytest.mark.parametrize("filters", [dict(top_k=5), dict(top_k=30, top_p=0.8)])
def test_filtered_sampling_never_emits_excluded_tokens(eos_model, filters):
    _, _, model, prompts, _ = eos_model
    temperature = 0.5
    # Few top-p candidates: near-uniform rows take the bisection path (the warper test covers both).
    sampler = Sampler(model.config, prompt_bucket=8, top_p_candidates=16)
    params = SamplingParams(temperature=temperature, max_new_tokens=6, eos_ids=(), pad_id=PAD, **filters)
    out = sampler.generate(model, prompts, 40, params, 2, keep_logits=True)
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    x = torch.tensor(out.logits.reshape(-1, out.logits.shape[-1]) / temperature)
    if "top_k" in filters:
        x = TopKLogitsWarper(filters["top_k"])(None, x)
    if "top_p" in filters:
        x = TopPLogitsWarper(filters["top_p"])(None, x)
    allowed = torch.isfinite(x).numpy()
    chosen = out.completion_ids.reshape(-1)
    assert allowed[np.arange(chosen.size), chosen].all()
    logp = torch.log_softmax(x.double(), -1).numpy()[np.arange(chosen.size), chosen]
    np.testing.assert_allclose(out.logprobs.reshape(-1), logp, atol=1e-4)


def test_samples_differ_within_a_group_and_repeat_with_the_seed(eos_model, sampler):
    _, _, model, prompts, _ = eos_model
    params = sampled()
    a = sampler.generate(model, prompts[:2], 4, params, 7)
    b = sampler.generate(model, prompts[:2], 4, params, 7)
    c = sampler.generate(model, prompts[:2], 4, params, jax.random.key(8))
    np.testing.assert_array_equal(a.completion_ids, b.completion_ids)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert not np.array_equal(a.completion_ids, c.completion_ids)
    for group in a.completion_ids.reshape(2, 4, -1):
        assert len({tuple(r) for r in group}) == 4


def test_programs_are_reused_and_logged(eos_model, caplog):
    _, _, model, prompts, _ = eos_model
    sampler = Sampler(model.config, prompt_bucket=16)
    with caplog.at_level(logging.DEBUG, logger="openrs_jax.core.sampling"):
        sampler.generate(model, prompts[:2], 2, greedy(4), 0)
        assert sampler.num_compilations == 2
        # Other prompts of lengths in the same bucket, other seed, other params: no new program.
        sampler.generate(params_of(model), [prompts[2], prompts[0]], 2, greedy(4), 1)
        assert sampler.num_compilations == 2
        sampler.generate(model, prompts[:2], 2, sampled(4), 0)  # new sampling mode: new decode program only
        assert sampler.num_compilations == 3
    assert sum("compiling" in r.message for r in caplog.records) == 3


def test_params_as_module_state_or_dict_agree(eos_model, sampler):
    _, _, model, prompts, _ = eos_model
    outs = [sampler.generate(p, prompts[:2], 4, sampled(), 4) for p in (model, nnx.state(model), params_of(model))]
    for o in outs[1:]:
        np.testing.assert_array_equal(o.completion_ids, outs[0].completion_ids)


@pytest.mark.parametrize("shape, axes", [
    ((4,), ("data",)),
    pytest.param((2, 2), ("data", "tensor"), marks=pytest.mark.slow),
])
def test_four_devices_give_the_single_device_output(eos_model, sampler, shape, axes):
    if jax.device_count() < 4:
        pytest.skip("needs 4 (emulated) devices")
    _, _, model, prompts, reference = eos_model
    mesh = jax.make_mesh(shape, axes, axis_types=(jax.sharding.AxisType.Auto,) * len(axes))
    state = jax.device_put(nnx.state(model), NamedSharding(mesh, PartitionSpec()))
    sharded = Sampler(model.config, mesh=mesh, prompt_bucket=8)
    # 5 prompts x 3 samples = 15 rows: padded to 16 rows (8 per data shard with the tensor axis).
    out = sharded.generate(state, prompts, 3, greedy(), 0)
    np.testing.assert_array_equal(out.completion_ids, np.repeat(reference, 3, axis=0))
    np.testing.assert_allclose(out.logprobs, sampler.generate(model, prompts, 3, greedy(), 0).logprobs, atol=1e-5)
    # Sampled rows do not depend on the device split either: each row has its own key.
    np.testing.assert_array_equal(
        sharded.generate(state, prompts[:2], 4, sampled(), 9).completion_ids,
        sampler.generate(model, prompts[:2], 4, sampled(), 9).completion_ids,
    )


def test_memory_check_reports_the_bytes_needed(eos_model, sampler, monkeypatch):
    _, _, model, prompts, _ = eos_model
    # The weights' decode layout is a copy for the call unless the caller passes `prepare`'s output.
    assert sampler.prepared_bytes() == 4 * sum(x.size for x in jax.tree.leaves(params_of(model)))
    needed = sampler.memory_needed(5, 3, 24, MAX_NEW) + sampler.prepared_bytes()
    monkeypatch.setattr(sampling, "free_device_bytes", lambda device: needed - 1)
    with pytest.raises(ValueError, match=f"{needed} bytes"):
        sampler.generate(model, prompts, 3, greedy(), 0)
    monkeypatch.setattr(sampling, "free_device_bytes", lambda device: needed)
    sampler.generate(model, prompts, 3, greedy(), 0)
    prepared = sampler.prepare(model)  # passed prepared, the call makes no copy: it fits in less
    monkeypatch.setattr(sampling, "free_device_bytes", lambda device: needed - sampler.prepared_bytes())
    sampler.generate(prepared, prompts, 3, greedy(), 0)


def test_invalid_inputs_are_user_errors(eos_model, sampler):
    _, _, model, prompts, _ = eos_model
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
    assert SamplingParams(eos_ids=5).eos_ids == (5,)
    with pytest.raises(ValueError, match="empty"):
        sampler.generate(model, [[]], 1, greedy(), 0)
    with pytest.raises(ValueError, match="outside"):
        sampler.generate(model, [[1, 999]], 1, greedy(), 0)
    with pytest.raises(ValueError, match="num_samples"):
        sampler.generate(model, prompts, 0, greedy(), 0)


def test_compile_ahead_of_time_from_abstract_params(eos_model, sampler):
    """`Sampler.compile` builds both programs from shapes alone, for memory planning."""
    model = eos_model[2]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_of(model))
    programs = sampler.compile(abstract, 5, 3, 20, greedy())  # 20 tokens: the 24-token bucket
    assert set(programs) == {"prepare", "prefill", "decode"}
    for compiled in programs.values():
        assert compiled.memory_analysis().argument_size_in_bytes > 0


def test_stop_lengths_force_an_eos(eos_model, sampler):
    """Benchmarks' realistic lengths: a row stops at its given length unless its own EOS comes first."""
    from openrs_jax.bench.sampler import realistic_lengths

    _, _, model, prompts, reference = eos_model
    natural = sampler.generate(model, prompts, 1, greedy(), 0)
    stops = np.array([2, 5, 9, 1, MAX_NEW + 3])
    out = sampler.generate(model, prompts, 1, greedy(), 0, stop_lengths=stops)
    np.testing.assert_array_equal(out.lengths, np.minimum(natural.lengths, stops))
    for row, n in zip(range(len(prompts)), out.lengths):
        np.testing.assert_array_equal(out.completion_ids[row, : n - 1], reference[row, : n - 1])
        assert out.completion_ids[row, n - 1] == EOS
    with pytest.raises(ValueError, match="stop_lengths"):
        sampler.generate(model, prompts, 1, greedy(), 0, stop_lengths=stops[:2])
    lengths = realistic_lengths(10_000, 3584, np.random.default_rng(0))
    assert lengths.min() >= 1024 and lengths.max() == 3584
    assert 0.12 < np.mean(lengths == 3584) < 0.18 and 1800 < np.median(lengths) < 2800
