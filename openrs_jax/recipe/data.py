"""Training data: load maths problems, render and tokenize prompts, and a resumable seeded order.

A dataset is a Hub name (`datasets.load_dataset`) or a local path: a JSON / JSONL / parquet
file, a folder holding `<split>.jsonl` (what `python -m openrs_jax.curate` writes), or a
`datasets.save_to_disk` folder. Rows need `problem` and `solution` or `answer`.

Two prompt orders (config `prompt_order`): "numpy", a seeded numpy shuffle per epoch over the
kept prompts, and "trl", the order of TRL's `RepeatRandomSampler` (the original run's):
`torch.randperm` of the unfiltered dataset from a generator seeded with the run's seed, cut into
blocks of prompts_per_step, the incomplete last block dropped. `torch_randperm` reproduces torch's
CPU algorithm exactly from numpy's MT19937 (docs/paper-exact.md), so torch is not needed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from openrs_jax.files import read_jsonl
from openrs_jax.hub import require_hub
from openrs_jax.recipe import toy

log = logging.getLogger("openrs_jax.recipe.data")

LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
LONG_PROMPTS = ("drop", "truncate_left")
ROLLOUT_BOS = ("single", "double")
PROMPT_ORDERS = ("numpy", "trl")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The run config's `data` section, checked: where the prompts come from and how they are fed."""

    dataset: str
    split: str = "train"
    system_prompt: str = ""
    max_prompt_length: int = 512
    prompt_order: str = "numpy"
    long_prompts: str = "drop"

    def __post_init__(self) -> None:
        toy.check_name(self.dataset, "--config.data.dataset", "dataset")
        if self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length={self.max_prompt_length} must be >= 1")
        check_choice("prompt_order", self.prompt_order, PROMPT_ORDERS)
        check_choice("long_prompts", self.long_prompts, LONG_PROMPTS)


def check_choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    """Refuses a value of `key` outside `valid`, naming them."""
    if value not in valid:
        raise ValueError(f"{key}={value!r}: use {' or '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class Example:
    """One training problem: its text, its gold (for rewards), and its tokenized prompt."""

    problem: str
    gold: str
    prompt_ids: tuple[int, ...]  # what the loss sees (single BOS; the last max_prompt_length tokens)
    sample_ids: tuple[int, ...] | None = None  # what rollouts start from, where it differs
    truncated: bool = False  # prompt_ids lost tokens on the left (long_prompts="truncate_left")

    @property
    def rollout_ids(self) -> tuple[int, ...]:
        """The prompt the sampler continues: the full prompt, with a second BOS in "double" mode."""
        return self.prompt_ids if self.sample_ids is None else self.sample_ids


@dataclasses.dataclass
class PromptDataset:
    """The prompts kept, and how many were too long: dropped, or cut on the left (long_prompts="truncate_left")."""

    examples: list[Example]
    dropped_too_long: int
    truncated_too_long: int = 0

    def __len__(self) -> int:
        return len(self.examples)


def _read_local(path: Path, split: str) -> list[dict[str, Any]]:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"dataset {path} has no split {split!r} (splits: {', '.join(ds)})")
                ds = ds[split]
            return [dict(r) for r in ds]
        for name in (f"{split}.jsonl", f"{split}.json", f"{split}.parquet", "data.jsonl"):
            if (path / name).is_file():
                return _read_local(path / name, split)
        raise ValueError(f"dataset folder {path} holds no {split}.jsonl, {split}.json, {split}.parquet or data.jsonl")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".json", ".jsonl"):  # a JSON list of rows, or JSON lines, whatever the suffix
        text = path.read_text(encoding="utf-8-sig")
        return json.loads(text) if text.lstrip().startswith("[") else read_jsonl(path)
    raise ValueError(f"dataset file {path} must end in {', '.join(LOCAL_SUFFIXES)}")


def load_rows(dataset_name: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a local file/folder or a Hub dataset, as plain dicts."""
    path = Path(dataset_name).expanduser()
    if path.exists():
        rows = _read_local(path, split)
    elif path.suffix in LOCAL_SUFFIXES or dataset_name.startswith((".", "/", "~")):
        raise ValueError(f"dataset file {path} does not exist: check dataset_name")
    else:
        require_hub(f"dataset {dataset_name!r}", "give a local copy: a JSON/JSONL/parquet file or a folder with "
                    f"{split}.jsonl (dataset_name in training, --input in curate)")
        try:
            import datasets

            rows = [dict(r) for r in datasets.load_dataset(dataset_name, split=split)]
        except Exception as e:  # noqa: BLE001 - hub/network errors come in many types
            raise ValueError(
                f"could not load dataset {dataset_name!r} split {split!r} from the Hugging Face Hub "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                "check the name, or give a local JSON/JSONL/parquet path as dataset_name"
            ) from None
    if not rows:
        raise ValueError(f"dataset {dataset_name!r} (split {split!r}) is empty")
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:  # a JSON file of lists or numbers: every later step reads fields by name
        raise ValueError(f"dataset {dataset_name!r}: row {bad} is {type(rows[bad]).__name__}, "
                         "not a JSON object with named fields")
    return rows


def check_columns(rows: list[Mapping[str, Any]], dataset_name: str) -> None:
    """Requires `problem` and one of `solution`/`answer` (named in the error with what was found)."""
    columns = set(rows[0])
    need = [name for name, options in (("problem", {"problem"}), ("solution or answer", {"solution", "answer"}))
            if not options & columns]
    if need:
        raise ValueError(
            f"dataset {dataset_name!r} lacks the column(s) {' and '.join(need)} "
            f"(it has: {', '.join(sorted(columns))}); rename its columns to problem and solution/answer"
        )


def build_dataset(
    rows: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    system_prompt: str | None,
    max_prompt_length: int,
    dataset_name: str = "dataset",
    *,
    long_prompts: str = "drop",
    rollout_bos: str = "single",
) -> PromptDataset:
    """Renders every problem through the chat template and handles prompts longer than the limit.

    long_prompts: "drop" removes them; "truncate_left" keeps every row, samples from the full
    prompt and gives the loss its last `max_prompt_length` tokens (which may cut the BOS and the
    system prompt), as the original run did. rollout_bos: "double" samples from the templated
    text tokenized with special tokens (a second BOS in front, as vLLM did); the loss side always
    has the template's single BOS.
    """
    from openrs_jax.recipe.prompts import render_prompt
    from openrs_jax.recipe.rewards.gold import gold_from_row

    check_choice("long_prompts", long_prompts, LONG_PROMPTS)
    check_choice("rollout_bos", rollout_bos, ROLLOUT_BOS)
    rows = list(rows)
    check_columns(rows, dataset_name)
    texts = [render_prompt(tokenizer, row["problem"], system_prompt) for row in rows]
    all_ids = tokenizer.encode_batch(texts, add_special_tokens=False)
    rollout = tokenizer.encode_batch(texts, add_special_tokens=True) if rollout_bos == "double" else all_ids
    examples, dropped, truncated = [], 0, 0
    for row, ids, sample in zip(rows, all_ids, rollout):
        cut = len(ids) > max_prompt_length
        if cut and long_prompts == "drop":
            dropped += 1
            continue
        truncated += cut
        loss_ids = tuple(ids[-max_prompt_length:])
        examples.append(Example(
            problem=row["problem"], gold=gold_from_row(row), prompt_ids=loss_ids,
            sample_ids=None if tuple(sample) == loss_ids else tuple(sample), truncated=cut,
        ))
    if dropped:
        log.warning("dropped %d of %d prompts longer than max_prompt_length=%d", dropped, len(rows), max_prompt_length)
    if truncated:
        log.warning("%d of %d prompts are longer than max_prompt_length=%d: rollouts see them whole, the loss "
                    "their last %d tokens (long_prompts=truncate_left)", truncated, len(rows), max_prompt_length,
                    max_prompt_length)
    if not examples:
        raise ValueError(
            f"every prompt of {dataset_name!r} is longer than max_prompt_length={max_prompt_length} tokens; "
            "raise max_prompt_length or shorten the system prompt"
        )
    return PromptDataset(examples=examples, dropped_too_long=dropped, truncated_too_long=truncated)


@dataclasses.dataclass
class PromptOrder:
    """A seeded shuffle of `size` items per epoch; `epoch` and `offset` are all its state.

    Saving (epoch, offset) in a checkpoint makes a resumed run draw exactly the prompts the
    uninterrupted run would have drawn.
    """

    size: int
    seed: int
    epoch: int = 0
    offset: int = 0
    kind = "numpy"

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def next_indices(self, n: int) -> list[int]:
        """The next n indices, continuing into the next epoch's shuffle when one ends."""
        out: list[int] = []
        while len(out) < n:
            perm = self._permutation(self.epoch)
            take = min(n - len(out), self.size - self.offset)
            out.extend(int(i) for i in perm[self.offset : self.offset + take])
            self.offset += take
            if self.offset == self.size:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores; the numpy order keeps its original two keys."""
        state: dict[str, Any] = {"epoch": self.epoch, "offset": self.offset}
        if self.kind != "numpy":
            state["kind"] = self.kind
        return state

    def restore(self, state: Mapping[str, Any]) -> None:
        saved = state.get("kind", "numpy")  # checkpoints older than prompt_order hold a numpy order
        if saved != self.kind:
            raise ValueError(
                f"the checkpoint was written with prompt_order={saved!r} but this run uses {self.kind!r}; "
                f"resume with --config.data.prompt_order={saved}, or choose another output_dir"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


# torch's CPU randperm switches to another algorithm (64-bit draws, inside-out shuffle) from
# this size on (n >= UINT32_MAX / 20); only the smaller sizes are reproduced here.
TORCH_RANDPERM_LIMIT = (2**32 - 1) // 20


class TorchGenerator:
    """The 32-bit output stream of `torch.Generator().manual_seed(seed)` on the CPU, from numpy.

    torch's CPU generator is the standard MT19937 seeded with init_genrand(seed), the same
    state numpy's legacy `RandomState(seed)` starts from; `random_raw` then yields the same
    32-bit outputs as torch's `generator->random()`.
    """

    def __init__(self, seed: int):
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed={seed}: the trl prompt order needs a seed in [0, 2**32)")
        key, pos = np.random.RandomState(seed).get_state()[1:3]
        self.bits = np.random.MT19937()
        self.bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}

    def random(self, count: int) -> np.ndarray:
        """The next `count` 32-bit outputs, as int64."""
        return self.bits.random_raw(count).astype(np.int64)


def torch_randperm(n: int, generator: TorchGenerator) -> np.ndarray:
    """`torch.randperm(n, generator=g)` on the CPU, exactly, for n < TORCH_RANDPERM_LIMIT.

    torch's randperm_cpu (aten/src/ATen/native/TensorFactories.cpp) fills 0..n-1, then for
    i = 0 .. n-2 swaps element i with element i + (random() % (n - i)), where random() is one
    32-bit MT19937 output: n - 1 draws, a forward Fisher-Yates shuffle. Consecutive calls on
    one generator continue its stream, as torch's do.
    """
    if n >= TORCH_RANDPERM_LIMIT:
        raise ValueError(f"a dataset of {n} rows is too large for the trl prompt order (limit {TORCH_RANDPERM_LIMIT - 1})")
    steps = max(n - 1, 0)
    offsets = generator.random(steps) % (n - np.arange(steps, dtype=np.int64))
    perm = list(range(n))
    for i, z in enumerate(offsets.tolist()):
        j = i + z
        perm[i], perm[j] = perm[j], perm[i]
    return np.asarray(perm, dtype=np.int64)


@dataclasses.dataclass
class TrlPromptOrder(PromptOrder):
    """TRL's RepeatRandomSampler order (the original run's), in blocks of `block` prompts.

    Epoch e is the (e+1)-th `torch.randperm(size)` drawn from one generator seeded with `seed`
    (what the sampler yields when the trainer iterates it again), cut into blocks of `block`
    unique indices; the incomplete last block is dropped. The indices are row numbers of the
    unfiltered dataset. (epoch, offset) is all the state, so a resumed run continues exactly.
    """

    block: int = dataclasses.field(kw_only=True)
    kind = "trl"
    _cache: tuple[int, np.ndarray] | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size < self.block:
            raise ValueError(
                f"the dataset has {self.size} prompts, fewer than prompts_per_step={self.block}: "
                "the trl prompt order draws whole blocks"
            )

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            generator = TorchGenerator(self.seed)
            generator.random(epoch * max(self.size - 1, 0))  # the earlier epochs' draws
            self._cache = (epoch, torch_randperm(self.size, generator))
        return self._cache[1]

    def next_indices(self, n: int) -> list[int]:
        """The next block of `block` indices (n must equal `block`)."""
        if n != self.block:
            raise ValueError(f"the trl order yields blocks of {self.block} prompts, not {n}")
        if self.offset + n > self.size - self.size % self.block:  # the incomplete last block
            self.epoch, self.offset = self.epoch + 1, 0
        out = [int(i) for i in self._permutation(self.epoch)[self.offset : self.offset + n]]
        self.offset += n
        return out


def make_prompt_order(kind: str, size: int, seed: int, block: int) -> PromptOrder | TrlPromptOrder:
    """The prompt order of config `prompt_order` over `size` prompts."""
    check_choice("prompt_order", kind, PROMPT_ORDERS)
    return PromptOrder(size, seed=seed) if kind == "numpy" else TrlPromptOrder(size, seed=seed, block=block)


