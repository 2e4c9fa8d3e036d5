"""Run outputs that grow every step: metrics.jsonl, TensorBoard events, completions.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class RunLog:
    """Appends one JSON object per optimizer step; mirrors scalars to TensorBoard.

    `enabled=False` (every process of a multi-process job but the writer) makes every method
    a no-op, so the run's outputs are written once.
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.dir = Path(output_dir)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after `step` (a resumed run redoes those steps), and a line cut
        short by a crash."""
        for name in (METRICS_FILE, COMPLETIONS_FILE):
            path = self.dir / name
            if path.is_file():
                keep = [line for line in path.read_text().splitlines() if _step_of(line) is not None
                        and _step_of(line) <= step]
                path.write_text("".join(line + "\n" for line in keep))

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def log_completions(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        if not self.enabled:
            return
        with open(self.dir / COMPLETIONS_FILE, "a") as f:
            for sample in samples:
                f.write(json.dumps({"step": step, **{k: _jsonable(v) for k, v in sample.items()}}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def outputs_summary(output_dir: str | Path, step: int, exported: str | Path | None = None,
                    tensorboard: bool = False) -> str:
    """The lines a finished (or stopped) run prints: where its outputs are and how to look at them."""
    out = Path(output_dir)
    lines = [f"run outputs in {out} (step {step}):"]
    if exported is not None:
        lines.append(f"  Hugging Face model: {exported}")
    lines.append(f"  checkpoints:        {out / 'checkpoints'}")
    lines.append(f"  metrics:            {out / METRICS_FILE} (plot: python -m openrs_jax.plot {out})")
    if (out / COMPLETIONS_FILE).is_file():
        lines.append(f"  sample completions: {out / COMPLETIONS_FILE}")
    if tensorboard:
        lines.append(f"  TensorBoard:        tensorboard --logdir {out / 'tensorboard'}")
    return "\n".join(lines)


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl."""
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
