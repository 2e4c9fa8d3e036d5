"""Hugging Face <-> Flax conversion: bit-exact round trip, loadable export, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from conversion import flax_to_hf, hf_to_flax
from openrs_jax.core.model import from_pretrained
from tests.conftest import REPO_ROOT, make_hf_model


def read_all_tensors(d):
    from openrs_jax.core.model.io import read_hf_tensors

    return read_hf_tensors(d)


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_is_bit_exact_in_float32(tmp_path, tied):
    src = make_hf_model(tmp_path / "src", tie_word_embeddings=tied)
    hf_to_flax.main(["--hf_dir", str(src), "--out", str(tmp_path / "flax")])
    # A tiny shard limit forces the sharded safetensors layout with an index.
    flax_to_hf.convert(tmp_path / "flax", tmp_path / "back", dtype="float32", max_shard_bytes=64 * 1024)
    assert (tmp_path / "back" / "model.safetensors.index.json").is_file()
    before, after = read_all_tensors(src), read_all_tensors(tmp_path / "back")
    if tied:  # transformers may or may not write the tied head; we never do
        before.pop("lm_head.weight", None)
        assert "lm_head.weight" not in after
    assert sorted(before) == sorted(after)
    for name in before:
        assert before[name].dtype == after[name].dtype == np.float32
        assert np.array_equal(before[name], after[name]), name


def test_exported_directory_loads_in_transformers_with_identical_logits(tmp_path):
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    src = make_hf_model(tmp_path / "src")
    hf_to_flax.convert(src, tmp_path / "flax")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text(json.dumps(_tiny_tokenizer_json()))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>", "pad_token": "<pad>"}))
    flax_to_hf.main(["--ckpt", str(tmp_path / "flax"), "--out", str(tmp_path / "out"), "--dtype", "float32",
                     "--tokenizer", str(tok_dir)])
    assert (tmp_path / "out" / "generation_config.json").is_file()
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    ids = torch.tensor(np.random.default_rng(0).integers(3, 256, (2, 9)))
    with torch.no_grad():
        a = Qwen2ForCausalLM.from_pretrained(src).eval()(ids).logits.numpy()
        b = Qwen2ForCausalLM.from_pretrained(tmp_path / "out").eval()(ids).logits.numpy()
    assert np.array_equal(a, b)
    AutoTokenizer.from_pretrained(tmp_path / "out")  # the copied tokenizer loads
    ours = np.asarray(from_pretrained(tmp_path / "flax")(jnp.asarray(ids.numpy(), jnp.int32)))
    assert np.abs(ours - a).max() / np.abs(a).max() < 1e-4


def test_bfloat16_export_is_the_default(tmp_path):
    src = make_hf_model(tmp_path / "src")
    flax_to_hf.convert(src, tmp_path / "out")
    tensors = read_all_tensors(tmp_path / "out")
    assert all(str(t.dtype) == "bfloat16" for t in tensors.values())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def _tiny_tokenizer_json() -> dict:
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{chr(97 + i): 3 + i for i in range(26)}}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in list(vocab.items())[:3]],
        "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<pad>"},
    }


# --- bad input: one clear line, exit status 2 ---------------------------------------------------

def run_main(main, argv, capsys) -> str:
    capsys.readouterr()  # drop what building the fixture printed
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_missing_directory(tmp_path, capsys):
    err = run_main(hf_to_flax.main, ["--hf_dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert "does not exist" in err


def test_file_instead_of_directory(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    err = run_main(hf_to_flax.main, ["--hf_dir", str(f), "--out", str(tmp_path / "o")], capsys)
    assert "is a file" in err


def test_directory_without_weights(tmp_path, capsys):
    src = make_hf_model(tmp_path / "src")
    (src / "model.safetensors").unlink()
    err = run_main(hf_to_flax.main, ["--hf_dir", str(src), "--out", str(tmp_path / "o")], capsys)
    assert "no model.safetensors" in err


def test_other_architecture(tmp_path, capsys):
    src = make_hf_model(tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (src / "config.json").write_text(json.dumps(cfg))
    err = run_main(hf_to_flax.main, ["--hf_dir", str(src), "--out", str(tmp_path / "o")], capsys)
    assert "model_type='mistral'" in err


def test_tensor_of_wrong_shape_names_it_and_both_shapes(tmp_path, capsys):
    src = make_hf_model(tmp_path / "src")
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((100, 64), np.float32)
    save_file(tensors, str(src / "model.safetensors"))
    err = run_main(hf_to_flax.main, ["--hf_dir", str(src), "--out", str(tmp_path / "o")], capsys)
    assert "model.layers.1.mlp.up_proj.weight" in err and "(100, 64)" in err and "(128, 64)" in err


def test_missing_and_unexpected_tensors_are_listed(tmp_path, capsys):
    src = make_hf_model(tmp_path / "src")
    tensors = load_file(str(src / "model.safetensors"))
    del tensors["model.layers.0.self_attn.k_proj.bias"]
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(src / "model.safetensors"))
    err = run_main(hf_to_flax.main, ["--hf_dir", str(src), "--out", str(tmp_path / "o")], capsys)
    assert "missing tensors: model.layers.0.self_attn.k_proj.bias" in err
    assert "unexpected tensors: model.layers.0.extra.weight" in err


def test_checkpoint_of_another_shape_is_refused(tmp_path, capsys):
    src = make_hf_model(tmp_path / "src")
    hf_to_flax.convert(src, tmp_path / "flax")
    cfg = json.loads((tmp_path / "flax" / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (tmp_path / "flax" / "config.json").write_text(json.dumps(cfg))
    err = run_main(flax_to_hf.main, ["--ckpt", str(tmp_path / "flax"), "--out", str(tmp_path / "o")], capsys)
    assert "gate_proj.weight" in err and "(256, 64)" in err


def test_export_from_a_non_checkpoint_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = run_main(flax_to_hf.main, ["--ckpt", str(tmp_path / "empty"), "--out", str(tmp_path / "o")], capsys)
    assert "is not a model: give a Hugging Face model directory" in err


def test_cli_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "conversion.hf_to_flax", "--hf_dir", str(tmp_path / "missing"), "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr
