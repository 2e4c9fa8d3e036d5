"""Paper-exact mode: the original run's input quirks as options (docs/paper-exact.md).

Over-long prompts cut on the left for the loss, a second BOS in rollouts, gold-free rewards
kept through timeouts, the evaluation length cap, TRL's logged `kl` and learning rate, and the
math-verify version plumbing. The prompt order has its own file (test_randperm.py).
"""

from __future__ import annotations

import json
import shutil
import time

import jax.numpy as jnp
import numpy as np
import pytest

from openrs_jax.recipe import toy
from openrs_jax.recipe.data import build_dataset, load_rows
from openrs_jax.evaluation.runner import EvalSettings, Generation, TaskRun, cap_generation, generate_task
from openrs_jax.evaluation.tasks import Problem, get_task
from openrs_jax.core.grpo.loss import aggregation_weights, grpo_loss, token_mean_weights
from openrs_jax.recipe.prompts import eval_user_prompt, render_prompt
from openrs_jax.recipe.rewards import RewardScorer
from openrs_jax.recipe.rewards.batch import RewardSet, normalize_config
from openrs_jax.core.tokenizer import load_tokenizer
from tests.conftest import REPO_ROOT, shared_data

BOS = 1  # the tiny tokenizer's <bos>
QWEN_BOS, QWEN_USER = 151646, 151644


@pytest.fixture(scope="module")
def bos_tokenizer_dir(tmp_path_factory):
    """The built-in tiny tokenizer with a post-processor that adds BOS, as the R1 distills' does."""
    out = tmp_path_factory.mktemp("tok")
    for f in toy.ASSETS.joinpath("tiny").iterdir():
        shutil.copy(f, out / f.name)
    spec = json.loads((out / "tokenizer.json").read_text())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [BOS], "tokens": ["<bos>"]}},
    }
    (out / "tokenizer.json").write_text(json.dumps(spec))
    return out


def sums_rows():
    return load_rows(toy.resolve("builtin:sums"))


# --- over-long prompts and the double BOS in the dataset ---------------------------------------


def test_truncate_left_keeps_every_row_and_cuts_only_the_loss_side(bos_tokenizer_dir):
    tok = load_tokenizer(bos_tokenizer_dir)
    rows = sums_rows()
    full = [tok.encode(render_prompt(tok, r["problem"], ""), add_special_tokens=False) for r in rows]
    assert min(map(len, full)) > 6  # every prompt is over the limit below
    dropped = build_dataset(rows, tok, "", 20)
    assert dropped.dropped_too_long == 0 and dropped.truncated_too_long == 0
    with pytest.raises(Exception, match="every prompt"):
        build_dataset(rows, tok, "", 6)  # the clean behaviour drops them all
    ds = build_dataset(rows, tok, "", 6, long_prompts="truncate_left")
    assert len(ds) == len(rows) and ds.truncated_too_long == len(rows) and ds.dropped_too_long == 0
    for e, ids in zip(ds.examples, full):
        assert e.truncated and e.rollout_ids == tuple(ids)  # rollouts see the whole prompt
        assert e.prompt_ids == tuple(ids[-6:]) and e.prompt_ids[0] != BOS  # the loss its last 6, BOS cut


def test_double_bos_in_rollouts_single_in_the_loss(bos_tokenizer_dir):
    tok = load_tokenizer(bos_tokenizer_dir)
    ds = build_dataset(sums_rows(), tok, "", 16, rollout_bos="double")
    e = ds.examples[0]
    assert e.rollout_ids[:2] == (BOS, BOS) and e.rollout_ids[2] != BOS
    assert e.prompt_ids[0] == BOS and e.prompt_ids[1] != BOS and e.rollout_ids[1:] == e.prompt_ids


def test_real_tokenizer_puts_two_bos_before_the_user_turn():
    tok = load_tokenizer(shared_data("tokenizer", "deepseek-r1-distill-qwen"))
    text = render_prompt(tok, eval_user_prompt("What is 1+1?"))
    assert tok.encode(text, add_special_tokens=True)[:3] == [QWEN_BOS, QWEN_BOS, QWEN_USER]
    assert tok.encode(text, add_special_tokens=False)[:2] == [QWEN_BOS, QWEN_USER]
    ds = build_dataset([{"problem": "What is 1+1?", "answer": "2"}], tok, None, 512, rollout_bos="double")
    assert list(ds.examples[0].rollout_ids[:3]) == [QWEN_BOS, QWEN_BOS, QWEN_USER]
    assert list(ds.examples[0].prompt_ids[:2]) == [QWEN_BOS, QWEN_USER]


# --- the trainer: rollout from the full prompt, loss on its last tokens, TRL's figures ------------


def test_trainer_samples_the_full_double_bos_prompt_and_trains_on_the_cut_one(tmp_path, bos_tokenizer_dir):
    from openrs_jax.recipe.config import load_config
    from openrs_jax.recipe.data import TrlPromptOrder
    from openrs_jax.recipe.trainer import GRPOTrainer

    config = load_config(REPO_ROOT / "configs" / "tiny.py", [
        f"run.output_dir={tmp_path / 'run'}", f"model.tokenizer_path={bos_tokenizer_dir}", "rewards.num_workers=0",
        "run.tensorboard=False", "run.log_completions=0", "grpo.max_steps=2", "data.max_prompt_length=6",
        "data.prompt_order=trl", "data.long_prompts=truncate_left", "rollout.bos=double",
        "rollout.max_model_length=9",  # the 9-token rollout prompts leave room for 1 completion token
    ])
    trainer = GRPOTrainer(config)
    g = config.rollout.num_generations
    tok = trainer.policy.tokenizer
    block = TrlPromptOrder(25, seed=config.run.seed, block=config.rollout.prompts_per_step).next_indices(config.rollout.prompts_per_step)
    examples = [trainer.dataset.examples[i] for i in block]
    full = [tok.encode(render_prompt(tok, e.problem, ""), add_special_tokens=False) for e in examples]

    out = trainer.rollout(examples)
    for r in range(0, len(examples) * g, g):
        seen = out.prompt_ids[r][out.prompt_mask[r]].tolist()
        assert seen == [BOS] + full[r // g]  # two BOS, nothing cut
    ids, mask = trainer.loss_prompts(examples)
    assert ids.shape[0] == len(examples) * g
    for r in range(ids.shape[0]):
        assert ids[r][mask[r]].tolist() == full[r // g][-6:]  # the last 6 tokens, single BOS gone

    assert out.lengths.max() == 1 and config.rollout.max_completion_length == 2
    metrics = trainer.train()
    assert metrics["prompts_truncated"] == len(examples) * g
    assert metrics["completion_length_max"] == 1
    schedule = trainer.update_config.schedule()
    assert metrics["learning_rate"] == pytest.approx(float(schedule(2)))  # after the scheduler step
    assert metrics["learning_rate/used"] == pytest.approx(float(schedule(1)))
    assert {"kl", "kl/token_mean"} <= set(metrics) and np.isfinite(metrics["kl"])
    assert trainer.order.state() == {"epoch": 1, "offset": 16, "kind": "trl"}  # 25 rows: one block an epoch


def test_trl_order_refuses_a_filtered_dataset(tmp_path, bos_tokenizer_dir):
    from openrs_jax.recipe.config import load_config
    from openrs_jax.recipe.trainer import GRPOTrainer

    rows = sums_rows() + [{"problem": "1+1=" * 20, "answer": "2"}]  # one over-long prompt
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(REPO_ROOT / "configs" / "tiny.py", [
        f"run.output_dir={tmp_path / 'run'}", f"data.dataset={data}", "rewards.num_workers=0", "data.prompt_order=trl",
    ])
    with pytest.raises(ValueError, match="prompt_order='trl' permutes the unfiltered dataset.*truncate_left"):
        GRPOTrainer(config)


# --- TRL's logged kl: mean over rows of each row's token-mean KL --------------------------------


def trl_kl(logps: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    """TRL 69ad852 compute_loss: per_token_kl, then ((kl * mask).sum(1) / mask.sum(1)).mean()."""
    kl = np.exp(ref - logps) - (ref - logps) - 1
    return float(((kl * mask).sum(1) / mask.sum(1)).mean())


def test_row_mean_kl_matches_trl_and_adds_up_over_micro_batches():
    rng = np.random.default_rng(0)
    rows, t, g = 12, 9, 6
    logps = rng.normal(-2, 0.5, (rows, t)).astype(np.float32)
    ref = (logps + rng.normal(0, 0.3, (rows, t))).astype(np.float32)
    lengths = rng.integers(1, t + 1, rows)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
    adv = rng.normal(size=rows).astype(np.float32)
    m = jnp.asarray(mask)
    row_w = aggregation_weights(m, num_generations=g, aggregation="seq_mean")
    loss_w = aggregation_weights(m, num_generations=g, aggregation="group_token_mean")
    metric_w = token_mean_weights(m)
    _, whole = grpo_loss(jnp.asarray(logps), None, jnp.asarray(ref), jnp.asarray(adv), m, num_generations=g,
                         beta=0.04, loss_weights=loss_w, metric_weights=metric_w, row_weights=row_w)
    expected = trl_kl(logps, ref, mask)
    assert float(whole["kl/row_mean"]) == pytest.approx(expected, rel=1e-5)
    token_mean = float(((np.exp(ref - logps) - (ref - logps) - 1) * mask).sum() / mask.sum())
    assert float(whole["kl"]) == pytest.approx(token_mean, rel=1e-5)
    assert abs(expected - token_mean) > 1e-4  # the two figures differ: the test tells them apart
    parts = [grpo_loss(jnp.asarray(logps[s]), None, jnp.asarray(ref[s]), jnp.asarray(adv[s]), m[s],
                       num_generations=g, beta=0.04, loss_weights=loss_w[s], metric_weights=metric_w[s],
                       row_weights=row_w[s])[1]["kl/row_mean"] for s in (slice(0, 6), slice(6, 12))]
    assert float(sum(parts)) == pytest.approx(expected, rel=1e-5)


def test_trl_named_metrics():
    from openrs_jax.recipe.trainer import trl_named

    named = trl_named({"kl": 0.1, "kl/row_mean": 0.2, "learning_rate": 1e-6, "loss": 0.5}, 9e-7)
    assert named == {"kl": 0.2, "kl/token_mean": 0.1, "learning_rate": 9e-7, "learning_rate/used": 1e-6, "loss": 0.5}


# --- rewards: a timeout zeroes only the rewards that check the answer -------------------------


def hang_on_marker(completions: list[str], solutions: list[str]) -> list[float]:
    """Hangs on a completion starting with HANG (loaded by the workers as a custom reward)."""
    if completions[0].startswith("HANG"):
        time.sleep(600)
    return [1.0]


HANG = f"{__name__}:hang_on_marker"
RIGHT = "<think>\nsum\n</think>\nThe answer is $\\boxed{2}$."


def test_combine_scores_gold_free_rewards_of_a_timed_out_row():
    rset = RewardSet(*normalize_config(["format", "tag_count", "reasoning_steps", "accuracy"]))
    texts = ["First, " + RIGHT, RIGHT]
    rows = [None, rset.score_row(RIGHT, "$2$")]
    res = rset.combine(texts, ["$2$", "$2$"], rows, 1, timed_out=[0])
    assert res.rewards["format"] == [1.0, 1.0] and res.rewards["tag_count"] == [1.0, 1.0]
    assert res.rewards["reasoning_steps"] == [pytest.approx(1 / 3), 0.0]
    assert res.rewards["accuracy"] == [0.0, 1.0]  # the answer is right, but its check timed out
    assert res.timeouts == 1 and res.failed_rows == [0]


def test_pool_timeout_keeps_format_and_tags():
    with RewardScorer(["format", "tag_count", "accuracy", HANG], num_workers=1, timeout_s=2.0) as scorer:
        res = scorer.score(["HANG" + RIGHT, RIGHT], ["$2$", "$2$"], 1)
    assert res.timeouts == 1
    assert res.rewards["format"] == [1.0, 1.0] and res.rewards["tag_count"] == [1.0, 1.0]
    assert res.rewards["accuracy"] == [0.0, 1.0] and res.rewards[HANG] == [0.0, 1.0]
    assert res.total == [2.0, 4.0]


# --- evaluation: the double BOS and vLLM's max_model_len ---------------------------------------


def test_new_token_cap_follows_vllm_max_model_len():
    paper = EvalSettings(max_new_tokens=32768, max_model_length=32768)
    assert paper.new_token_cap(300) == 32769 - 300
    assert EvalSettings(max_new_tokens=32768).new_token_cap(300) == 32768  # the clean default: no cap
    assert EvalSettings(max_new_tokens=100, max_model_length=32768).new_token_cap(300) == 100
    long = Generation(list(range(50)), truncated=False)
    assert cap_generation(long, 60) is long
    assert cap_generation(long, 20) == Generation(list(range(20)), truncated=True)
    ended = Generation([5, 6, 2], truncated=False)  # an EOS exactly at the cap stays a finished answer
    assert cap_generation(ended, 3) == ended


def test_generate_task_applies_bos_and_cap(bos_tokenizer_dir):
    tok = load_tokenizer(bos_tokenizer_dir)
    spec = get_task("aime24")
    problems = [Problem(index=i, problem="1+" * 3 * i + "1=", gold=str(i + 1)) for i in range(3)]  # 3 lengths
    seen: list[list[int]] = []

    def generate(prompts, num_samples, seed):
        seen.extend(prompts)
        return [Generation([7] * 40, truncated=True) for _ in range(len(prompts) * num_samples)]

    single = {p.index: tok.encode(render_prompt(tok, eval_user_prompt(p.problem))) for p in problems}
    longest = max(len(ids) for ids in single.values()) + 1  # with the second BOS
    settings = EvalSettings(max_new_tokens=40, bos="double", max_model_length=longest + 10)
    run = TaskRun(spec, problems, "paper", path=None)
    generate_task(run, generate, tok, settings, progress=False)
    assert sorted(map(tuple, seen)) == sorted((BOS, *ids) for ids in single.values())
    lengths = {index: rec["length"] for (index, _), rec in run.records.items()}
    # vLLM: new tokens <= max_model_len + 1 - prompt tokens (the prompt with both BOS)
    assert lengths == {i: longest + 10 + 1 - (len(ids) + 1) for i, ids in single.items()}
    assert all(rec["truncated"] for rec in run.records.values())


def test_rollout_cap_cuts_completions_of_long_prompts():
    from openrs_jax.core.sampling import SampleOutput
    from openrs_jax.recipe.trainer import cap_completions

    ids = np.array([[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [5, 2, 0, 0, 0]], np.int32)
    lengths = np.array([3, 5, 2], np.int32)
    mask = np.arange(5)[None] < lengths[:, None]
    out = SampleOutput(prompt_ids=np.ones((3, 4), np.int32), prompt_mask=np.ones((3, 4), bool), completion_ids=ids,
                       completion_mask=mask, lengths=lengths, truncated=np.array([False, True, False]),
                       logprobs=np.where(mask, -1.0, 0.0).astype(np.float32), num_prompts=3, num_samples=1)
    capped = cap_completions(out, np.array([3, 3, 1]), pad_id=0)
    assert capped.lengths.tolist() == [3, 3, 1]
    assert capped.truncated.tolist() == [False, True, True]  # EOS exactly at the cap still counts as an end
    assert capped.completion_ids.tolist() == [[5, 6, 2, 0, 0], [5, 6, 7, 0, 0], [5, 0, 0, 0, 0]]
    assert capped.logprobs.tolist() == [[-1, -1, -1, 0, 0], [-1, -1, -1, 0, 0], [-1, 0, 0, 0, 0]]


def test_evaluate_cli_paper_flags_belong_to_model_mode(tmp_path, capsys):
    from openrs_jax.evaluate import main

    completions = tmp_path / "c.jsonl"
    completions.write_text(json.dumps({"task": "aime24", "index": 0, "completion": "1"}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--completions", str(completions), "--paper_exact", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--paper_exact apply to model mode" in capsys.readouterr().err


def test_real_long_prompts_match_trl_tokenization():
    """TRL's two tokenizations, rebuilt with transformers on real rows: vLLM's (the text with special
    tokens) and the loss side's (without, left-padded, then [:, -512:])."""
    transformers = pytest.importorskip("transformers")
    tok_dir = shared_data("tokenizer", "deepseek-r1-distill-qwen")
    rows = load_rows(str(shared_data("train", "deepscaler_sample.jsonl")))
    tok = load_tokenizer(tok_dir)
    system = "Solve it."
    lengths = [len(ids) for ids in tok.encode_batch([render_prompt(tok, r["problem"], system) for r in rows])]
    picked = [r for r, n in zip(rows, lengths) if n > 300][:3] + rows[:3]  # long ones and ordinary ones
    ds = build_dataset(picked, tok, system, 300, long_prompts="truncate_left", rollout_bos="double")
    assert sum(e.truncated for e in ds.examples) == 3
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    texts = [hf.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": r["problem"]}],
                                    tokenize=False, add_generation_prompt=True) for r in picked]
    vllm_ids = [hf(t)["input_ids"] for t in texts]  # add_special_tokens defaults to True
    loss = hf(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="np")
    loss_ids, loss_mask = loss["input_ids"][:, -300:], loss["attention_mask"][:, -300:].astype(bool)
    for i, e in enumerate(ds.examples):
        assert list(e.rollout_ids) == vllm_ids[i]
        assert list(e.prompt_ids) == loss_ids[i][loss_mask[i]].tolist()
