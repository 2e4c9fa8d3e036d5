"""The built-in offline demo: a tiny Qwen2 (random weights), a small tokenizer and a toy sums dataset.

`configs/tiny.py` names them as `builtin:tiny` (model and tokenizer) and `builtin:sums`
(dataset); every other path is loaded as usual. The tokenizer has one token per answer
(`\\boxed{0}` ... `\\boxed{9}`), so a random policy sometimes answers right and GRPO has a
signal to learn from within minutes on a CPU; `stop_reward` teaches it to stop after the answer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from openrs_jax.core.model_paths import ASSETS, BUILTIN_MODELS, BUILTIN_PREFIX, PRESET_PREFIX, resolve_builtin
from openrs_jax.files import write_jsonl

# One naming scheme for everything that ships with the package, taken by every command (train,
# generate, evaluate, curate, bench): a model with its tokenizer (resolved by
# openrs_jax.core.model_paths) and a dataset (here).
BUILTIN_DATASETS = {"builtin:sums": ASSETS / "sums.jsonl"}
BUILTINS = {**BUILTIN_MODELS, **BUILTIN_DATASETS}

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
ADDED_TOKENS = ("<User>", "<Assistant>", "<think>\n", "\n</think>\n") + tuple(f"\\boxed{{{d}}}" for d in range(10))
CHARACTERS = tuple("0123456789+=")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<User>{{ m['content'] }}{% elif m['role'] == 'assistant' %}"
    "<Assistant>{{ m['content'] }}<eos>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<Assistant><think>\n{% endif %}"
)


def resolve(name: str) -> str:
    """Maps a `builtin:` name (dataset or model) to its shipped path; returns other names unchanged."""
    return resolve_builtin(name, BUILTINS, "built-in")


def check_name(value: str, flag: str, kind: str) -> str:
    """Refuses a built-in or preset name that `flag` cannot take; returns `value` unchanged.

    kind: "model" (also tokenizers: a built-in model ships its tokenizer) or "dataset". The
    error names `flag` as the user typed it (e.g. `--model`, `--config.data.dataset`). `preset:`
    shapes are the benchmarks' alone: the bench lets them pass without asking.
    """
    names = BUILTIN_DATASETS if kind == "dataset" else BUILTIN_MODELS
    text = str(value)
    if text.startswith(PRESET_PREFIX) and kind == "model":
        raise ValueError(
            f"{flag}={text}: preset: names are model shapes for `python -m openrs_jax.bench` only (random "
            f"weights, no tokenizer); give a model directory, or {', '.join(names)} for the built-in demo model"
        )
    if text.startswith(BUILTIN_PREFIX) and text not in names:
        other = "dataset" if kind == "model" else "model"
        what = f"a built-in {other}, not a {kind}" if text in BUILTINS else "not a built-in"
        raise ValueError(f"{flag}={text}: {what}; built-in {kind}s: {', '.join(names)}")
    return value


BOXED_DIGITS = re.compile(r"\\boxed\{(\d+)\}")


def stop_reward(completions: list[str], solutions: list[str]) -> list[float]:
    """1.0 where the completion is exactly the gold's answer token, so it stopped after it; else 0.0.

    The accuracy reward alone pays "\\boxed{3}7" as much as "\\boxed{3}<eos>": nothing taught the
    demo policy to stop, and almost every completion ran to max_completion_length. Only <eos> is
    skipped when completions are decoded, so the text is the answer alone only when EOS followed
    it. Right answers only: paying any answer that stops drives the policy to one answer for
    every prompt. `configs/tiny.py` adds it as the custom reward `openrs_jax.recipe.toy:stop_reward`.
    """
    golds = (BOXED_DIGITS.search(solution) for solution in solutions)
    return [1.0 if gold is not None and completion == f"\\boxed{{{gold.group(1)}}}" else 0.0
            for completion, gold in zip(completions, golds)]


def write_assets(root: Path = ASSETS) -> None:
    """Regenerates the shipped files (run once; they are committed)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + ADDED_TOKENS + CHARACTERS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    # Only EOS is special (skipped when completions are decoded): <pad> or <bos> sampled after an
    # answer stays visible, so a completion whose text is exactly the answer stopped at EOS.
    tok.add_special_tokens([AddedToken("<eos>", normalized=False, special=True)])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in SPECIAL_TOKENS + ADDED_TOKENS
                    if t != "<eos>"])
    tiny = root / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    tok.save(str(tiny / "tokenizer.json"))
    (tiny / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "chat_template": CHAT_TEMPLATE,
        "model_max_length": 512, "tokenizer_class": "PreTrainedTokenizerFast",
    }, indent=2))
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": len(vocab),
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu", "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 512,
        "bos_token_id": vocab["<bos>"], "eos_token_id": vocab["<eos>"], "pad_token_id": vocab["<pad>"],
    }
    (tiny / "config.json").write_text(json.dumps(config, indent=2))
    (tiny / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": vocab["<bos>"], "eos_token_id": vocab["<eos>"], "pad_token_id": vocab["<pad>"]}, indent=2))
    sums = [{"problem": f"{a}+{b}=", "answer": str(a + b)} for a in range(5) for b in range(5)]
    write_jsonl(root / "sums.jsonl", sums)


if __name__ == "__main__":
    write_assets()
