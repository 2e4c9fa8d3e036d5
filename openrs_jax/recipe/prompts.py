"""The one prompt builder, shared by training and evaluation (docs/recipe.md sections Prompts and Evaluation).

A prompt is a conversation [system?, user] rendered with the tokenizer's chat template. For
the DeepSeek-R1 distills the rendered text already starts with BOS and ends inside the think
block (`<｜Assistant｜><think>\\n`), so it is tokenized with add_special_tokens=False: adding
special tokens again would put a second BOS in front (a bug of the original pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence

from openrs_jax.core.tokenizer import Tokenizer

# System prompt of the paper's Exp3 (exact; the doubled braces are literal text, not a format).
SYSTEM_PROMPT_EXP3 = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer, and put your final answer within \\boxed{{}} . The reasoning process and answer are "
    "enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. Note that respond by English, NOT use other languages."
)
# Exp1/Exp2: unpublished; the recipe uses the Exp3 text without its English-only sentence.
SYSTEM_PROMPT = SYSTEM_PROMPT_EXP3.removesuffix(" Note that respond by English, NOT use other languages.")

# The paper's evaluation instruction (lighteval's MATH query template), exact: two spaces after
# "clearly.", literal braces in \boxed{ANSWER}. The problem follows after a blank line.
EVAL_INSTRUCTION = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should "
    "be of the following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is correct' "
    "(without quotes) where ANSWER is just the final number or expression that solves the problem. "
    "Think step by step before answering."
)


def eval_user_prompt(problem: str) -> str:
    """The evaluation user message for `problem` (no system prompt is used in evaluation)."""
    # Concatenation, not str.format: the instruction holds literal braces.
    return EVAL_INSTRUCTION + "\n\n" + problem


def build_messages(problem: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversation for one problem: [system, user], or [user] when `system_prompt` is None."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    messages.append({"role": "user", "content": problem})
    return messages


def render_prompt(tokenizer: Tokenizer, problem: str, system_prompt: str | None = None) -> str:
    """The prompt text, ending with the template's generation prompt."""
    return tokenizer.apply_chat_template(build_messages(problem, system_prompt), add_generation_prompt=True)


def render_prompt_ids(tokenizer: Tokenizer, problem: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of the rendered prompt (BOS comes from the template, not from the tokenizer)."""
    return tokenizer.encode(render_prompt(tokenizer, problem, system_prompt), add_special_tokens=False)


def render_prompts_ids(
    tokenizer: Tokenizer, problems: Sequence[str], system_prompt: str | None = None
) -> list[list[int]]:
    """`render_prompt_ids` over many problems, tokenized in one parallel batch."""
    texts = [render_prompt(tokenizer, p, system_prompt) for p in problems]
    return tokenizer.encode_batch(texts, add_special_tokens=False)
