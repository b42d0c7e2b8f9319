"""Score MAR predictions with the SynDeepLesion metric, grouped by test-mask size."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from eqmar.metrics import MARScores, batch_mar_scores

__all__ = ["evaluate_mar", "network_predictor", "input_predictor"]

Predictor = Callable[[Mapping[str, Any]], torch.Tensor]


def network_predictor(network: nn.Module, device: str | torch.device = "cpu", image_key: str = "image") -> Predictor:
    """Prediction function of a network on full images (eval mode, no gradients)."""

    @torch.no_grad()
    def predict(batch: Mapping[str, Any]) -> torch.Tensor:
        network.eval()
        out = network(batch[image_key].to(device))
        return out if isinstance(out, torch.Tensor) else out[0]

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
