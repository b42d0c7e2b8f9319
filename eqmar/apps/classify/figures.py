"""Accuracy-versus-rotation-angle figure of the rotated-classification experiment."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eqmar.utils import require_extra

require_extra(__name__, "matplotlib")

__all__ = ["plot_accuracy_curves"]


def plot_accuracy_curves(curves: Mapping[str, Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Write a PNG with one accuracy-vs-angle line per arm.

    Args:
        curves: ``{arm: {"angles": [...], "accuracy": [...]}}`` (the ``curve`` entry of
            :func:`~eqmar.apps.classify.evaluation.evaluate_rotations`), accuracies in [0, 1].
        path: output PNG (parent folders are created).
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not curves:
        raise ValueError("plot_accuracy_curves: no curves to plot.")
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    for angle in range(0, 361, 90):  # the angles C4 covers exactly
        ax.axvline(angle, color="0.85", lw=0.8, zorder=0)
    for arm, curve in curves.items():
        ax.plot(curve["angles"], [100.0 * a for a in curve["accuracy"]], marker="o", ms=3, lw=1.4, label=arm)
    ax.set_xlim(0, 360)
    ax.set_xticks(range(0, 361, 45))
    ax.set_ylim(0, 100)
    ax.set_xlabel("test rotation (degrees)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title or "Accuracy under rotation (trained upright)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
