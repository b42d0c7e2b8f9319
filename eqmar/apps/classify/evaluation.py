"""Accuracy of a classifier trained upright, tested at rotations.

Angles are in degrees, counter-clockwise in the sense of ``torch.rot90`` (``k = 1`` is +90°), about
the image centre. Multiples of 90° use ``torch.rot90`` (exact: the group EQ-Reg's C4 covers); other
angles resample bilinearly with zero padding through MONAI's ``AffineTransform``, with the centred
affine MONAI's ``Rotate`` builds, for a whole batch with one angle per image.

:func:`evaluate_rotations` reports

- ``upright_acc``: accuracy on the images as they are;
- ``rot90_acc``: accuracy averaged over 0°, 90°, 180° and 270°, with ``rot90_per_angle``;
- ``rot90_consistency``: share of images whose predicted class is the same at all four angles;
- ``random_acc``: accuracy at random angles uniform in [0°, 360°) (``random_draws`` per image, drawn
  from ``seed``, so every arm sees the same angles) — the interpolated case C4 does not cover exactly;
- ``curve``: accuracy at every ``angle_step`` degrees from 0° to 360°.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["RIGHT_ANGLES", "rotate_images", "predict", "evaluate_rotations"]

RIGHT_ANGLES = (0.0, 90.0, 180.0, 270.0)


def _right_angle_steps(angle: float) -> int | None:
    """``k`` with ``angle == 90 k (mod 360)``, or None."""
    k = angle / 90.0
    return int(round(k)) % 4 if math.isclose(k, round(k), abs_tol=1e-9) else None


def _centred_rotations(angles_deg: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(N, 3, 3) pixel-space affines rotating about the image centre, as MONAI's ``Rotate`` composes them."""
    from monai.transforms.utils import create_rotate, create_translate

    centre = create_translate(2, [(height - 1) / 2, (width - 1) / 2])
    back = create_translate(2, [-(height - 1) / 2, -(width - 1) / 2])
    # MONAI's positive angle turns the other way round from torch.rot90 in (row, column) indexing.
    mats = [centre @ create_rotate(2, -math.radians(float(a))) @ back for a in angles_deg]
    return torch.as_tensor(np.stack(mats), dtype=torch.float32)


def rotate_images(
    images: torch.Tensor, angles: float | Sequence[float] | np.ndarray | torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """Rotate ``(N, C, H, W)`` images about their centres.

    Args:
        images: the batch.
        angles: one angle for all images, or one per image (degrees, sense of ``torch.rot90``).
        mode: interpolation for non-right angles ("bilinear" or "nearest").
    """
    from monai.networks.layers import AffineTransform

    if images.ndim != 4:
        raise ValueError(f"rotate_images expects (N, C, H, W), got shape {tuple(images.shape)}.")
    values = np.atleast_1d(np.asarray(angles.cpu() if isinstance(angles, torch.Tensor) else angles, dtype=np.float64))
    if values.size == 1:
        k = _right_angle_steps(float(values[0]))
        if k is not None:
            return torch.rot90(images, k, dims=(2, 3))
        values = np.repeat(values, images.shape[0])
    if values.size != images.shape[0]:
        raise ValueError(f"rotate_images: {values.size} angles for {images.shape[0]} images.")
    height, width = images.shape[-2:]
    theta = _centred_rotations(values, height, width).to(images.device)
    warp = AffineTransform(
        normalized=False, mode=mode, padding_mode="zeros", align_corners=False, reverse_indexing=True
    )
    return warp(images.float(), theta, spatial_size=(height, width))


@torch.no_grad()
def predict(network: nn.Module, images: torch.Tensor, batch_size: int = 256, device: Any = None) -> torch.Tensor:
    """Predicted classes ``(N,)`` (argmax of the logits) of a network in eval mode, on CPU."""
    if device is None:
        param = next(network.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = network.training
    network.eval()
    try:
        chunks = [
            network(images[i : i + batch_size].to(device)).argmax(dim=1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        network.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.int64)


def evaluate_rotations(
    network: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    angle_step: float = 15.0,
    random_draws: int = 4,
    seed: int = 0,
    batch_size: int = 256,
    device: Any = None,
) -> dict[str, Any]:
    """Accuracy upright, at the four right angles, at random angles and along an angle curve.

    Args:
        network: the trained classifier.
        images: ``(N, 1, S, S)`` test images (upright).
        labels: ``(N,)`` classes.
        angle_step: spacing of the accuracy-vs-angle curve (degrees).
        random_draws: random angles per image.
        seed: seed of the random angles (keep it fixed across arms and training seeds).
        batch_size: evaluation batch size.
        device: where to run (default: the network's device).

    Returns:
        A JSON-ready dict (see the module docstring); accuracies are fractions in [0, 1].
    """
    labels = labels.cpu()
    cache: dict[float, torch.Tensor] = {}

    def predictions_at(angle: float) -> torch.Tensor:
        angle = float(angle) % 360.0
        if angle not in cache:
            cache[angle] = predict(network, rotate_images(images, angle), batch_size, device)
        return cache[angle]

    def accuracy(pred: torch.Tensor, target: torch.Tensor = labels) -> float:
        return float((pred == target).float().mean()) if len(target) else float("nan")

    right = {a: predictions_at(a) for a in RIGHT_ANGLES}
    stacked = torch.stack(list(right.values()))
    consistent = (stacked == stacked[:1]).all(dim=0)
    rng = np.random.default_rng(seed)
    random_accs = []
    for _ in range(random_draws):
        angles = rng.uniform(0.0, 360.0, size=len(labels))
        random_accs.append(accuracy(predict(network, rotate_images(images, angles), batch_size, device)))
    curve_angles = np.arange(0.0, 360.0 + 1e-9, angle_step)
    return {
        "upright_acc": accuracy(right[0.0]),
        "rot90_acc": float(np.mean([accuracy(p) for p in right.values()])),
        "rot90_per_angle": {str(int(a)): accuracy(p) for a, p in right.items()},
        "rot90_consistency": float(consistent.float().mean()) if len(labels) else float("nan"),
        "random_acc": float(np.mean(random_accs)) if random_accs else float("nan"),
        "curve": {
            "angles": [float(a) for a in curve_angles],
            "accuracy": [accuracy(predictions_at(a)) for a in curve_angles],
        },
        "samples": len(labels),
    }
