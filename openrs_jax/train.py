"""Train with GRPO: `python -m openrs_jax.train --config configs/exp2.py [--config.key=value ...]`.

Every key of the config can be overridden on the command line, e.g.
`--config.model_path=/models/r1-1.5b --config.learning_rate=2e-6 --config.resume=True`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from openrs_jax.cli import exit_on_user_error
from openrs_jax.errors import UserError


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """Splits argv into the config path and its `key=value` overrides."""
    parser = argparse.ArgumentParser(prog="python -m openrs_jax.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file with get_config(), e.g. configs/exp2.py")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            raise UserError(f"unknown argument {item!r}; overrides look like --config.key=value")
        overrides.append(item[len("--config."):])
    return args.config, overrides


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from openrs_jax.config import load_config

    path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = load_config(path, overrides)
    from openrs_jax import distributed

    # Before anything touches a device: JAX cannot join a job once its backend is up.
    distributed.maybe_initialize(
        config.coordinator_address, config.num_processes, config.process_id,
        heartbeat_timeout_s=config.heartbeat_timeout_s, init_timeout_s=config.init_timeout_s,
    )
    from openrs_jax.trainer import GRPOTrainer

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
