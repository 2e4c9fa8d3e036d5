"""The slot engine gives `Sampler.generate`'s completions (greedy and sampled, same seed) with
more requests than slots and rows of very different lengths, and compiles a fixed set of programs."""

from __future__ import annotations

import numpy as np
import pytest

from openrs_jax.core.engine import Engine, Request
from openrs_jax.core.model import init_model, params_of, tiny_config
from openrs_jax.core.sampling import Sampler, SamplingParams
from tests.test_paper_exact import bos_tokenizer_dir  # noqa: F401  (fixture)

EOS, PAD = 2, 0
MAX_NEW = 24


@pytest.fixture(scope="module")
def setup():
    config = tiny_config(dtype="float32", param_dtype="float32")
    params = params_of(init_model(config, seed=3))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, config.vocab_size, size=n).tolist() for n in (5, 13, 2, 9, 16, 7)]
    return config, params, prompts


def _reference(sampler, params, prompts, g, sampling, seed, stops):
    out = sampler.generate(params, prompts, g, sampling, seed, stop_lengths=stops)
    return out.completions(), out.logprobs, out.truncated


def _in_row_order(completions, num_prompts, g):
    """Completions in `Sampler.generate`'s row order (prompt-major)."""
    got = {(c.request.prompt, c.request.sample): c for c in completions}
    return [got[(i, j)] for i in range(num_prompts) for j in range(g)]


def _check(completions, reference):
    ref_ids, ref_lp, ref_trunc = reference
    assert [c.token_ids for c in completions] == ref_ids
    for n, c in enumerate(completions):
        np.testing.assert_allclose(c.logprobs, ref_lp[n, : len(c.token_ids)], atol=2e-5, rtol=1e-5)
        assert c.truncated == bool(ref_trunc[n])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_matches_sampler(setup, temperature):
    config, params, prompts = setup
    g = 3
    sampling = SamplingParams(temperature=temperature, top_p=0.9 if temperature else 1.0, max_new_tokens=MAX_NEW,
                              eos_ids=(EOS,), pad_id=PAD)
    # Very different lengths (forced EOS): most rows short, a few run to the cap.
    rng = np.random.default_rng(1)
    stops = np.where(rng.random(len(prompts) * g) < 0.2, MAX_NEW + 1, rng.integers(1, 6, len(prompts) * g))
    sampler = Sampler(config, prompt_bucket=8)
    reference = _reference(sampler, params, prompts, g, sampling, 7, stops)
    assert len({len(c) for c in reference[0]}) >= 4 and reference[2].any()
    requests = [Request(i, j, int(stops[i * g + j])) for i in range(len(prompts)) for j in range(g)]
    engine = Engine(sampler, slots=4, chunk=3, prefill_width=2)  # 18 requests through 4 slots
    _check(_in_row_order(engine.run(params, prompts, requests, sampling, 7), len(prompts), g), reference)
    # Another slot count and order of requests: the same completions (keys follow the request).
    engine = Engine(sampler, slots=5, chunk=2)
    _check(_in_row_order(engine.run(params, prompts, requests[::-1], sampling, 7), len(prompts), g), reference)


def test_no_recompilation_for_different_mixes(setup):
    config, params, prompts = setup
    sampling = SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW, eos_ids=(EOS,), pad_id=PAD)
    engine = Engine(Sampler(config, prompt_bucket=32), slots=3, chunk=4)
    rng = np.random.default_rng(2)
    requests = [Request(int(i), 0, int(s)) for i, s in zip(rng.integers(0, len(prompts), 10), rng.integers(1, 30, 10))]
    list(engine.run(params, prompts, requests, sampling, 0))
    assert engine.num_compilations == 2  # one admission and one decode program
    # Other prompts, lengths, sample counts and occupancy within the same prompt bucket: no new program.
    requests = [Request(i % 4, i, 1 + (i * 7) % 25) for i in range(13)]
    list(engine.run(params, prompts, requests, sampling, 5))
    assert engine.num_compilations == 2


def test_progress_and_bad_requests(setup):
    config, params, prompts = setup
    sampling = SamplingParams(temperature=0.0, max_new_tokens=6, eos_ids=(EOS,), pad_id=PAD)
    engine = Engine(Sampler(config, prompt_bucket=8), slots=2, chunk=2)
    seen = []
    done = list(engine.run(params, prompts, [Request(i, 0) for i in range(5)], sampling, on_chunk=seen.append))
    assert len(done) == 5 and seen[-1]["requests_done"] == 5
    assert seen[-1]["tokens"] == sum(len(c.token_ids) for c in done)
    with pytest.raises(ValueError, match="names prompt 9"):
        list(engine.run(params, prompts, [Request(9, 0)], sampling))
    with pytest.raises(ValueError, match="slots must be >= 1"):
        Engine(Sampler(config), slots=0)


@pytest.mark.slow
def test_evaluate_with_slots_resumes_and_does_not_depend_on_slots(tmp_path):
    """`python -m openrs_jax.evaluate --slots N`: samples saved as they finish, a rerun generates
    nothing, raising K adds samples, and the samples do not depend on the slot count."""
    import json

    from openrs_jax.evaluate import main
    from tests.conftest import make_hf_model, shared_data
    from tests.test_evaluate_runner import BYTE_VOCAB, make_byte_tokenizer

    model = make_byte_tokenizer(make_hf_model(tmp_path / "model", vocab_size=BYTE_VOCAB, max_position_embeddings=4096))
    data = str(shared_data("benchmarks"))

    def evaluate(out, slots, k):
        argv = ["--model", str(model), "--tasks", "aime24", "--data_dir", data, "--limit", "3", "--max_new_tokens",
                "8", "--dtype", "float32", "--temperature", "1.0", "--seed", "3", "--out", str(out), "--no_progress",
                "--slots", str(slots), "--num_samples", str(k)]
        assert main(argv) == 0
        lines = (out / "details_aime24.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    first = evaluate(tmp_path / "a", 2, 1)
    assert [(d["index"], d["sample"]) for d in first] == [(0, 0), (1, 0), (2, 0)]
    assert evaluate(tmp_path / "a", 2, 1) == first  # nothing left to generate
    raised = evaluate(tmp_path / "a", 2, 3)  # K 1 -> 3: only the new samples are drawn
    assert [(d["index"], d["sample"]) for d in raised] == [(i, s) for i in range(3) for s in range(3)]
    assert [d for d in raised if d["sample"] == 0] == first
    # All K = 3 at once with another slot count: the same samples as the resumed run.
    assert evaluate(tmp_path / "b", 5, 3) == raised
    assert len({d["completion"] for d in raised}) > 3  # sampled, not one repeated completion


@pytest.mark.slow
def test_curate_difficulty_with_slots_resumes_to_the_same_rates(tmp_path):
    """`curate difficulty --slots N`: a problem's rate is appended once all its samples are done;
    an interrupted run, resumed, ends with the rates of an uninterrupted one."""
    import json

    from openrs_jax import curate
    from openrs_jax.curation.difficulty import PASS_RATES_FILE, read_pass_rates
    from openrs_jax.recipe.data import load_rows
    from openrs_jax.recipe.toy import resolve

    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in load_rows(resolve("builtin:sums"))[:5]))
    sample = ["--model", "builtin:tiny", "--num_samples", "3", "--max_new_tokens", "6", "--temperature", "1.0",
              "--system_prompt", "none", "--reward_workers", "0", "--band", "[0,1]", "--no_progress"]

    def run(out, slots):
        stats = curate.main(["difficulty", "--input", str(data), "--output_dir", str(out), *sample, "--slots", str(slots)])
        return stats, read_pass_rates(out / PASS_RATES_FILE)

    stats, whole = run(tmp_path / "a", 4)
    assert stats["pass_rates"]["sampled"] == 5 and sorted(r["index"] for r in whole.values()) == list(range(5))
    assert all(r["num_samples"] == 3 and r["pass_rate"] == r["num_correct"] / 3 for r in whole.values())
    lines = (tmp_path / "a" / PASS_RATES_FILE).read_text().splitlines()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / PASS_RATES_FILE).write_text(lines[0] + "\n" + lines[1][:10])  # interrupted, torn line
    stats, resumed = run(tmp_path / "b", 2)
    assert stats["pass_rates"]["sampled"] == 4 and stats["pass_rates"]["resumed"] == 1
    assert resumed == whole


def test_compile_ahead_of_time_from_abstract_params(setup):
    """`Engine.compile` (memory planning for GPU targets) lowers both programs from shapes alone."""
    import jax

    config, params, _ = setup
    engine = Engine(Sampler(config, prompt_bucket=8), slots=3)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=10, eos_ids=(EOS,), pad_id=PAD)
    programs = engine.compile(abstract, 3, 11, sampling)
    assert set(programs) == {"prepare", "admit", "decode"} and engine.num_compilations == 2
    cache_bytes = 2 * config.num_hidden_layers * 3 * config.num_key_value_heads * (16 + 9) * config.head_dim * 4
    assert programs["decode"].memory_analysis().argument_size_in_bytes > cache_bytes


def test_stream_path_saves_each_sample_and_applies_the_cap(tmp_path, bos_tokenizer_dir):
    """The runner's queue path: every sample is on disk before the next one is asked for, and
    the vLLM-style cap (prompt + completion <= max_model_length + 1) applies as in batches."""
    from openrs_jax.evaluation.runner import EvalSettings, Generation, TaskRun, generate_task
    from openrs_jax.evaluation.tasks import Problem, get_task
    from openrs_jax.recipe.prompts import eval_user_prompt, render_prompt
    from openrs_jax.core.tokenizer import load_tokenizer

    tok = load_tokenizer(bos_tokenizer_dir)
    problems = [Problem(index=i, problem="1+" * 3 * i + "1=", gold=str(i + 1)) for i in range(3)]
    path = tmp_path / "details.jsonl"
    run = TaskRun(get_task("aime24"), problems, "paper", path=path)
    asked = []

    def stream(prompts, requests, seed, on_progress):
        asked.append((sorted(prompts), list(requests), seed))
        for n, (index, sample) in enumerate(requests):
            assert (path.read_text().count("\n") if path.exists() else 0) == n  # earlier ones are saved
            on_progress({"requests_done": n, "tokens": 40 * n, "slots_live": 1})
            yield index, sample, Generation([7] * 40, truncated=True)

    ids = {p.index: len(tok.encode(render_prompt(tok, eval_user_prompt(p.problem)), add_special_tokens=False))
           for p in problems}
    longest = max(ids.values()) + 20  # the longest prompt may add 21 tokens, the others more
    settings = EvalSettings(num_samples=2, max_new_tokens=40, max_model_length=longest)
    generate_task(run, stream, tok, settings, progress=False, stream=True)
    (prompts, requests, seed), = asked
    assert prompts == [0, 1, 2] and sorted(requests) == [(i, s) for i in range(3) for s in range(2)]
    assert [r[0] for r in requests] == [2, 2, 1, 1, 0, 0]  # longest prompt first, its samples together
    for (index, _), rec in run.records.items():
        assert rec["length"] == min(40, longest + 1 - ids[index])
    assert len({rec["length"] for rec in run.records.values()}) > 1
    # A rerun asks for nothing; the seed is the task's (stable across runs and batches).
    run2 = TaskRun(get_task("aime24"), problems, "paper", path=path)
    run2.load(False)
    generate_task(run2, stream, tok, settings, progress=False, stream=True)
    assert len(asked) == 1 and len(run2.records) == 6
