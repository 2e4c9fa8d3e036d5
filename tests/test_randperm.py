"""The trl prompt order: torch's CPU randperm reproduced from numpy, and TRL's block sampler."""

from __future__ import annotations

import pytest

from openrs_jax.recipe.data import TorchGenerator, TrlPromptOrder, make_prompt_order, torch_randperm

torch = pytest.importorskip("torch")  # the reference only; the project itself never imports torch


def reference_perms(n: int, seed: int, epochs: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=generator).tolist() for _ in range(epochs)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 12, 13, 100, 1000, 7000, 18615])
@pytest.mark.parametrize("seed", [0, 42, 1234, 2**32 - 1])
def test_randperm_equals_torch(n, seed):
    generator = TorchGenerator(seed)
    assert torch_randperm(n, generator).tolist() == reference_perms(n, seed)[0]


@pytest.mark.parametrize("n", [7000, 18615, 9])
def test_consecutive_calls_continue_the_stream_as_torch_does(n):
    generator = TorchGenerator(42)
    ours = [torch_randperm(n, generator).tolist() for _ in range(3)]
    assert ours == reference_perms(n, 42, epochs=3)


def trl_sampler_order(n: int, seed: int, block: int, epochs: int, repeats: int) -> list[int]:
    """TRL 69ad852 RepeatRandomSampler.__iter__ (repeat_count=1), re-iterated once per epoch."""
    generator = torch.Generator().manual_seed(seed)
    out: list[int] = []
    for _ in range(epochs):
        idx = torch.randperm(n, generator=generator).tolist()
        chunks = [idx[i : i + block] for i in range(0, len(idx), block)]
        for chunk in (c for c in chunks if len(c) == block):
            for index in chunk:
                out.extend([index] * repeats)
    return out


@pytest.mark.parametrize("n,block", [(7000, 12), (50, 12), (36, 12), (13, 4)])
def test_trl_order_equals_the_sampler_over_epochs(n, block):
    order = TrlPromptOrder(n, seed=42, block=block)
    steps = 3 * (n // block)
    ours = [i for _ in range(steps) for i in order.next_indices(block) for _ in range(6)]
    assert ours == trl_sampler_order(n, 42, block, epochs=3, repeats=6)


def test_trl_order_resumes_exactly():
    whole = TrlPromptOrder(50, seed=42, block=12)
    first = [whole.next_indices(12) for _ in range(6)]  # crosses into epoch 1 (4 blocks an epoch)
    partial = TrlPromptOrder(50, seed=42, block=12)
    for _ in range(5):
        partial.next_indices(12)
    resumed = make_prompt_order("trl", 50, seed=42, block=12)
    resumed.restore(partial.state())
    assert partial.state() == {"epoch": 1, "offset": 12, "kind": "trl"}
    assert resumed.next_indices(12) == first[5]
    assert resumed.next_indices(12) == whole.next_indices(12)


def test_resuming_with_another_order_is_refused():
    numpy_order = make_prompt_order("numpy", 50, seed=42, block=12)
    with pytest.raises(ValueError, match="prompt_order='numpy' but this run uses 'trl'"):
        TrlPromptOrder(50, seed=42, block=12).restore(numpy_order.state())
    with pytest.raises(ValueError, match="prompt_order='trl'"):
        numpy_order.restore({"epoch": 0, "offset": 0, "kind": "trl"})
    numpy_order.restore({"epoch": 0, "offset": 3})  # a checkpoint from before prompt_order


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="fewer than prompts_per_step=12"):
        TrlPromptOrder(5, seed=42, block=12)
    with pytest.raises(ValueError, match="blocks of 12"):
        TrlPromptOrder(50, seed=42, block=12).next_indices(6)
    with pytest.raises(ValueError, match="prompt_order='shuffle'"):
        make_prompt_order("shuffle", 50, seed=42, block=12)
