"""Logit parity of our Flax Qwen2 with Hugging Face `Qwen2ForCausalLM` (torch, CPU, fp32)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from openrs_jax.core.model import KVCache, Qwen2Config, from_pretrained
from tests.conftest import make_hf_model, real_model_config

TOL = 1e-4


def hf_logits(hf_dir, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reference logits from transformers, with HF's own left-padding position ids."""
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions)
        )
    return out.logits.float().numpy()


def relative_error(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    sel = mask.astype(bool)
    return float(np.abs(ours[sel] - ref[sel]).max() / np.abs(ref[sel]).max())


def check_parity(hf_dir, vocab: int, batch: int = 2, length: int = 12, left_pad: tuple[int, ...] = ()) -> float:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for row, pad in enumerate(left_pad):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    ref = hf_logits(hf_dir, ids, mask)
    model = from_pretrained(hf_dir)
    ours = np.asarray(model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
    err = relative_error(ours, ref, mask)
    print(f"relative max logit error: {err:.2e}")
    assert err <= TOL
    return err


def test_tiny_config_matches_hf(tmp_path):
    check_parity(make_hf_model(tmp_path / "m"), vocab=256)


def test_single_kv_head_matches_hf(tmp_path):
    check_parity(make_hf_model(tmp_path / "m", num_key_value_heads=1), vocab=256)


def test_tied_embeddings_match_hf(tmp_path):
    d = make_hf_model(tmp_path / "m", tie_word_embeddings=True)
    check_parity(d, vocab=256)


def test_left_padded_batch_matches_hf(tmp_path):
    check_parity(make_hf_model(tmp_path / "m"), vocab=256, batch=3, left_pad=(0, 3, 7))


def test_left_padding_does_not_change_real_token_logits(hf_model_dir):
    model = from_pretrained(hf_model_dir)
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 256, (1, 6)), jnp.int32)
    alone = np.asarray(model(ids))
    padded_ids = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), ids], axis=1)
    mask = jnp.concatenate([jnp.zeros((1, 4), bool), jnp.ones((1, 6), bool)], axis=1)
    padded = np.asarray(model(padded_ids, mask))[:, 4:]
    np.testing.assert_allclose(padded, alone, rtol=0, atol=1e-5)


def test_real_config_with_two_layers_matches_hf(tmp_path):
    cfg = real_model_config(num_hidden_layers=2)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings")
    d = make_hf_model(tmp_path / "real2", **{k: cfg[k] for k in keys})
    check_parity(d, vocab=cfg["vocab_size"], batch=2, length=8, left_pad=(0, 2))


def test_cached_decoding_equals_full_forward(hf_model_dir):
    model = from_pretrained(hf_model_dir)
    ids = jnp.asarray(np.random.default_rng(2).integers(3, 256, (2, 10)), jnp.int32)
    mask = jnp.ones((2, 10), bool).at[1, :3].set(False)
    full = np.asarray(model(ids, mask))
    cache = KVCache.create(model.config, batch=2, max_len=16)
    logits, cache = model(ids[:, :6], mask[:, :6], cache=cache)
    steps = [np.asarray(logits)]
    for t in range(6, 10):
        logits, cache = model(ids[:, t : t + 1], mask[:, t : t + 1], cache=cache)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, 1)[np.asarray(mask)], full[np.asarray(mask)], atol=1e-5)


def test_remat_does_not_change_logits(hf_model_dir):
    ids = jnp.asarray(np.random.default_rng(3).integers(3, 256, (2, 8)), jnp.int32)
    plain = np.asarray(from_pretrained(hf_model_dir)(ids))
    remat = np.asarray(from_pretrained(hf_model_dir, remat="full")(ids))
    np.testing.assert_allclose(plain, remat, atol=1e-6)


def test_config_reads_rope_parameters_form():
    d = real_model_config()
    theta = d.pop("rope_theta")
    d["rope_parameters"] = {"rope_theta": theta, "rope_type": "default"}
    cfg = Qwen2Config.from_hf_dict(d)
    assert cfg.rope_theta == 10000.0 and cfg.head_dim == 128 and cfg.num_query_groups == 6
    assert abs(cfg.num_params() - 1.777e9) < 0.01e9


def test_config_of_another_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}))
    with pytest.raises(ValueError, match="model_type='llama'.*qwen2"):
        Qwen2Config.from_json(tmp_path)
