"""`python -m openrs_jax.generate`: prompts file in, completions file out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_hf_model
from openrs_jax.generate import encode_prompt, main, model_defaults

EOS, PAD = 2, 0
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<system>", "<user>", "<assistant>"]
WORDS = [f"w{i}" for i in range(256 - len(SPECIAL))]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def save_word_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over the tiny model's 256 ids, with a simple chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tok.chat_template = (
        "{{ bos_token }} {% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}"
    )
    tok.save_pretrained(directory)


def hf_greedy_completion(model_dir: Path, prompt: list[int], max_new: int) -> list[int]:
    """transformers greedy completion of one prompt, cut after the first EOS."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new,
                          eos_token_id=EOS, pad_token_id=PAD)
    ids = out[0, len(prompt):].tolist()
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


def test_prompt_ids_greedy_matches_transformers(hf_model_dir, tmp_path, capsys):
    prompts = [[5, 9, 33, 7], [100], [17, 18, 19, 20, 21, 22, 23, 24, 25, 26]]
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt_ids": p} for p in prompts])
    out = tmp_path / "out" / "c.jsonl"
    records = main(["--model", str(hf_model_dir), "--prompts", str(src), "--out", str(out), "--num_samples", "2",
                    "--max_new_tokens", "7", "--temperature", "0", "--prompt_bucket", "8"])
    assert [json.loads(line) for line in out.read_text().splitlines()] == records
    assert [(r["index"], r["sample"]) for r in records] == [(i, g) for i in range(3) for g in range(2)]
    for r in records:
        assert set(r) == {"index", "sample", "completion_ids", "finished"}  # no tokenizer: no text
        expected = hf_greedy_completion(hf_model_dir, prompts[r["index"]], 7)
        assert r["completion_ids"] == expected
        assert r["finished"] == (expected[-1] == EOS)
    assert "wrote 6 completions" in capsys.readouterr().err

    # --eos_id overrides the model's EOS: stopping at prompt 0's first greedy token.
    first = records[0]["completion_ids"][0]
    again = main(["--model", str(hf_model_dir), "--prompts", str(src), "--out", str(out), "--max_new_tokens", "7",
                  "--temperature", "0", "--eos_id", str(first), "--prompt_bucket", "8"])
    assert again[0]["completion_ids"] == [first] and again[0]["finished"]


def test_text_prompts_are_rendered_with_the_chat_template(tmp_path):
    model_dir = make_hf_model(tmp_path / "m")
    save_word_tokenizer(model_dir)  # found there without --tokenizer
    from openrs_jax.core.tokenizer import load_tokenizer

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    ids = encode_prompt({"prompt": "w5 w7"}, load_tokenizer(model_dir), "w1", "line 1")
    assert ids == [vocab[t] for t in ["<s>", "<system>", "w1", "<user>", "w5", "w7", "<assistant>"]]

    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w3 w4 w5"}, {"prompt_ids": [9, 10]}])
    records = main(["--model", str(model_dir), "--prompts", str(src), "--out", str(tmp_path / "c.jsonl"),
                    "--num_samples", "3", "--max_new_tokens", "5", "--temperature", "1.0", "--seed", "3",
                    "--system", "w1"])
    assert len(records) == 6
    names = SPECIAL + WORDS
    for r in records:
        words = [names[i] for i in r["completion_ids"] if names[i] not in SPECIAL]
        assert r["text"].split() == words
        assert len(r["completion_ids"]) == 5 or r["completion_ids"][-1] == EOS


def test_model_defaults_prefer_generation_config(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"eos_token_id": 7, "pad_token_id": 3}))
    assert model_defaults(d) == {"eos_ids": [7], "pad_id": 3, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 6], "temperature": 0.6, "top_p": 0.95}))
    assert model_defaults(d) == {"eos_ids": [5, 6], "pad_id": 3, "temperature": 0.6, "top_p": 0.95, "top_k": 0}
    (d / "config.json").write_text(json.dumps({}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 5, "do_sample": False}))
    assert model_defaults(d)["pad_id"] == 5 and model_defaults(d)["temperature"] == 0.0


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ('{"prompt_ids": [1, 2]}\nnot json\n', "p.jsonl:2 is not valid JSON"),
    ('{"text": "hi"}\n', "prompt_ids"),
    ('{"prompt": "hello"}\n', "needs a tokenizer"),
    ('{"prompt_ids": [1, 99999999]}\n', "token id 99999999 is not in the model's vocabulary"),
    ('{"prompt_ids": [-1]}\n', "token id -1 is not in the model's vocabulary"),
])
def test_bad_inputs_exit_with_one_line_errors(hf_model_dir, tmp_path, capsys, content, message):
    src = tmp_path / "p.jsonl"
    if content is not None:
        src.write_text(content)
    with pytest.raises(SystemExit) as e:
        main(["--model", str(hf_model_dir), "--prompts", str(src), "--out", str(tmp_path / "c.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not np.any([p.name == "c.jsonl" for p in tmp_path.iterdir()])
