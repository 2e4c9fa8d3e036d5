"""The one prompt builder: exact recipe strings, rendering, single BOS."""

from __future__ import annotations

import pytest

from tests.conftest import shared_data
from openrs_jax.recipe import prompts
from openrs_jax.core.tokenizer import load_tokenizer

# Typed from docs/recipe.md sections Prompts and Evaluation, independently of the module under test.
EXP3 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer, "
    "and put your final answer within \\boxed{{}} . The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. Note that respond by English, NOT use other languages."
)
EVAL_PREFIX = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n"
)
BOS = 151646


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(shared_data("tokenizer", "deepseek-r1-distill-qwen"))


def test_recipe_strings():
    assert prompts.SYSTEM_PROMPT_EXP3 == EXP3
    assert prompts.SYSTEM_PROMPT == EXP3.replace(" Note that respond by English, NOT use other languages.", "")
    assert prompts.eval_user_prompt("What is $1+1$?") == EVAL_PREFIX + "What is $1+1$?"
    assert "clearly.  The last" in prompts.eval_user_prompt("x")


def test_build_messages():
    assert prompts.build_messages("p") == [{"role": "user", "content": "p"}]
    assert prompts.build_messages("p", "s") == [{"role": "system", "content": "s"}, {"role": "user", "content": "p"}]


def test_render_training_prompt(tok):
    text = prompts.render_prompt(tok, "What is 2+2?", EXP3)
    assert text == f"<｜begin▁of▁sentence｜>{EXP3}<｜User｜>What is 2+2?<｜Assistant｜><think>\n"


def test_prompt_ids_hold_one_bos(tok):
    for system in (None, EXP3):
        ids = prompts.render_prompt_ids(tok, "What is 2+2?", system)
        assert ids[0] == BOS and ids.count(BOS) == 1
        assert ids[-2:] == tok.encode("<think>\n")
        assert tok.decode(ids, skip_special_tokens=False) == prompts.render_prompt(tok, "What is 2+2?", system)


def test_batch_matches_single(tok):
    problems = ["a", "What is $\\frac12$?", "数学"]
    assert prompts.render_prompts_ids(tok, problems, EXP3) == [prompts.render_prompt_ids(tok, p, EXP3) for p in problems]


def test_eval_prompt_matches_transformers(tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(shared_data("tokenizer", "deepseek-r1-distill-qwen")))
    user = prompts.eval_user_prompt("Find $x$ if $2x = 6$.")
    expected = hf.apply_chat_template([{"role": "user", "content": user}], tokenize=True, add_generation_prompt=True)
    if hasattr(expected, "keys"):  # transformers 5 returns a BatchEncoding
        expected = expected["input_ids"]
    assert prompts.render_prompt_ids(tok, prompts.eval_user_prompt("Find $x$ if $2x = 6$.")) == list(expected)
