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
    from eqmar.engines.report import plot_image_grid

    if not rows:
        raise ValueError("plot_mar_examples: no rows to plot.")
    in_hu = [{name: mu_to_hu(_image(image)) for name, image in row.items()} for row in rows]
    return plot_image_grid(
        in_hu, path, captions=captions, title=title or f"window [{window[0]:g}, {window[1]:g}] HU",
        value_range=window, cell_size=(2.4, 2.5),
    )
