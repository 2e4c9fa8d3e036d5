"""Train with GRPO: `python -m openrs_jax.train --config configs/exp2.py [--config.SECTION.KEY=VALUE ...]`.

Every key of the config can be overridden on the command line as --config.SECTION.KEY=VALUE, e.g.
`--config.model.path=/models/r1-1.5b --config.grpo.learning_rate=2e-6 --config.run.resume=True`.
`--show_config` lists every key with its value, default and meaning, and exits.
"""

from __future__ import annotations

import sys

from absl import flags

from openrs_jax.cli import USER_ERRORS, exit_on_user_error, setup_logging

PROG = "python -m openrs_jax.train"


def parse_command(argv: list[str]) -> tuple[flags.FlagValues, bool]:
    """Parses `--config FILE`, its `--config.SECTION.KEY=VALUE` overrides and `--show_config`
    (absl flags, `ml_collections.config_flags`); returns the flags and whether to show the config."""
    from openrs_jax.recipe import config as config_module

    argv = [PROG, *argv]
    if "--help" in argv or "-h" in argv:
        print(f"usage: {PROG} --config FILE [--config.SECTION.KEY=VALUE ...] [--show_config]\n\n{__doc__}")
        sys.exit(0)
    fv = flags.FlagValues()
    # Without --config the defaults (this module's get_config): --show_config lists them.
    config_module.define_config_flag(fv, argv, default=config_module.__file__)
    flags.DEFINE_boolean("show_config", False, "print every config key with its value, default and meaning, then exit",
                         flag_values=fv)
    rest = config_module.parse_flags(fv, argv)[1:]
    if rest:
        raise ValueError(f"unexpected argument {rest[0]!r}; overrides look like --config.section.key=value")
    if not fv["config"].present and not fv.show_config:
        raise ValueError("--config is required, e.g. --config configs/tiny.py (--show_config lists every key)")
    return fv, fv.show_config


@exit_on_user_error
def main(argv: list[str] | None = None) -> dict:
    from openrs_jax.recipe.config import config_from_flags, format_keys

    fv, show = parse_command(sys.argv[1:] if argv is None else argv)
    config = config_from_flags(fv)
    if show:
        print(format_keys(config))
        return {}
    setup_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    from openrs_jax.core import distributed

    # Before anything touches a device: JAX cannot join a job once its backend is up.
    distributed.maybe_initialize(
        config.distributed.coordinator_address, config.distributed.num_processes, config.distributed.process_id,
        heartbeat_timeout_s=config.distributed.heartbeat_timeout_s, init_timeout_s=config.distributed.init_timeout_s,
    )
    from openrs_jax.recipe.trainer import GRPOTrainer

    trainer = None
    try:
        trainer = GRPOTrainer(config)
        return trainer.train()
    except Exception as e:
        # A collective that failed in a multi-process job means a peer is gone: say so and exit
        # now (a user error is raised by every process alike and exits the usual way).
        if distributed.is_multiprocess() and not isinstance(e, USER_ERRORS):
            distributed.abort(e, output_dir=config.run.output_dir, step=trainer.step if trainer else None)
        raise


if __name__ == "__main__":
    main()
