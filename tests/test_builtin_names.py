"""One naming scheme for what ships with the package, taken by every command.

`builtin:tiny` (the demo model and its tokenizer) and `builtin:sums` (the demo dataset) work in
train, generate, evaluate, curate and the bench; `preset:NAME` shapes are the bench's alone, and
every other command says so, naming the flag the user typed.
"""

from __future__ import annotations

import json

import pytest

from openrs_jax.recipe import toy
from openrs_jax.recipe.config import load_config, validate
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny.py"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.path=preset:tiny", r"--config.model.path=preset:tiny: preset: names are model shapes for "
                                   r"`python -m openrs_jax.bench` only .* builtin:tiny"),
        ("model.tokenizer_path=preset:1.5b", r"--config.model.tokenizer_path=preset:1.5b: preset: names"),
        ("model.path=builtin:sums", r"--config.model.path=builtin:sums: a built-in dataset, not a model; "
                                    r"built-in models: builtin:tiny"),
        ("data.dataset=builtin:tiny", r"--config.data.dataset=builtin:tiny: a built-in model, not a dataset; "
                                      r"built-in datasets: builtin:sums"),
        ("data.dataset=builtin:primes", r"--config.data.dataset=builtin:primes: not a built-in; built-in datasets"),
    ],
)
def test_train_refuses_names_it_cannot_take_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):  # model names when loading, the dataset's in validate
        validate(load_config(TINY, [override]))


def test_train_takes_the_builtins():
    validate(load_config(TINY))  # model_path builtin:tiny, dataset_name builtin:sums


def test_resolve_refuses_unknown_builtins_with_a_user_error():
    assert toy.resolve("builtin:tiny").endswith("tiny") and toy.resolve("/a/path") == "/a/path"
    with pytest.raises(ValueError, match="unknown built-in 'builtin:huge'; valid: builtin:tiny, builtin:sums"):
        toy.resolve("builtin:huge")


def test_generate_takes_builtin_tiny(tmp_path):
    from openrs_jax.generate import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+2="}) + "\n")
    out = tmp_path / "out.jsonl"
    records = main(["--model", "builtin:tiny", "--prompts", str(prompts), "--out", str(out),
                    "--max_new_tokens", "2", "--num_samples", "2"])
    assert len(records) == 2 and all(len(r["completion_ids"]) <= 2 and "text" in r for r in records)
    assert [json.loads(line) for line in out.read_text().splitlines()] == records


@pytest.mark.parametrize("module", ["generate", "evaluate"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "preset:1.5b"], "error: --model=preset:1.5b: preset: names are model shapes for "
                                     "`python -m openrs_jax.bench` only"),
        (["--model", "builtin:sums"], "error: --model=builtin:sums: a built-in dataset, not a model"),
        (["--model", "builtin:tiny", "--tokenizer", "preset:20m"], "error: --tokenizer=preset:20m: preset:"),
    ],
)
def test_generate_and_evaluate_name_the_flag(module, flags, message, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"openrs_jax.{module}").main
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+2="}) + "\n")
    extra = (["--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")] if module == "generate"
             else ["--tasks", "aime24", "--out", str(tmp_path / "eval")])
    with pytest.raises(SystemExit) as e:
        main(flags + extra)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1, err


def test_bench_may_train_a_preset_shape():
    """`bench step` builds the real trainer at a preset's shape (random weights), setting model.path
    after loading the run config: validate lets it through."""
    config = load_config(TINY)
    config.model.path = "preset:20m"
    validate(config)
