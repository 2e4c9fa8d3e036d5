"""Dynamic sampling (DAPO), the soft overlong reward, the reference refresh and W&B reporting,
against hand-built batches and numpy references."""

from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from openrs_jax.recipe.dynamic_sampling import Rollout, check_dynamic_sampling, fill_step, informative_groups
from openrs_jax.recipe.reference import check_ref_sync, mix_reference, sync_due
from openrs_jax.recipe.rewards import score_batch
from openrs_jax.recipe.rewards.batch import ScoreResult
from openrs_jax.recipe.rewards.overlong import soft_overlong_reward
from openrs_jax.recipe.run_log import RunLog, check_report_to, read_metrics
from openrs_jax.core.sampling import SampleOutput

G, PAD = 3, 0


def fake_rollout(seed: int, rewards: list[float], prompt_len: int) -> Rollout:
    """A scored batch of len(rewards) / G groups with recognisable ids (seed * 100 + row)."""
    rng = np.random.default_rng(seed)
    n, m = len(rewards), 4
    prompt_ids = np.full((n, prompt_len), PAD, np.int32)
    prompt_mask = np.zeros((n, prompt_len), bool)
    for i in range(n):
        k = 1 + (i // G) % prompt_len  # ragged prompts, left-padded
        prompt_ids[i, -k:] = seed * 100 + i
        prompt_mask[i, -k:] = True
    lengths = rng.integers(1, m + 1, n).astype(np.int32)
    completion_mask = np.arange(m)[None, :] < lengths[:, None]
    out = SampleOutput(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask,
        completion_ids=np.where(completion_mask, seed * 100 + np.arange(n)[:, None], PAD).astype(np.int32),
        completion_mask=completion_mask, lengths=lengths, truncated=lengths == m,
        logprobs=rng.normal(size=(n, m)).astype(np.float32), num_prompts=n // G, num_samples=G,
        timings={"total_s": 1.0},
    )
    scores = ScoreResult(rewards={"accuracy": list(rewards)}, total=[2.0 * r for r in rewards],
                         weights={"accuracy": 2.0}, errors=seed, failed_rows=[1] if seed == 1 else [])
    examples = [f"prompt-{seed}-{j}" for j in range(n // G)]
    return Rollout(examples, out, scores)


def test_informative_groups():
    assert informative_groups([1, 1, 1, 0, 1, 0, 0.5, 0.5, 0.5], 3).tolist() == [False, True, False]


def test_fill_step_refills_in_draw_order_and_keeps_rows_aligned():
    # Round 0: groups 0 and 2 equal, 1 informative. Round 1: 0 informative, 1 equal, 2 informative.
    first = fake_rollout(0, [1, 1, 1, 0, 1, 0, 0, 0, 0], prompt_len=2)
    extra = {1: fake_rollout(1, [1, 0, 0, 1, 1, 1, 0, 0, 1], prompt_len=5)}
    calls = []

    def draw_more(r):
        calls.append(r)
        return extra[r]

    picked, metrics = fill_step(first, draw_more, prompts_per_step=3, num_generations=G, max_rounds=4, pad_id=PAD)
    assert calls == [1]
    assert picked.examples == ["prompt-0-1", "prompt-1-0", "prompt-1-2"]
    rows = [(0, 3), (0, 4), (0, 5), (1, 0), (1, 1), (1, 2), (1, 6), (1, 7), (1, 8)]
    src = {0: first, 1: extra[1]}
    assert picked.scores.rewards["accuracy"] == [src[k].scores.rewards["accuracy"][i] for k, i in rows]
    assert picked.scores.total == [src[k].scores.total[i] for k, i in rows]
    for name in ("completion_ids", "completion_mask", "lengths", "truncated", "logprobs"):
        want = np.stack([getattr(src[k].out, name)[i] for k, i in rows])
        np.testing.assert_array_equal(getattr(picked.out, name), want, err_msg=name)
    # Prompts are left-padded to the widest round; the real tokens stay right-aligned.
    assert picked.out.prompt_ids.shape == (9, 5)
    for n, (k, i) in enumerate(rows):
        p = src[k].out
        assert picked.out.prompt_ids[n][picked.out.prompt_mask[n]].tolist() == p.prompt_ids[i][p.prompt_mask[i]].tolist()
        assert not picked.out.prompt_mask[n][: 5 - p.prompt_mask[i].sum()].any()
    assert picked.out.num_prompts == 3 and picked.scores.errors == 1
    assert picked.scores.failed_rows == [4]  # row 1 of round 1 is row 4 of the step
    assert metrics["dynamic_sampling/dropped_groups"] == 3 and metrics["dynamic_sampling/extra_rollouts"] == 1
    assert metrics["dynamic_sampling/filled_groups"] == 0 and metrics["dynamic_sampling/surplus_groups"] == 0
    everything = first.scores.total + extra[1].scores.total
    assert metrics["dynamic_sampling/all/reward"] == pytest.approx(np.mean(everything))
    assert metrics["dynamic_sampling/all/rewards/accuracy"] == pytest.approx(np.mean(everything) / 2)


def test_fill_step_stops_at_the_cap_and_fills_with_equal_groups():
    first = fake_rollout(0, [1, 1, 1, 0, 1, 0, 0, 0, 0], prompt_len=2)
    picked, metrics = fill_step(first, lambda r: fake_rollout(2, [0] * 9, prompt_len=2), prompts_per_step=3,
                                num_generations=G, max_rounds=1, pad_id=PAD)
    # One informative group, then the first equal groups in draw order: 0-0 and 0-2.
    assert picked.examples == ["prompt-0-0", "prompt-0-1", "prompt-0-2"]
    assert metrics["dynamic_sampling/filled_groups"] == 2 and metrics["dynamic_sampling/dropped_groups"] == 3
    assert metrics["dynamic_sampling/extra_rollouts"] == 1
    # No extra round needed: the first batch comes back unchanged.
    full = fake_rollout(3, [1, 0, 0, 0, 1, 0, 1, 1, 0], prompt_len=2)
    same, metrics = fill_step(full, None, prompts_per_step=3, num_generations=G, max_rounds=4, pad_id=PAD)
    np.testing.assert_array_equal(same.out.prompt_ids, full.out.prompt_ids)
    assert same.scores.total == full.scores.total and metrics["dynamic_sampling/extra_rollouts"] == 0


def test_dynamic_sampling_cap_is_validated():
    with pytest.raises(ValueError, match="dynamic_sampling_max_rounds=-1 must be a whole number >= 0"):
        check_dynamic_sampling(True, -1)


# ----------------------------------------------------------------------------------------------
# soft overlong punishment


def np_soft_overlong(length, max_len, cache):
    if length <= max_len - cache:
        return 0.0
    return (max_len - cache - length) / cache if length <= max_len else -1.0


@pytest.mark.parametrize("max_len,cache", [(20, 4), (16, 16), (7, 1)])
def test_soft_overlong_matches_the_dapo_formula(max_len, cache):
    for length in range(0, max_len + 3):
        assert soft_overlong_reward(length, max_len=max_len, cache_len=cache) == pytest.approx(
            np_soft_overlong(length, max_len, cache))
    assert soft_overlong_reward(max_len, max_len=max_len, cache_len=cache) == -1.0


def test_soft_overlong_in_a_weighted_batch_uses_token_lengths():
    texts = ["a\n</think>\nx", "b", "c\n</think>\nd", "e"]
    lengths = [10, 17, 19, 25]
    result = score_batch(texts, [""] * 4, 2, ("format", "soft_overlong"), (1.0, 0.5),
                         {"soft_overlong": {"max_len": 20, "cache_len": 4}}, lengths=lengths)
    want = [np_soft_overlong(n, 20, 4) for n in lengths]
    assert result.rewards["soft_overlong"] == pytest.approx(want)
    assert result.total == pytest.approx([f + 0.5 * w for f, w in zip([1, 0, 1, 0], want)])
    with pytest.raises(ValueError, match="counts tokens"):
        score_batch(texts, [""] * 4, 2, ("soft_overlong",))
    with pytest.raises(ValueError, match="cache_len=30 must be in"):
        score_batch(texts, [""] * 4, 2, ("soft_overlong",), reward_params={"soft_overlong": {"max_len": 20,
                                                                                           "cache_len": 30}})


def test_config_validation_of_the_variants():
    from openrs_jax.recipe.config import FLAT_KEYS, base_config, validate

    def check(**values):  # flat key names, placed in their sections
        c = base_config()
        for k, v in values.items():
            section, key = FLAT_KEYS[k].split(".")
            c[section][key] = v
        validate(c)

    check(scale_rewards="batch", dynamic_sampling=True, policy_loss="cispo", epsilon_low=1.0)
    check(scale_rewards=False)
    from openrs_jax.core.grpo.advantages import reward_scaling
    from openrs_jax.recipe.config import load_config
    from tests.conftest import REPO_ROOT

    for text, want in [("False", "none"), ("true", "group"), ("batch", "batch")]:
        c = load_config(REPO_ROOT / "configs" / "exp2.py", [f"grpo.scale_rewards={text}"])
        validate(c)
        assert reward_scaling(c.grpo.scale_rewards) == want
    for values, message in [
        (dict(scale_rewards="std"), "scale_rewards='std'"),
        (dict(delta=1.1), "delta=1.1 must be > 1 \\+ epsilon_high"),
        (dict(reward_funcs=("format", "soft_overlong"), reward_weights=(1.0, 1.0), soft_overlong_cache_len=4000),
         "soft_overlong: cache_len=4000 must be in \\[1, max_len=3584\\]"),
        (dict(ref_sync_steps=10, beta=0.0), "ref_sync_steps=10 refreshes the KL reference, but beta=0"),
        (dict(ref_mixup_alpha=0.0), "ref_mixup_alpha=0.0 must be in \\(0, 1\\]"),
        (dict(report_to=("tensorboard", "mlflow")), "report_to: unknown \\['mlflow'\\]"),
        (dict(top_entropy_quantile=-0.1), "grpo.top_entropy_quantile=-0.1"),
    ]:
        with pytest.raises(ValueError, match=message):
            check(**values)


# ----------------------------------------------------------------------------------------------
# reference refresh


def test_reference_mix_matches_numpy():
    rng = np.random.default_rng(0)
    ref = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": {"c": rng.normal(size=5).astype(np.float32)}}
    policy = jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), ref)
    ref_bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), ref)
    got = mix_reference(ref_bf16, jax.tree.map(jnp.asarray, policy), 0.6)
    want = jax.tree.map(lambda r, p: 0.6 * p.astype(np.float64) + 0.4 * np.asarray(jnp.asarray(r, jnp.bfloat16),
                                                                                      np.float64), ref, policy)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-2, atol=1e-2)
    copied = mix_reference(jax.tree.map(jnp.asarray, ref), jax.tree.map(jnp.asarray, policy), 1.0)
    for g, w in zip(jax.tree.leaves(copied), jax.tree.leaves(policy)):
        np.testing.assert_array_equal(np.asarray(g), w)
    assert [s for s in range(1, 11) if sync_due(s, 4)] == [4, 8] and not sync_due(4, 0)
    with pytest.raises(ValueError, match="ref_sync_steps=-1"):
        check_ref_sync(-1, 0.5, 0.04)


# ----------------------------------------------------------------------------------------------
# Weights & Biases


def test_wandb_missing_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ValueError, match=r"report_to includes 'wandb' but the wandb package is not installed: pip"):
        check_report_to(("tensorboard", "wandb"))
    check_report_to(("tensorboard",))  # not asked for: never imported


def test_wandb_gets_the_same_metric_names(monkeypatch, tmp_path):
    logged, inits = [], []

    class Run:
        id = "run-123"

        def log(self, data, step):
            logged.append((step, data))

        def finish(self):
            logged.append("finished")

    def init(**kwargs):
        inits.append(kwargs)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    log = RunLog(tmp_path, tensorboard=False, wandb_project="proj", wandb_config={"beta": 0.04})
    log.log_metrics(1, {"reward": 0.5, "rewards/accuracy": 0.25, "note": "text", "flag": True})
    log.close()
    assert logged == [(1, {"reward": 0.5, "rewards/accuracy": 0.25}), "finished"]
    assert set(read_metrics(tmp_path)[0]) - {"step", "note", "flag"} == set(logged[0][1])
    assert inits[0]["project"] == "proj" and inits[0]["id"] is None and inits[0]["config"] == {"beta": 0.04}
    # A resumed run continues the same W&B run.
    RunLog(tmp_path, tensorboard=False, wandb_project="proj").close()
    assert inits[1]["id"] == "run-123" and inits[1]["resume"] == "allow"

    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=...)\nmore")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=refuse))
    with pytest.raises(ValueError, match=r"wandb could not start a run \(RuntimeError: api_key not configured .*"
                                        r"run `wandb login`, set WANDB_API_KEY"):
        RunLog(tmp_path / "other", tensorboard=False, wandb_project="proj")
