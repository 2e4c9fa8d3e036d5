"""End to end: `python -m openrs_jax.evaluate` with a tiny random model, 3 problems of each paper task.

The model is conftest's random Qwen2 with a 263-token vocabulary and a byte-level tokenizer
(tests.test_evaluate_runner.make_byte_tokenizer) saved beside it: the real tokenizer's 151k ids would
not fit the tiny vocabulary, and byte tokens let any benchmark text become a prompt. The model
writes noise, so the checks are about the outputs' form and about resuming, not accuracy.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_hf_model, shared_data
from tests.test_evaluate_runner import BYTE_VOCAB, make_byte_tokenizer

pytestmark = pytest.mark.slow  # about 50 s on 2 CPU cores: a dozen sampler compilations

TASKS = ["aime24", "amc23", "math500", "minerva", "olympiadbench"]
MAX_NEW = 6
DETAIL_KEYS = {"index", "sample", "prompt", "completion", "prediction", "gold", "correct", "length", "truncated"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = make_hf_model(tmp_path_factory.mktemp("e2e") / "model", vocab_size=BYTE_VOCAB, max_position_embeddings=4096)
    return make_byte_tokenizer(d)


def test_tiny_model_end_to_end_and_resume(model_dir, tmp_path, monkeypatch, capsys):
    from openrs_jax.evaluate import main
    from openrs_jax.core.sampling import Sampler

    calls = []
    generate = Sampler.generate

    def counting_generate(self, params, prompts, num_samples, *args, **kwargs):
        calls.append((len(prompts), num_samples))
        return generate(self, params, prompts, num_samples, *args, **kwargs)

    monkeypatch.setattr(Sampler, "generate", counting_generate)
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--tasks", ",".join(TASKS), "--data_dir", str(shared_data("benchmarks")),
            "--limit", "3", "--max_new_tokens", str(MAX_NEW), "--dtype", "float32", "--seed", "3",
            "--out", str(out), "--no_progress", "--slots", "0"]  # static batches (the engine: test_engine)
    assert main(argv) == 0
    assert calls == [(3, 1)] * len(TASKS)  # one batch per task
    table = capsys.readouterr().out
    assert all(t in table for t in TASKS) and "average" in table

    results = json.loads((out / "results.json").read_text())
    assert list(results) == TASKS
    for task in TASKS:
        r = results[task]
        assert (r["n"], r["k"], r["samples"], r["missing"]) == (3, 1, 3, 0)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["stderr"] >= 0.0
        assert (r["max_new_tokens"], r["temperature"], r["top_p"], r["seed"]) == (MAX_NEW, 0.6, 0.95, 3)
        details = [json.loads(line) for line in (out / f"details_{task}.jsonl").read_text().splitlines()]
        assert [(d["index"], d["sample"]) for d in details] == [(0, 0), (1, 0), (2, 0)]
        for d in details:
            assert set(d) == DETAIL_KEYS
            assert 1 <= d["length"] <= MAX_NEW and d["truncated"] == (d["length"] == MAX_NEW)
            assert isinstance(d["completion"], str) and isinstance(d["correct"], bool)
            assert d["prompt"].startswith("<bos><|User|>Solve the following math problem")
    first = {t: (out / f"details_{t}.jsonl").read_text() for t in TASKS}

    # A rerun into the same directory generates nothing and reports the same numbers.
    calls.clear()
    assert main(argv) == 0
    assert calls == []
    assert json.loads((out / "results.json").read_text()) == results
    assert {t: (out / f"details_{t}.jsonl").read_text() for t in TASKS} == first

    # Raising K draws only the new samples.
    assert main(argv[:2] + ["--tasks", "aime24"] + argv[4:] + ["--num_samples", "2"]) == 0
    assert calls == [(3, 1)]
    assert json.loads((out / "results.json").read_text())["aime24"]["k"] == 2
