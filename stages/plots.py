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
