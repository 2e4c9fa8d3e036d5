"""Training checkpoints with orbax: train state (params, optimizer, step) plus run metadata.

Checkpoints live in `output_dir/checkpoints/<step>/`. Orbax writes each one into a temporary
folder and renames it when complete, so a crash or SIGKILL during a save leaves the previous
checkpoint as the latest loadable one. Metadata (data order position, RNG, config, model
config) is JSON beside the state.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import orbax.checkpoint as ocp


log = logging.getLogger("openrs_jax.core.checkpoint")

CHECKPOINTS = "checkpoints"  # the folder of a run that holds one folder per saved step
STATE, META = "state", "meta"  # the two items of a step folder (train state, JSON metadata)
# Orbax writes a step into `<step>.orbax-checkpoint-tmp...` and renames it when complete.
PARTIAL_MARK = ".orbax-checkpoint-tmp"


def complete_steps(checkpoints_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in `checkpoints_dir` (folders named by their step), ascending."""
    if not checkpoints_dir.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoints_dir.iterdir() if p.name.isdigit() and (p / STATE).is_dir())


def partial_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Folders of saves that never completed (interrupted by a kill or a second Ctrl-C)."""
    if not checkpoints_dir.is_dir():
        return []
    return sorted(p for p in checkpoints_dir.iterdir() if PARTIAL_MARK in p.name)


def is_step_dir(path: Path) -> bool:
    """Whether `path` is one complete training checkpoint (`RUN/checkpoints/<step>`)."""
    return path.name.isdigit() and (path / STATE).is_dir() and (path / META).is_dir()


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    # Orbax warns through absl that a bare item folder has no step metadata: true and harmless here.
    import absl.logging

    level = absl.logging.get_verbosity()
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        yield
    finally:
        absl.logging.set_verbosity(level)


def read_step_metadata(step_dir: Path) -> dict[str, Any]:
    """The JSON metadata saved beside a step's train state (step, data order, model config)."""
    with _quiet_absl(), ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
        return ckptr.restore(step_dir / META)


def read_step_params(step_dir: Path) -> dict[str, Any]:
    """Only the parameters of a step's train state, as numpy arrays (the optimizer state is not read)."""
    import jax

    with _quiet_absl(), ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.metadata(step_dir / STATE).item_metadata.tree
        if "params" not in tree:
            raise ValueError(f"{step_dir / STATE} holds no parameters (found: {', '.join(sorted(tree))})")
        # A partial restore of the `params` subtree: orbax reads those arrays and nothing else.
        item = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree["params"])}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = ckptr.restore(
            step_dir / STATE,
            args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
        )
    return restored["params"]


def remove_partial_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Deletes the folders of interrupted saves (they can never be loaded) and says so.

    Only process 0 deletes in a multi-process job (they share the folder); returns the folders.
    """
    import jax

    partial = partial_checkpoints(checkpoints_dir)
    if partial and jax.process_index() == 0:
        log.warning("removing %d incomplete checkpoint folder(s) left by an interrupted save: %s",
                    len(partial), ", ".join(p.name for p in partial))
        for p in partial:
            shutil.rmtree(p, ignore_errors=True)
    return partial


class Checkpointer:
    """Saves and restores `(state, metadata)` pairs keyed by optimizer step."""

    def __init__(self, output_dir: str | Path, keep: int = 3):
        self.directory = Path(output_dir).expanduser().resolve() / CHECKPOINTS
        remove_partial_checkpoints(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

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
            raise ValueError(
                f"could not save checkpoint {step} in {self.directory} ({e.strerror or e}); "
                "free disk space or choose another output_dir; the previous checkpoint is intact"
            ) from None
        log.info("saved checkpoint %d to %s", step, self.directory / str(step))

    def restore_metadata(self, step: int | None = None) -> dict[str, Any]:
        return self.manager.restore(self._resolve(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

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
            raise ValueError(
                f"checkpoint {self.directory / str(step)} does not fit this model/optimizer "
                f"({str(e).splitlines()[0][:300]}); resume with the config it was written with"
            ) from None
        return restored["state"], restored["meta"]

    def restore_extra(self, name: str, abstract: Any, step: int | None = None) -> Any:
        """Restores the `extra` tree `name` saved with checkpoint `step` into `abstract`'s layout."""
        args = ocp.args.Composite(**{name: ocp.args.StandardRestore(abstract)})
        return self.manager.restore(self._resolve(step), args=args)[name]

    def _resolve(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"no checkpoint in {self.directory} to resume from")
        return step

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
