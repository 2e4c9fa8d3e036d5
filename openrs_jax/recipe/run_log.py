"""Run outputs that grow every step: metrics.jsonl, TensorBoard events, completions.jsonl,
and optionally Weights & Biases (`report_to` includes "wandb"; same metric names)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from openrs_jax.files import append_jsonl, read_jsonl, write_jsonl

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # a resumed run continues the same W&B run
REPORT_TO = ("tensorboard", "wandb")


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ValueError("report_to includes 'wandb' but the wandb package is not installed: "
                         "pip install 'openrs-jax[wandb]' (or wandb), or remove wandb from report_to") from None
    return wandb


def check_report_to(report_to: Sequence[str]) -> None:
    """Refuses unknown sinks, and wandb when the package is missing (before any long work)."""
    unknown = [name for name in report_to if name not in REPORT_TO]
    if unknown:
        raise ValueError(f"report_to: unknown {unknown}; valid: {', '.join(REPORT_TO)}")
    if "wandb" in report_to:
        _import_wandb()


def start_wandb(output_dir: Path, project: str, config: Mapping[str, Any] | None = None) -> Any:
    """The W&B run of output_dir (its id is kept there, so resuming continues it)."""
    wandb = _import_wandb()
    id_file = output_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else None
    try:
        run = wandb.init(project=project, name=output_dir.name, dir=str(output_dir), id=run_id,
                         resume="allow", config=dict(config or {}))
    except Exception as e:  # noqa: BLE001 - login, network and permission errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"wandb could not start a run ({type(e).__name__}: {first}); run `wandb login`, set WANDB_API_KEY, "
            "or WANDB_MODE=offline, or remove wandb from report_to"
        ) from None
    id_file.write_text(run.id)
    return run


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def _step_of(record: Any) -> int | None:
    try:
        return int(record["step"])
    except (ValueError, KeyError, TypeError):
        return None


class RunLog:
    """Appends one JSON object per optimizer step; mirrors scalars to TensorBoard.

    `enabled=False` (every process of a multi-process job but the writer) makes every method
    a no-op, so the run's outputs are written once.
    """

    def __init__(self, output_dir: str | Path, tensorboard: bool = True, enabled: bool = True,
                 wandb_project: str | None = None, wandb_config: Mapping[str, Any] | None = None):
        self.dir = Path(output_dir)
        self.enabled = enabled
        self._tb = None
        self._wandb: Any = None  # the W&B run
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        if wandb_project is not None:
            self._wandb = start_wandb(self.dir, wandb_project, wandb_config)

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after `step` (a resumed run redoes those steps), and a line cut
        short by a crash."""
        for name in (METRICS_FILE, COMPLETIONS_FILE):
            path = self.dir / name
            if path.is_file():
                keep = [r for r in read_jsonl(path, skip_bad=True) if _step_of(r) is not None and _step_of(r) <= step]
                write_jsonl(path, keep)

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        append_jsonl(self.dir / METRICS_FILE, [record])
        scalars = {key: value for key, value in record.items()
                   if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def log_completions(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.dir / COMPLETIONS_FILE,
                     [{"step": step, **{k: _jsonable(v) for k, v in sample.items()}} for sample in samples])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


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
    """All records of a run's metrics.jsonl (of a run still going: but the line being written)."""
    path = Path(output_dir) / METRICS_FILE
    return read_jsonl(path, skip_bad=True) if path.is_file() else []
