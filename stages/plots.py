"""Pictures for metadata and MLflow: histograms and curves as PNG files (matplotlib, no display)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def histogram(values: list[int], limit: int, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(values, bins=40)
    ax.axvline(limit, color="red", linestyle="--", label=f"block size {limit}")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def curve(steps: list[int], values: list[float], path: Path, title: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(steps, values, marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
