"""Shared command-line plumbing: one-line errors instead of tracebacks."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

from openrs_jax.errors import UserError

F = TypeVar("F", bound=Callable[..., object])


def exit_on_user_error(main: F) -> F:
    """Wraps a CLI entry point: a `UserError` prints `error: ...` and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]
