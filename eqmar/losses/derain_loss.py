"""The multi-stage training loss of RCDNet (deraining), as published."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from eqmar.networks.rcdnet import DerainOutput

__all__ = ["DerainLoss"]


class DerainLoss(_Loss):
    """Multi-stage MSE on the backgrounds and rain layers of RCDNet.

    With the clean image ``B``, the rainy input ``O`` and the rain target ``R = O - B``:

    ``L = a · MSE(B_0, B) + Σ_s a · MSE(B_s, B) + MSE(B_final, B)
    + Σ_s a · MSE(R_s, R) + w_last · MSE(R_S, R)``

    with ``a`` = ``intermediate_weight`` (0.1) and ``w_last`` = ``final_rain_weight`` (0.9): the
    weights of the authors' training script. Every MSE is a mean over pixels, computed after
    multiplying images by ``intensity_scale`` (255), the range of the published network and loss
    (and of EQ-Reg's published λ).

    Args:
        intermediate_weight: weight of ``B_0`` and of every stage background and rain layer.
        final_rain_weight: extra weight of the last stage's rain layer.
        intensity_scale: factor applied to predictions and targets ([0, 1] → 0-255).

    ``forward(pred, target)``: ``target`` is the clean image ``(B, C, H, W)``; ``pred`` is a
    training-mode :class:`~eqmar.networks.rcdnet.DerainOutput` or a plain ``(B, C, H, W)`` tensor
    (e.g. a strictly equivariant baseline), for which only the final-image MSE is used. Returns a
    scalar.
    """

    def __init__(
        self, intermediate_weight: float = 0.1, final_rain_weight: float = 0.9, intensity_scale: float = 255.0
    ) -> None:
        super().__init__()
        for name, value in (("intermediate_weight", intermediate_weight), ("final_rain_weight", final_rain_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if not intensity_scale > 0:
            raise ValueError(f"intensity_scale must be > 0, got {intensity_scale}.")
        self.intermediate_weight = float(intermediate_weight)
        self.final_rain_weight = float(final_rain_weight)
        self.intensity_scale = float(intensity_scale)

    def forward(self, pred: DerainOutput | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.components(pred, target).values())

    def components(self, pred: DerainOutput | torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted terms ``background`` and ``rain`` (for logging); a tensor ``pred`` has only ``background``."""
        final = pred if isinstance(pred, torch.Tensor) else getattr(pred, "background", None)
        if not isinstance(final, torch.Tensor):
            raise TypeError(
                f"pred must be a (B, C, H, W) tensor or a training-mode DerainOutput, got {type(pred).__name__} "
                "(call the network in train mode to get the per-stage outputs)."
            )
        self._check_shapes(final, target)
        s = self.intensity_scale
        clean = target * s

        def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(x * s, y)

        if isinstance(pred, torch.Tensor):
            return {"background": mse(pred, clean)}
        a = self.intermediate_weight
        rain = pred.rainy * s - clean
        background = a * mse(pred.init_background, clean) + mse(pred.background, clean)
        background = background + sum(a * mse(b, clean) for b in pred.stage_backgrounds)
        rain_term = sum(a * mse(r, rain) for r in pred.stage_rains)
        if pred.stage_rains:
            rain_term = rain_term + self.final_rain_weight * mse(pred.stage_rains[-1], rain)
        return {"background": background, "rain": rain_term}

    @staticmethod
    def _check_shapes(final: torch.Tensor, target: torch.Tensor) -> None:
        if not isinstance(target, torch.Tensor) or target.ndim != 4:
            shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(f"target must be the clean image (B, C, H, W), got {shape}.")
        if final.shape != target.shape:
            raise ValueError(f"pred background {tuple(final.shape)} and target {tuple(target.shape)} differ in shape.")
