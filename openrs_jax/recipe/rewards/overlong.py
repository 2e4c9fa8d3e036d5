"""DAPO's soft overlong punishment (Yu et al. 2025, arXiv 2503.14476, section 3.4), in tokens.

    R(L) = 0                                  if L <= L_max - L_cache
         = ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
         = -1                                 if L > L_max

L is the completion's token count (EOS included). It is a reward like the others (added with
its weight to the total), but it needs the token count rather than the text, so the scorer
computes it in the caller from the sampler's lengths instead of in a worker.
"""

from __future__ import annotations


def soft_overlong_reward(num_tokens: int, *, max_len: int = 4096, cache_len: int = 512) -> float:
    """0 up to max_len - cache_len tokens, then linearly down to -1 at max_len, -1 beyond."""
    expected = max_len - cache_len
    if num_tokens <= expected:
        return 0.0
    if num_tokens <= max_len:
        return (expected - num_tokens) / cache_len
    return -1.0


def check_soft_overlong(max_len: int = 4096, cache_len: int = 512, **_: int) -> None:
    """Rejects a ramp that is empty or longer than the completion budget."""
    if not 0 < cache_len <= max_len:
        raise ValueError(
            f"soft_overlong: cache_len={cache_len} must be in [1, max_len={max_len}] "
            "(the punishment ramps over the last cache_len tokens before max_len)"
        )
