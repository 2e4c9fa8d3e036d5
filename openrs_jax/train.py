"""Train with GRPO: `python -m openrs_jax.train --config configs/exp2.py [--config.key=value ...]`.

Every key of the config can be overridden on the command line, e.g.
`--config.model_path=/models/r1-1.5b --config.learning_rate=2e-6 --config.resume=True`.
`--show_config` lists every key with its value, default and meaning, and exits.
"""

from __future__ import annotations

import argparse
import sys

from openrs_jax.cli import exit_on_user_error, setup_logging
from openrs_jax.errors import UserError


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """Splits argv into the config path and its `key=value` overrides."""
    path, overrides, _ = parse_command(argv)
    return path, overrides


def parse_command(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """Splits argv into the config path, its `key=value` overrides and whether to show the config."""
    parser = argparse.ArgumentParser(
        prog="python -m openrs_jax.train", description=__doc__.splitlines()[0],
        epilog="--config.KEY=VALUE overrides any key; --show_config lists them all (with --config: "
        "that config's values).",
    )
    parser.add_argument("--config", help="config file with get_config(), e.g. configs/exp2.py")
    parser.add_argument("--show_config", action="store_true",
                        help="print every config key with its value, default and meaning, then exit")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            raise UserError(f"unknown argument {item!r}; overrides look like --config.key=value")
        overrides.append(item[len("--config."):])
    if args.config is None and not args.show_config:
        raise UserError("--config is required, e.g. --config configs/tiny.py (--show_config lists every key)")
    return args.config, overrides, args.show_config


def show_config(path: str | None, overrides: list[str]) -> str:
    """Every key with its value in the config at `path` (the defaults without one) and meaning."""
    from openrs_jax.recipe.config import apply_overrides, base_config, format_keys, load_config

    config = load_config(path, overrides) if path else apply_overrides(base_config(), overrides)
    return format_keys(config)


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    path, overrides, show = parse_command(sys.argv[1:] if argv is None else argv)
    if show:
        print(show_config(path, overrides))
        return {}
    setup_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    from openrs_jax.recipe.config import load_config

    config = load_config(path, overrides)
    from openrs_jax.core import distributed

    # Before anything touches a device: JAX cannot join a job once its backend is up.
    distributed.maybe_initialize(
        config.coordinator_address, config.num_processes, config.process_id,
        heartbeat_timeout_s=config.heartbeat_timeout_s, init_timeout_s=config.init_timeout_s,
    )
    from openrs_jax.recipe.trainer import GRPOTrainer

    trainer = None
    try:
        trainer = GRPOTrainer(config)
        return trainer.train()
    except Exception as e:
        # A collective that failed in a multi-process job means a peer is gone: say so and exit
        # now (a UserError is raised by every process alike and exits the usual way).
        if distributed.is_multiprocess() and not isinstance(e, UserError):
            distributed.abort(e, output_dir=config.output_dir, step=trainer.step if trainer else None)
        raise


if __name__ == "__main__":
    main()
