"""Shared command-line plumbing: one-line errors instead of tracebacks, quiet library logs."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable, TypeVar

from openrs_jax.errors import UserError

F = TypeVar("F", bound=Callable[..., object])

# Libraries whose INFO lines are noise to a user: JAX's backend probing ("Unable to initialize
# backend 'tpu'" on every CPU or GPU machine without libtpu), absl, orbax's checkpoint chatter.
QUIET_LOGGERS = ("absl", "jax._src", "orbax")


def quiet_library_logs() -> None:
    """Shows only warnings and errors of `QUIET_LOGGERS`, whatever level the command logs at."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def setup_logging(fmt: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """INFO lines of openrs_jax on stderr, library chatter hidden."""
    logging.basicConfig(level=logging.INFO, format=fmt)
    quiet_library_logs()


def add_hidden_alias(parser: argparse.ArgumentParser, alias: str, action: argparse.Action) -> None:
    """Lets `alias` (an older spelling, e.g. `--num-completions`) set the same value as `action`
    without listing it in --help, so commands written with it keep working."""
    kwargs = {"dest": action.dest, "help": argparse.SUPPRESS, "default": argparse.SUPPRESS}
    if action.nargs == 0:  # store_true / store_false
        parser.add_argument(alias, action="store_const", const=action.const, **kwargs)
    else:
        parser.add_argument(alias, type=action.type, choices=action.choices, nargs=action.nargs, **kwargs)


def exit_on_user_error(main: F) -> F:
    """Wraps a CLI entry point: library logs are quieted (`quiet_library_logs`) and a `UserError`
    prints `error: ...` and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        quiet_library_logs()
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def add_slots_argument(p: argparse.ArgumentParser) -> None:
    """`--slots`: rows in flight in the slot engine (`openrs_jax.core.engine`), shared by every
    command whose work is a queue of prompts (evaluate, curate difficulty)."""
    p.add_argument("--slots", type=int, default=None,
                   help="rows in flight in the slot engine (continuous batching, one device; default: as many "
                        "as fit in the device's free memory, 8 on a CPU); 0 = static batches of --batch_size, "
                        "the default on several devices")

