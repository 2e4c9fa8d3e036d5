"""Shared command-line plumbing: one-line errors instead of tracebacks, quiet library logs.

Library code raises ordinary exceptions with messages that name the problem and the fix
(ValueError for a bad value, FileNotFoundError for a missing file, ...); `exit_on_user_error`,
the one wrapper of every command-line entry point, prints them as `error: ...` on one line.
`OPENRS_TRACEBACK=1` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, TypeVar


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


# What a user can fix: bad values (ValueError), files (OSError: missing, unreadable, disk full).
USER_ERRORS = (ValueError, OSError)
TRACEBACK_ENV = "OPENRS_TRACEBACK"
OUR_CODE = tuple(Path(__file__).resolve().parent.parent / name for name in ("openrs_jax", "conversion"))


def error_line(e: BaseException) -> str:
    """`e` as one line; an error raised outside this project's code (a library's) says where it came
    from and how to see the traceback, for a bug report."""
    text = " ".join(str(e).split()) or type(e).__name__
    frames = traceback.extract_tb(e.__traceback__)  # the last one raised it
    where = Path(frames[-1].filename).resolve() if frames else OUR_CODE[0]
    if not any(root in where.parents for root in OUR_CODE):
        text += f" ({type(e).__name__} in {where.name}; {TRACEBACK_ENV}=1 prints the traceback)"
    return f"error: {text}"


def exit_on_user_error(main: F) -> F:
    """Wraps a CLI entry point: library logs are quieted (`quiet_library_logs`) and an error the
    user can fix (`USER_ERRORS`) prints one `error: ...` line and exits with status 2
    (`OPENRS_TRACEBACK=1`: the traceback instead)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        quiet_library_logs()
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
                raise
            print(error_line(e), file=sys.stderr)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def add_queue_arguments(p: argparse.ArgumentParser, batch_size: int, unit: str) -> None:
    """`--batch_size` (`unit` per static sampler call) and `--slots` (rows in flight in the slot
    engine, `openrs_jax.core.engine`): every command whose work is a queue of prompts (evaluate,
    curate difficulty)."""
    p.add_argument("--batch_size", type=int, default=batch_size,
                   help=f"{unit} per sampler call with static batches (--slots 0; default {batch_size})")
    p.add_argument("--slots", type=int, default=None,
                   help="rows in flight in the slot engine (continuous batching, one device; default: as many "
                        "as fit in the device's free memory, 8 on a CPU); 0 = static batches of --batch_size, "
                        "the default on several devices")

