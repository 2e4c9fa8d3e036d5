"""Hugging Face tokenizer directories without `transformers`.

`load_tokenizer(path)` reads `tokenizer.json` with the `tokenizers` library and renders the chat
template with a sandboxed jinja2 environment set up as `transformers` sets it up, so ids and
prompt text match `AutoTokenizer` (tests compare them) while importing neither transformers
nor torch.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrs_jax.files import read_json


# Special-token names a chat template may read (transformers passes its special tokens map).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

Message = Mapping[str, Any]


def _token_content(value: Any) -> str | None:
    """A special token as stored in the config files: a string or a serialised AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _pick_chat_template(directory: Path, config: Mapping[str, Any]) -> str | None:
    """The template text: `chat_template.jinja` (transformers >= 4.50 writes it) wins over the config entry."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # jinja2's own tojson escapes HTML characters, which would change the rendered prompt.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=8)
def _compile_template(source: str) -> Any:
    """Compiles a chat template in the environment transformers uses (sandboxed, trimmed blocks)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"the tokenizer's chat template does not compile: {e}") from e


@dataclass
class Tokenizer:
    """A loaded tokenizer directory: ids, special tokens and the chat template."""

    backend: Any  # tokenizers.Tokenizer
    path: Path
    bos_token: str | None
    eos_token: str
    pad_token: str
    chat_template: str | None = None
    clean_up_tokenization_spaces: bool = False
    special_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int:
        return self.backend.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        return self.backend.token_to_id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Default False: rendered chat prompts already hold BOS."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """`encode` over many texts (the Rust backend runs them in parallel)."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. Only tokens flagged special are skipped (`<think>` is not one of them)."""
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self.clean_up_tokenization_spaces else text

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def apply_chat_template(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The conversation rendered as text, as `transformers`' `apply_chat_template(tokenize=False)`."""
        if self.chat_template is None:
            raise ValueError(
                f"the tokenizer in {self.path} has no chat template (no chat_template.jinja and no "
                "'chat_template' in tokenizer_config.json): use a chat model's tokenizer"
            )
        template = _compile_template(self.chat_template)
        return template.render(
            messages=[dict(m) for m in messages], tools=None, documents=None,
            add_generation_prompt=add_generation_prompt, **self.special_tokens,
        )


def _clean_up_spaces(text: str) -> str:
    """transformers' `clean_up_tokenization` (only used when the config asks for it)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Loads a Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json [+ extras]).

    Special tokens come from tokenizer_config.json, overridden by special_tokens_map.json as
    transformers does; pad falls back to eos. Raises ValueError for a missing directory, a
    missing tokenizer.json or a tokenizer without an EOS token. `builtin:tiny` is the demo
    model's tokenizer (`openrs_jax.core.model_paths`).
    """
    from tokenizers import Tokenizer as Backend

    from openrs_jax.core.model_paths import resolve_builtin

    directory = Path(resolve_builtin(path)).expanduser()
    if not directory.is_dir():
        raise ValueError(f"tokenizer directory {directory} does not exist: give a Hugging Face model or tokenizer directory")
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(
            f"{directory} has no tokenizer.json: save the tokenizer with a fast (tokenizers-backed) "
            "Hugging Face tokenizer, or point --tokenizer at a directory that has one"
        )
    try:
        backend = Backend.from_file(str(tokenizer_file))
    except Exception as e:  # the Rust side raises a plain Exception for malformed files
        raise ValueError(f"cannot load {tokenizer_file}: {e}") from e

    config = read_json(directory / "tokenizer_config.json", optional=True)
    overrides = read_json(directory / "special_tokens_map.json", optional=True)
    special: dict[str, str] = {}
    for name in SPECIAL_TOKEN_NAMES:
        token = _token_content(overrides.get(name)) or _token_content(config.get(name))
        if token is not None:
            special[name] = token

    for name, token in special.items():
        if backend.token_to_id(token) is None:
            raise ValueError(f"{name} {token!r} of {directory} is not in its vocabulary")
    eos = special.get("eos_token")
    if eos is None:
        raise ValueError(
            f"the tokenizer in {directory} defines no eos_token (tokenizer_config.json or "
            "special_tokens_map.json): generation needs one to know where a completion ends"
        )
    return Tokenizer(
        backend=backend,
        path=directory,
        bos_token=special.get("bos_token"),
        eos_token=eos,
        pad_token=special.get("pad_token", eos),
        chat_template=_pick_chat_template(directory, config),
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        special_tokens=special,
    )
