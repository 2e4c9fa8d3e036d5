"""The offline demo (configs/tiny.py): its shipped assets and the reward that teaches it to stop."""

from __future__ import annotations

import pytest

from openrs_jax.recipe import toy
from openrs_jax.recipe.config import load_config, validate
from openrs_jax.recipe.rewards.registry import get_reward_function
from openrs_jax.core.tokenizer import load_tokenizer
from tests.conftest import REPO_ROOT

GOLD = "$\\boxed{3}$"  # as openrs_jax.recipe.rewards.gold makes it from the answer "3"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(toy.resolve("builtin:tiny"))


def _decoded(tok, tokens: list[str]) -> str:
    """The text the trainer scores: the completion's ids decoded with special tokens skipped."""
    return tok.decode([tok.backend.token_to_id(t) for t in tokens])


def test_accuracy_alone_pays_a_completion_that_never_stopped(tok):
    # The original failure: "\boxed{3}" followed by any token scores as well as "\boxed{3}<eos>",
    # so the demo's rows ran to max_completion_length (truncated_fraction 0.84 to 1.0).
    accuracy = get_reward_function("accuracy")
    truncated = _decoded(tok, ["\\boxed{3}", "7"])
    stopped = _decoded(tok, ["\\boxed{3}", "<eos>"])
    assert accuracy([truncated, stopped], [GOLD, GOLD]) == [1.0, 1.0]


def test_stop_reward_pays_only_the_right_answer_followed_by_eos(tok):
    completions = {
        ("\\boxed{3}", "<eos>"): 1.0,
        ("\\boxed{3}", "7"): 0.0,
        ("\\boxed{3}", "<pad>"): 0.0,  # <pad> and <bos> are not skipped: they cannot pass for EOS
        ("\\boxed{3}", "<bos>"): 0.0,
        ("\\boxed{3}", "\\boxed{3}"): 0.0,
        ("\\boxed{4}", "<eos>"): 0.0,  # stopping after a wrong answer earns nothing
        ("<eos>",): 0.0,
    }
    texts = [_decoded(tok, list(c)) for c in completions]
    assert toy.stop_reward(texts, [GOLD] * len(texts)) == list(completions.values())
    assert get_reward_function("openrs_jax.recipe.toy:stop_reward")(texts, [GOLD] * len(texts)) == list(completions.values())


def test_only_eos_is_skipped_when_decoding(tok):
    specials = {t: tok.decode([tok.backend.token_to_id(t)]) for t in ("<pad>", "<bos>", "<eos>")}
    assert specials == {"<pad>": "<pad>", "<bos>": "<bos>", "<eos>": ""}


def test_tiny_config_rewards_stopping():
    config = load_config(REPO_ROOT / "configs" / "tiny.py")
    validate(config)
    assert "openrs_jax.recipe.toy:stop_reward" in config.rewards.funcs
    assert config.rollout.max_completion_length == 2  # the answer token, then EOS


def test_shipped_assets_are_what_write_assets_writes(tmp_path):
    toy.write_assets(tmp_path)
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        shipped = toy.ASSETS / path.relative_to(tmp_path)
        assert path.read_text() == shipped.read_text(), f"{shipped} is stale: run python -m openrs_jax.recipe.toy"
