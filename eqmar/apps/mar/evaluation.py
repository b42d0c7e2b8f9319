"""Score MAR predictions with the SynDeepLesion metric, grouped by test-mask size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from eqmar.metrics import MARScores, batch_mar_scores

__all__ = ["evaluate_mar", "network_predictor", "input_predictor", "region_errors", "format_region_table", "REGIONS"]

Predictor = Callable[[Mapping[str, Any]], torch.Tensor]


def network_predictor(
    network: nn.Module, device: str | torch.device = "cpu", image_key: str = "image", roi: int | None = None
) -> Predictor:
    """Prediction function of a network on full images (eval mode, no gradients).

    Args:
        network: the MAR network.
        device: where to run it.
        image_key: the network input's key in a batch.
        roi: run on overlapping patches of this size (see :mod:`eqmar.apps.mar.sliding`); None: whole images.
    """
    from eqmar.apps.mar.sliding import mar_forward

    @torch.no_grad()
    def predict(batch: Mapping[str, Any]) -> torch.Tensor:
        network.eval()
        return mar_forward(network, batch[image_key].to(device), roi)

    return predict


def input_predictor(key: str) -> Predictor:
    """A "method" that returns an input unchanged, e.g. ``"LI_CT"`` or ``"ma_CT"`` as baselines."""
    return lambda batch: batch[key]


def evaluate_mar(
    loader: Iterable[Mapping[str, Any]],
    predict: Predictor,
    gt_key: str = "gt",
    mask_key: str = "mask",
    index_key: str = "mask_index",
) -> MARScores:
    """PSNR/SSIM of ``predict`` over a test loader, grouped G1..G5 by ``mask_index``.

    Args:
        loader: batches with the ground truth, metal mask and test-mask index.
        predict: ``batch -> (B, 1, H, W)`` prediction in µ.
        gt_key: ground-truth key.
        mask_key: metal-mask key.
        index_key: test-mask index key.
    """
    psnr, ssim, index = [], [], []
    for batch in loader:
        pred = predict(batch).detach().float().cpu()
        p, s = batch_mar_scores(pred, batch[gt_key].float(), batch[mask_key].float())
        psnr.append(p.reshape(-1))
        ssim.append(s.reshape(-1))
        index.append(torch.as_tensor(batch[index_key]).reshape(-1))
    if not psnr:
        raise ValueError("evaluate_mar: the loader yielded no batch.")
    return MARScores.from_pairs(torch.cat(psnr), torch.cat(ssim), torch.cat(index))


#: Regions of :func:`region_errors`: ``name -> (min distance, max distance, tissue)`` in pixels from
#: the metal; tissue ``"soft"`` is ground truth below :data:`BONE_HU` (soft tissue, fat, lung, air),
#: ``"bone"`` at or above it, ``"any"`` both.
REGIONS: dict[str, tuple[float, float, str]] = {
    "metal edge (≤ 2 px)": (0.0, 2.0, "any"),
    "near (2-5 px)": (2.0, 5.0, "any"),
    "5-20 px": (5.0, 20.0, "any"),
    "far soft tissue/air (> 20 px)": (20.0, float("inf"), "soft"),
    "far bone (> 20 px)": (20.0, float("inf"), "bone"),
}
BONE_HU = 200.0


def region_errors(
    loader: Iterable[Mapping[str, Any]],
    predict: Predictor,
    gt_key: str = "gt",
    mask_key: str = "mask",
) -> dict[str, dict[str, float]]:
    """Mean signed error and RMSE in HU per region around the metal (see :data:`REGIONS`).

    A MAR network can beat LI in SSIM and still lose in PSNR by shifting intensities; the signed
    error by distance from the metal shows such an offset, and the metal-edge band shows halos.
    Errors are in HU of the unclipped µ maps (``HU = (µ / 0.192 − 1) · 1000``), metal excluded.

    Returns:
        ``region -> {"mean": signed mean HU, "rmse": HU, "pixels": count}`` (``nan`` for an empty region).
    """
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    from eqmar.ct.physics import mu_to_hu

    sums = {name: [0.0, 0.0, 0] for name in REGIONS}
    for batch in loader:
        pred = predict(batch).detach().float().cpu().numpy()
        gt = torch.as_tensor(batch[gt_key]).float().numpy()
        metal = torch.as_tensor(batch[mask_key]).numpy() > 0.5
        for i in range(pred.shape[0]):
            error = mu_to_hu(pred[i, 0]) - mu_to_hu(gt[i, 0])
            gt_hu = mu_to_hu(gt[i, 0])
            distance = distance_transform_edt(~metal[i, 0]) if metal[i, 0].any() else np.full(error.shape, np.inf)
            for name, (low, high, tissue) in REGIONS.items():
                sel = (distance > low) & (distance <= high)
                if tissue == "soft":
                    sel &= gt_hu < BONE_HU
                elif tissue == "bone":
                    sel &= gt_hu >= BONE_HU
                e = error[sel].astype(np.float64)
                sums[name][0] += float(e.sum())
                sums[name][1] += float((e**2).sum())
                sums[name][2] += int(e.size)
    return {
        name: {
            "mean": s / n if n else float("nan"),
            "rmse": (q / n) ** 0.5 if n else float("nan"),
            "pixels": n,
        }
        for name, (s, q, n) in sums.items()
    }


def format_region_table(errors: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """Markdown table: one row per method, cells ``mean signed / RMSE`` HU for each region."""
    regions = list(REGIONS)
    lines = ["| Method | " + " | ".join(regions) + " |", "|---|" + ":---:|" * len(regions)]
    for method, by_region in errors.items():
        cells = [f"{by_region[r]['mean']:+.0f} / {by_region[r]['rmse']:.0f}" for r in regions]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
