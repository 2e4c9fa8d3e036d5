"""Plots a run's curves: `python -m openrs_jax.plot OUTPUT_DIR [--out FILE.png]`.

Reward (total and per function), completion length, KL and learning rate against steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from openrs_jax.cli import exit_on_user_error
from openrs_jax.recipe.run_log import METRICS_FILE, read_metrics


# Scorer counters logged under rewards/ that are not reward functions.
_COUNTERS = {"timeouts", "errors", "worker_restarts", "unparsable_golds", "seconds"}


def plot_run(output_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes the PNG (default OUTPUT_DIR/curves.png) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(output_dir)
    if not records:
        raise ValueError(f"no {METRICS_FILE} with any step in {output_dir}: is it a training output_dir?")
    steps = [r["step"] for r in records]

    def series(key: str) -> list[float]:
        return [float(r.get(key, float("nan"))) for r in records]

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    ax = axes[0, 0]
    ax.plot(steps, series("reward"), label="reward (weighted sum)", linewidth=2)
    for key in sorted(k for k in records[-1] if k.startswith("rewards/") and k.split("/", 1)[1] not in _COUNTERS):
        ax.plot(steps, series(key), label=key, alpha=0.8)
    ax.set_title("reward")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.plot(steps, series("completion_length"), label="mean")
    ax.fill_between(steps, series("completion_length_min"), series("completion_length_max"), alpha=0.2, label="min-max")
    ax.set_title("completion length (tokens)")
    ax.legend(fontsize=8)
    for ax, key, title in ((axes[1, 0], "kl", "KL to reference"), (axes[1, 1], "learning_rate", "learning rate")):
        ax.plot(steps, series(key))
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.suptitle(str(output_dir))
    fig.tight_layout()
    out = Path(out) if out else Path(output_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m openrs_jax.plot", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="a training run's output_dir (holds metrics.jsonl)")
    parser.add_argument("--out", default=None, help="PNG path (default OUTPUT_DIR/curves.png)")
    args = parser.parse_args(argv)
    if not Path(args.output_dir).is_dir():
        raise ValueError(f"{args.output_dir} is not a directory")
    print(f"wrote {plot_run(args.output_dir, args.out)}")


if __name__ == "__main__":
    main()
