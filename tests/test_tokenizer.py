"""The tokenizer wrapper against transformers.AutoTokenizer on the real DeepSeek-R1-Distill tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import shared_data
from openrs_jax.core.tokenizer import load_tokenizer

TOKENIZER = ("tokenizer", "deepseek-r1-distill-qwen")
BOS, EOS, THINK, END_THINK = 151646, 151643, 151648, 151649

TEXTS = [
    "What is $\\frac{1}{2} + \\sqrt{3}$? Put your answer in \\boxed{}.",
    "Let $f(x) = x^2 - 4x + 4$.  Find all $x$ with $f(x) \\le 0$.\n\n  Indented line\twith tab\r\n",
    "Unicode: π ≈ 3.14159, ∑_{k=1}^n k², 数学问题, naïve café, emoji 🧮🎉, Ελληνικά",
    "<｜begin▁of▁sentence｜>sys<｜User｜>hi<｜Assistant｜><think>\nreason\n</think>\n\\boxed{42}<｜end▁of▁sentence｜>",
    "   leading spaces and trailing   ",
    "",
]


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer(shared_data(*TOKENIZER))


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(shared_data(*TOKENIZER)))


def test_special_ids(ours):
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (BOS, EOS, EOS)
    assert ours.vocab_size == 151665
    assert ours.has_chat_template


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(ours, hf, text):
    assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    assert ours.encode(text, add_special_tokens=True) == hf(text)["input_ids"]
    assert ours.encode_batch([text, text]) == [ours.encode(text)] * 2


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_transformers(ours, hf, text):
    ids = hf(text, add_special_tokens=True)["input_ids"] + [EOS]
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


def test_think_tokens_survive_skip_special_tokens(ours):
    ids = [BOS, THINK] + ours.encode("\nx\n") + [END_THINK, EOS]
    assert ours.decode(ids) == "<think>\nx\n</think>"


CONVERSATIONS = [
    [{"role": "system", "content": "You are a helper. Put the answer in \\boxed{{}} ."},
     {"role": "user", "content": "What is 1+1?"}],
    [{"role": "user", "content": "Solve $x^2=4$.  Two spaces, ünïcode."}],
    [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\n2"},
     {"role": "user", "content": "q2"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(ours, hf, messages, add_generation_prompt):
    expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_rendered_prompt_shape(ours):
    text = ours.apply_chat_template(CONVERSATIONS[0])
    assert text == ("<｜begin▁of▁sentence｜>You are a helper. Put the answer in \\boxed{{}} .<｜User｜>"
                    "What is 1+1?<｜Assistant｜><think>\n")


# --- errors and fallbacks (on small copies of the tiny tokenizer that ships with the package) ---

TINY = Path(__file__).resolve().parents[1] / "openrs_jax" / "assets" / "tiny"


def _tiny_copy(tmp_path: Path, **config_changes) -> Path:
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(TINY / "tokenizer.json", d / "tokenizer.json")
    config = json.loads((TINY / "tokenizer_config.json").read_text())
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return d


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_no_eos(tmp_path):
    with pytest.raises(ValueError, match="no eos_token"):
        load_tokenizer(_tiny_copy(tmp_path, eos_token=None))


def test_unknown_special_token(tmp_path):
    with pytest.raises(ValueError, match="not in its vocabulary"):
        load_tokenizer(_tiny_copy(tmp_path, bos_token="<nope>"))


def test_pad_falls_back_to_eos(tmp_path):
    tok = load_tokenizer(_tiny_copy(tmp_path, pad_token=None))
    assert tok.pad_id == tok.eos_id == 2


def test_no_chat_template(tmp_path):
    tok = load_tokenizer(_tiny_copy(tmp_path, chat_template=None))
    assert not tok.has_chat_template
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "1+1="}])


def test_chat_template_file_and_special_tokens_map(tmp_path):
    d = _tiny_copy(tmp_path, chat_template=None)
    (d / "chat_template.jinja").write_text("{{ bos_token }}[{{ messages[0]['content'] }}]{{ eos_token }}")
    # special_tokens_map.json overrides tokenizer_config.json, as in transformers.
    (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<pad>"}}))
    tok = load_tokenizer(d)
    assert tok.eos_id == 0
    assert tok.apply_chat_template([{"role": "user", "content": "1+2"}]) == "<bos>[1+2]<pad>"
