"""Training checkpoints with orbax: train state (params, optimizer, step) plus run metadata.

Checkpoints live in `output_dir/checkpoints/<step>/`. Orbax writes each one into a temporary
folder and renames it when complete, so a crash or SIGKILL during a save leaves the previous
checkpoint as the latest loadable one. Metadata (data order position, RNG, config, model
config) is JSON beside the state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from openrs_jax.errors import UserError

log = logging.getLogger("openrs_jax.checkpoint")


class Checkpointer:
    """Saves and restores `(state, metadata)` pairs keyed by optimizer step."""

    def __init__(self, output_dir: str | Path, keep: int = 3):
        self.directory = Path(output_dir).expanduser().resolve() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, metadata: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        """Writes checkpoint `step` (atomically: complete or absent); `extra` holds further
        named array trees (e.g. a refreshed reference policy)."""
        items = {name: ocp.args.StandardSave(tree) for name, tree in (extra or {}).items()}
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata), **items
                ),
                force=True,
            )
            self.manager.wait_until_finished()
        except OSError as e:
            raise UserError(
                f"could not save checkpoint {step} in {self.directory} ({e.strerror or e}); "
                "free disk space or choose another output_dir; the previous checkpoint is intact"
            ) from None
        log.info("saved checkpoint %d to %s", step, self.directory / str(step))

    def restore_metadata(self, step: int | None = None) -> dict[str, Any]:
        step = self._resolve(step)
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores the state into the shapes/shardings of `abstract_state`, and the metadata."""
        step = self._resolve(step)
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except (ValueError, KeyError) as e:
            raise UserError(
                f"checkpoint {self.directory / str(step)} does not fit this model/optimizer "
                f"({str(e).splitlines()[0][:300]}); resume with the config it was written with"
            ) from None
        return restored["state"], restored["meta"]

    def restore_extra(self, name: str, abstract: Any, step: int | None = None) -> Any:
        """Restores the `extra` tree `name` saved with checkpoint `step` into `abstract`'s layout."""
        step = self._resolve(step)
        return self.manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(abstract)}))[name]

    def _resolve(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"no checkpoint in {self.directory} to resume from")
        return step

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
