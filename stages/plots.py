"""Pictures for metadata and MLflow: histograms and curves as PNG files (matplotlib, no display)."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _figure() -> tuple[Figure, Axes]:
    # A bare Figure (no pyplot state) with fixed margins: tight_layout would render it twice.
    fig = Figure(figsize=(6, 3))
    return fig, fig.add_axes((0.11, 0.16, 0.86, 0.74))


def histogram(values: Sequence[int] | np.ndarray, limit: int, path: Path, title: str) -> Path:
    fig, ax = _figure()
    counts, edges = np.histogram(values, bins=40)
    ax.stairs(counts, edges, fill=True)  # one artist, not a patch per bin: a third faster to draw
    ax.axvline(limit, color="red", linestyle="--", label=f"block size {limit}")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=80)
    return path


def curves(series: dict[str, tuple[list[int], list[float]]], path: Path, title: str, ylabel: str) -> Path:
    """One line per series (label -> (steps, values)) on a shared step axis; empty series are left out."""
    fig, ax = _figure()
    for label, (steps, values) in series.items():
        if steps:
            ax.plot(steps, values, marker="o", markersize=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if sum(bool(steps) for steps, _ in series.values()) > 1:
        ax.legend()
    fig.savefig(path, dpi=80)
    return path


def reward_and_kl(
    reward: tuple[list[int], list[float], list[float]], kl: tuple[list[int], list[float]], path: Path
) -> Path:
    """An RL run at a glance: the mean reward (steps, means, stds) with a band of one std across the step's
    completions on the left axis, and the KL to the reference (steps, values) on the right, on its own
    scale (KL starts at 0 and stays small); no KL line where beta is 0."""
    fig = Figure(figsize=(6, 3))
    ax = fig.add_axes((0.11, 0.16, 0.76, 0.74))  # room on the right for the KL axis
    steps, means, stds = reward
    ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)], alpha=0.2, color="C0")  # fmt: skip
    ax.plot(steps, means, marker="o", markersize=3, color="C0")
    ax.set_xlabel("step")
    ax.set_ylabel("reward (mean ± std)", color="C0")
    ax.set_title("reward and KL to the fine-tuned model")
    if kl[0]:
        right = ax.twinx()
        right.plot(*kl, marker="s", markersize=3, color="C3")
        right.set_ylabel("KL", color="C3")
    fig.savefig(path, dpi=80)
    return path
