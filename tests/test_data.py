"""Training data: loading, column checks, prompt rendering and the resumable order."""

from __future__ import annotations

import json

import pytest

from openrs_jax.recipe import toy
from openrs_jax.recipe.data import PromptOrder, build_dataset, load_rows
from openrs_jax.core.tokenizer import load_tokenizer
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return load_tokenizer(toy.resolve("builtin:tiny"))


def test_builtin_sums_build_without_double_bos(tiny_tokenizer):
    ds = build_dataset(load_rows(toy.resolve("builtin:sums")), tiny_tokenizer, "", 16)
    assert len(ds) == 25 and ds.dropped_too_long == 0
    first = ds.examples[0]
    assert first.prompt_ids[0] == tiny_tokenizer.bos_id and first.prompt_ids[1] != tiny_tokenizer.bos_id
    assert tiny_tokenizer.decode(list(first.prompt_ids), skip_special_tokens=False) == "<bos><User>0+0=<Assistant><think>\n"
    assert first.gold == "$\\boxed{0}$"  # answer-only rows get a parseable gold


def test_real_training_rows_with_the_real_tokenizer():
    tok = load_tokenizer(shared_data("tokenizer", "deepseek-r1-distill-qwen"))
    rows = load_rows(str(shared_data("train", "deepscaler_sample.jsonl")))[:200]
    ds = build_dataset(rows, tok, "Solve it.", max_prompt_length=80)
    assert len(rows) == 200 and ds.dropped_too_long > 0 and len(ds) + ds.dropped_too_long == 200
    assert all(len(e.prompt_ids) <= 80 for e in ds.examples)
    assert ds.examples[0].prompt_ids[:1] == (151646,) and ds.examples[0].prompt_ids[1] != 151646


def test_local_formats(tmp_path, tiny_tokenizer):
    rows = [{"problem": "1+2=", "solution": "$\\boxed{3}$"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.jsonl").write_text(json.dumps(rows[0]) + "\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for name in ("a.json", "b.jsonl", "folder", "c.parquet"):
        assert load_rows(str(tmp_path / name)) == rows


def test_missing_columns_are_named(tmp_path, tiny_tokenizer):
    (tmp_path / "d.jsonl").write_text(json.dumps({"question": "1+1", "label": "2"}) + "\n")
    with pytest.raises(ValueError, match="lacks the column\\(s\\) problem and solution or answer.*has: label, question"):
        build_dataset(load_rows(str(tmp_path / "d.jsonl")), tiny_tokenizer, "", 16)


def test_missing_and_empty_datasets(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_rows(str(tmp_path / "e.jsonl"))
    (tmp_path / "l.jsonl").write_text('{"problem": "p", "answer": "1"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="row 1 is list, not a JSON object"):
        load_rows(str(tmp_path / "l.jsonl"))


def test_every_prompt_too_long(tiny_tokenizer):
    with pytest.raises(ValueError, match="every prompt .* longer than max_prompt_length=4"):
        build_dataset(load_rows(toy.resolve("builtin:sums")), tiny_tokenizer, "", 4)


def test_order_is_a_seeded_permutation_per_epoch_and_resumes():
    order = PromptOrder(10, seed=3)
    first = order.next_indices(6) + order.next_indices(6)
    assert sorted(first[:10]) == list(range(10))  # one epoch = a permutation
    assert order.state() == {"epoch": 1, "offset": 2}
    resumed = PromptOrder(10, seed=3)
    resumed.restore(order.state())
    assert resumed.next_indices(5) == order.next_indices(5)
    assert PromptOrder(10, seed=3).next_indices(12) == first
    assert PromptOrder(10, seed=4).next_indices(10) != first[:10]
