"""The difficulty filter: pass rates from sampled completions, bands, resuming and reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openrs_jax import curate
from openrs_jax.curation.difficulty import PASS_RATES_FILE, Band, Problem, read_pass_rates, sample_pass_rates
from openrs_jax.evaluation.draw import Generation
from openrs_jax.recipe.data import load_rows
from openrs_jax.recipe.rewards import get_reward_function
from openrs_jax.recipe.toy import resolve


def test_band_parsing():
    band = Band.parse("[0,1)")
    assert band.contains(0.0) and band.contains(0.875) and not band.contains(1.0)
    band = Band.parse(" ( 0 , 1 ) ")
    assert not band.contains(0.0) and band.contains(0.5) and not band.contains(1.0)
    assert Band.parse("[0.25,0.75]").contains(0.75) and str(Band.parse("(0.2,1]")) == "(0.2,1]"
    for bad in ("0,1", "[1,0]", "(0.5,0.5)", "[0,2]", "[a,1]"):
        with pytest.raises(ValueError):
            Band.parse(bad)


def test_pass_rates_are_fractions_of_correct_samples(tmp_path):
    # Hand-made completions scored by the real accuracy reward: 3 of 4 and 0 of 4 correct.
    completions = {
        "1+2=": ["\\boxed{3}", "\\boxed{3}", "\\boxed{4}", "so $\\boxed{3}$"],
        "2+2=": ["\\boxed{5}", "no answer", "\\boxed{}", "\\boxed{22}"],
    }
    problems = [Problem(7, "k1", "1+2=", "$\\boxed{3}$"), Problem(9, "k2", "2+2=", "$\\boxed{4}$")]
    seen = {}

    texts = [c for p in problems for c in completions[p.problem]]

    def generate(prompts, num_samples, seed):  # completion i is the token [i]
        seen.update(prompts=prompts, num_samples=num_samples, seed=seed)
        return [Generation([i], truncated=False) for i in range(len(texts))]

    accuracy = get_reward_function("accuracy")
    records = sample_pass_rates(problems, {7: [1, 2], 9: [3]}, generate, lambda ids: texts[ids[0]],
                                lambda t, g, k: accuracy(t, g), stream=False, num_samples=4, batch_size=2, seed=5,
                                append_to=tmp_path / "rates.jsonl", show_progress=False)
    assert seen == {"prompts": [[1, 2], [3]], "num_samples": 4, "seed": 5 * 1_000_003 + 7}
    assert read_pass_rates(tmp_path / "rates.jsonl") == {r["key"]: r for r in records}
    with (tmp_path / "rates.jsonl").open("a") as f:  # foreign lines: no pass rate, or none in [0, 1]
        f.write('{"key": "k3"}\n{"key": "k4", "pass_rate": 2}\n{"key": "k5", "pass_rate": "x"}\n')
    assert read_pass_rates(tmp_path / "rates.jsonl") == {r["key"]: r for r in records}
    assert [(r["index"], r["key"], r["num_correct"], r["pass_rate"]) for r in records] == [
        (7, "k1", 3, 0.75), (9, "k2", 0, 0.0)]


def run(*argv: str) -> dict:
    return curate.main(["difficulty", *argv, "--no_progress"])


@pytest.mark.slow
def test_difficulty_end_to_end_with_a_tiny_random_model(tmp_path: Path):
    sums = load_rows(resolve("builtin:sums"))[:4]
    data = tmp_path / "sums.jsonl"
    unparsable = {"problem": "9+9=", "answer": "}{"}  # no pass rate: dropped, never sampled
    data.write_text("".join(json.dumps(r) + "\n" for r in [*sums, unparsable]))
    out = tmp_path / "out"
    sample = ["--model", "builtin:tiny", "--num_samples", "4", "--batch_size", "2", "--max_new_tokens", "4",
              "--temperature", "1.0", "--system_prompt", "none", "--reward_workers", "0"]

    stats = run("--input", str(data), "--output_dir", str(out), *sample, "--band", "[0,1]")
    assert stats["pass_rates"]["sampled"] == 4 and (stats["rows_in"], stats["rows_out"]) == (5, 4)
    assert stats["dropped"]["unparsable_gold"] == 1
    first = read_pass_rates(out / PASS_RATES_FILE)
    assert sorted(r["index"] for r in first.values()) == [0, 1, 2, 3]
    for r in first.values():
        assert 0.0 <= r["pass_rate"] <= 1.0 and r["num_samples"] == 4
        assert r["pass_rate"] == r["num_correct"] / 4
    kept = load_rows(str(out))
    assert [r["problem"] for r in kept] == [r["problem"] for r in sums]
    assert [r["pass_rate"] for r in kept] == [r["pass_rate"] for r in sorted(first.values(), key=lambda r: r["index"])]

    # An interrupted run: two records and a torn line. The rerun samples only the other two.
    lines = (out / PASS_RATES_FILE).read_text().splitlines()
    (out / PASS_RATES_FILE).write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:15])
    stats = run("--input", str(data), "--output_dir", str(out), *sample, "--band", "[0,1]")
    assert stats["pass_rates"]["sampled"] == 2 and stats["pass_rates"]["resumed"] == 2
    again = read_pass_rates(out / PASS_RATES_FILE)
    assert set(again) == set(first)
    for line in lines[:2]:
        key = json.loads(line)["key"]
        assert again[key] == first[key]

    # Another band from the saved rates: no model, no sampling.
    rates = {r["index"]: r["pass_rate"] for r in again.values()}
    stats = run("--input", str(data), "--output_dir", str(tmp_path / "band"), "--pass_rates",
                str(out / PASS_RATES_FILE), "--band", "(0,1]")
    assert stats["pass_rates"] == {**stats["pass_rates"], "sampled": 0, "reused": 4}
    kept = [json.loads(line) for line in (tmp_path / "band" / "train.jsonl").read_text().splitlines()]
    assert [r["problem"] for r in kept] == [sums[i]["problem"] for i in range(4) if rates[i] > 0]
    assert stats["rows_out"] == len(kept)

    # Rates drawn with other settings are not mixed into the same folder.
    (out / PASS_RATES_FILE).write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(SystemExit):
        run("--input", str(data), "--output_dir", str(out), *sample, "--temperature", "0.5")


def test_missing_pass_rates_need_a_model(tmp_path: Path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"problem": "1+1=", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="1 of 1 problems have no pass rate"):
        from openrs_jax.curation.difficulty import run as run_step

        args = curate.build_parser().parse_args(["difficulty", "--input", str(data), "--output_dir", str(tmp_path / "o")])
        run_step(args)
