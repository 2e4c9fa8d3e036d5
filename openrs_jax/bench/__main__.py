"""Entry point of `python -m openrs_jax.bench`: runs a subcommand, writes its JSON to --out and
prints a short summary of it."""

from __future__ import annotations

import argparse
import datetime
import importlib
import platform
import sys
from pathlib import Path

from openrs_jax.bench import SUBCOMMANDS
from openrs_jax.bench.summary import summarize
from openrs_jax.cli import exit_on_user_error
from openrs_jax.files import atomic_write_json


def _environment() -> dict:
    import jax

    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m openrs_jax.bench"] + sys.argv[1:]),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "host": platform.processor() or platform.machine(),
        "jax_version": jax.__version__,
    }


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m openrs_jax.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] == "openrs_jax":
                raise
            # An optional package is missing here (e.g. math-verify on a bare GPU image):
            # the other subcommands still work.
            print(f"note: `bench {name}` is unavailable: {e.name} is not installed", file=sys.stderr)
            continue
        modules[name] = module
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.add_arguments(p)
        p.add_argument("--out", type=Path, required=True, help="JSON file to write the results to")
    args = parser.parse_args(argv)
    result = {"benchmark": args.command, **_environment(), **modules[args.command].run(args)}
    atomic_write_json(args.out, result)
    # The console gets the figures that matter; every field stays in the JSON.
    print(summarize(result, args.out))
    return result


if __name__ == "__main__":
    main()
