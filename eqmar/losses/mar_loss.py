"""The training loss of the unrolled MAR networks (DICDNet, ACDNet, OSCNet), as published."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from eqmar.networks.blocks import MAROutput

__all__ = ["MARLoss"]


class MARLoss(_Loss):
    """Masked multi-stage loss of DICDNet / ACDNet / OSCNet.

    With the non-metal mask ``m``, ground truth ``Y`` and metal-affected input ``Y_ma``:

    ``L = w_l2 · Σ_i a_i · mean((m X_i − m Y)²)
    + w_l1x · Σ_i a_i · sum|m X_i − m Y| + w_l1a · Σ_j b_j · sum|m A_j − m (Y_ma − Y)|``

    with weights ``a_i`` = ``intermediate_weight`` (0.1) for ``X_0`` and every stage image and
    1 for the final image; ``b_j`` = 0.1 for every stage artifact plus an extra 1 for the last
    one; ACDNet's two warm-up images/artifacts weigh 0.1 and 1 (last). The published weights are
    ``w_l2 = 1``, ``w_l1x = w_l1a = 5e-4`` (the DICDNet script's default ``--Al1 54-4``
    evaluates to 50, an evident typo for 5e-4 that the ACDNet and OSCNet scripts fix).
    The L1 terms are sums, not means, as published: they grow with batch and patch size.
    Everything is computed after multiplying images by ``intensity_scale`` (255), the range the
    published weights were tuned for; the networks output µ maps.

    Args:
        image_l2_weight: ``w_l2``.
        image_l1_weight: ``w_l1x``.
        artifact_l1_weight: ``w_l1a``.
        intermediate_weight: weight of ``X_0``, of every stage image and of every stage artifact.
        intensity_scale: factor applied to predictions and targets (µ → published 0-255 range).

    ``forward(pred, target)``: ``target`` is ``(B, 2, H, W)`` = [ground truth µ, non-metal mask];
    ``pred`` is a training-mode :class:`~eqmar.networks.blocks.MAROutput` or a plain
    ``(B, 1, H, W)`` tensor (e.g. the UNet baseline), for which only the masked final-image L2
    term is used. Returns a scalar.
    """

    def __init__(
        self,
        image_l2_weight: float = 1.0,
        image_l1_weight: float = 5e-4,
        artifact_l1_weight: float = 5e-4,
        intermediate_weight: float = 0.1,
        intensity_scale: float = 255.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_l2_weight", image_l2_weight),
            ("image_l1_weight", image_l1_weight),
            ("artifact_l1_weight", artifact_l1_weight),
            ("intermediate_weight", intermediate_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        if not intensity_scale > 0:
            raise ValueError(f"intensity_scale must be > 0, got {intensity_scale}.")
        self.image_l2_weight = float(image_l2_weight)
        self.image_l1_weight = float(image_l1_weight)
        self.artifact_l1_weight = float(artifact_l1_weight)
        self.intermediate_weight = float(intermediate_weight)
        self.intensity_scale = float(intensity_scale)

    def forward(self, pred: MAROutput | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.components(pred, target).values())

    def components(self, pred: MAROutput | torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted terms ``image_l2``, ``image_l1`` and ``artifact_l1`` (for logging).

        For a plain tensor prediction only ``image_l2`` is returned.
        """
        final = pred if isinstance(pred, torch.Tensor) else getattr(pred, "image", None)
        if not isinstance(final, torch.Tensor):
            raise TypeError(
                f"pred must be a (B, 1, H, W) tensor or a training-mode MAROutput, got {type(pred).__name__} "
                "(call the network in train mode to get the per-stage outputs)."
            )
        gt, mask = self._split_target(target, final)
        s = self.intensity_scale
        masked_gt = mask * gt * s
        if isinstance(pred, torch.Tensor):
            return {"image_l2": self.image_l2_weight * F.mse_loss(mask * pred * s, masked_gt)}
        masked_artifact = mask * (pred.ma_image - gt) * s
        images = self._image_terms(pred)
        artifacts = self._artifact_terms(pred)
        image_l2 = sum(w * F.mse_loss(mask * x * s, masked_gt) for x, w in images)
        image_l1 = sum(w * (mask * x * s - masked_gt).abs().sum() for x, w in images)
        artifact_l1 = sum(w * (mask * a * s - masked_artifact).abs().sum() for a, w in artifacts)
        return {
            "image_l2": self.image_l2_weight * image_l2,
            "image_l1": self.image_l1_weight * image_l1,
            "artifact_l1": self.artifact_l1_weight * artifact_l1,
        }

    def _image_terms(self, pred: MAROutput) -> list[tuple[torch.Tensor, float]]:
        w = self.intermediate_weight
        terms = [(pred.init_image, w)] + [(x, w) for x in pred.stage_images] + [(pred.image, 1.0)]
        return terms + self._warmup_terms(pred.warmup_images)

    def _artifact_terms(self, pred: MAROutput) -> list[tuple[torch.Tensor, float]]:
        w = self.intermediate_weight
        terms = [(a, w) for a in pred.stage_artifacts]
        if pred.stage_artifacts:
            terms.append((pred.stage_artifacts[-1], 1.0))
        return terms + self._warmup_terms(pred.warmup_artifacts)

    def _warmup_terms(self, tensors: Iterable[torch.Tensor]) -> list[tuple[torch.Tensor, float]]:
        tensors = list(tensors)
        return [(t, 1.0 if i == len(tensors) - 1 else self.intermediate_weight) for i, t in enumerate(tensors)]

    @staticmethod
    def _split_target(target: torch.Tensor, final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(target, torch.Tensor) or target.ndim != 4 or target.shape[1] != 2:
            shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
            raise ValueError(f"target must have shape (B, 2, H, W) = [ground truth, non-metal mask], got {shape}.")
        if final.ndim != 4 or final.shape[1] != 1:
            raise ValueError(f"pred image must have shape (B, 1, H, W), got {tuple(final.shape)}.")
        if target.shape[0] != final.shape[0] or target.shape[2:] != final.shape[2:]:
            raise ValueError(
                f"target {tuple(target.shape)} and pred {tuple(final.shape)} differ in batch or spatial size."
            )
        return target[:, 0:1], target[:, 1:2]
