"""Side-by-side MAR figures in the usual display window."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqmar.ct.physics import mu_to_hu

__all__ = ["mu_to_hu", "plot_mar_examples", "DISPLAY_WINDOW_HU"]

DISPLAY_WINDOW_HU = (-175.0, 275.0)


def _image(value: Any) -> np.ndarray:
    array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    return np.squeeze(array).astype(np.float32)


def plot_mar_examples(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    window: tuple[float, float] = DISPLAY_WINDOW_HU,
    captions: Sequence[Mapping[str, str]] | None = None,
    title: str | None = None,
) -> Path:
    """Write a grid of µ images (one row per example, one column per method) in an HU window.

    Args:
        rows: per example, ``{column name: (H, W) µ image}``, e.g. input, LI, each arm, ground truth.
        path: output PNG.
        window: display window in HU.
        captions: optional per-cell text (e.g. PSNR/SSIM) with the same keys.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_mar_examples: no rows to plot.")
    columns = list(rows[0])
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.4 * len(columns), 2.5 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(mu_to_hu(_image(row[name])), cmap="gray", vmin=window[0], vmax=window[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if captions is not None and name in captions[r]:
                ax.set_xlabel(captions[r][name], fontsize=7)
    fig.suptitle(title or f"window [{window[0]:g}, {window[1]:g}] HU", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
