"""Exported weights get the mode the umask gives new files (safetensors alone writes 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from openrs_jax.core.model import init_model, params_of, tiny_config, write_hf_directory


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["umask022", "umask077", "umask002"])
@pytest.mark.parametrize("max_shard_bytes", [2**40, 200_000], ids=["one-file", "shards"])
def test_safetensors_files_follow_the_umask(tmp_path, umask, mode, max_shard_bytes):
    config = tiny_config(vocab_size=128)
    params = params_of(init_model(config, seed=0))
    old = os.umask(umask)
    try:
        out = write_hf_directory(tmp_path / "hf", params, config, dtype="float32", max_shard_bytes=max_shard_bytes)
    finally:
        os.umask(old)
    weights = sorted(out.glob("*.safetensors"))
    assert len(weights) == 1 if max_shard_bytes == 2**40 else len(weights) > 1
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in weights} == {p.name: oct(mode) for p in weights}
    # The same mode as the JSON files written beside them.
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == mode
