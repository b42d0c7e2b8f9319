"""PSNR and SSIM for restoration outputs in [0, 1], optionally on the Y channel (the deraining convention).

Deraining papers (Rain100L and most others) score the luma channel Y of ITU-R BT.601 YCbCr, as
MATLAB's ``rgb2ycbcr`` computes it: for RGB in [0, 1]

    Y = (65.481 R + 128.553 G + 24.966 B + 16) / 255        (Y in [16/255, 235/255]).

The scores themselves are MONAI's ``PSNRMetric`` and ``SSIMMetric`` (Gaussian window 11, σ = 1.5,
K = (0.01, 0.03), statistics only where the window fits — the same numbers as scikit-image's
``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``); this module only
prepares the images: clip to the data range (as writing an image file would), optionally quantise to
8 bits (scoring saved PNGs) and optionally convert to Y. Functions score tensors; the two Ignite
metrics (:class:`RestorationPSNR`, :class:`RestorationSSIM`, MONAI ``IgniteMetricHandler``\\ s) score a
MONAI evaluator's ``pred`` against its ``label``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.handlers import IgniteMetricHandler

__all__ = [
    "BT601_Y_WEIGHTS",
    "rgb_to_y",
    "prepare_for_scoring",
    "restoration_psnr",
    "restoration_ssim",
    "RestorationPSNR",
    "RestorationSSIM",
]

#: ITU-R BT.601 luma weights and offset for RGB in [0, 1] (MATLAB ``rgb2ycbcr``), divided by 255 below.
BT601_Y_WEIGHTS = (65.481, 128.553, 24.966, 16.0)


def rgb_to_y(image: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """BT.601 luma of channel-first RGB images ``(3, H, W)`` or ``(B, 3, H, W)``; one channel is kept.

    Args:
        image: RGB in ``[0, data_range]``.
        data_range: the scale of ``image`` (Y is returned on the same scale).
    """
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects (3, H, W) or (B, 3, H, W) RGB images, got shape {tuple(image.shape)}.")
    r, g, b = (image.narrow(-3, c, 1) / data_range for c in range(3))
    wr, wg, wb, offset = BT601_Y_WEIGHTS
    return (wr * r + wg * g + wb * b + offset) / 255.0 * data_range


def prepare_for_scoring(
    image: torch.Tensor, y_channel: bool = False, data_range: float = 1.0, clip: bool = True, quantize: bool = False
) -> torch.Tensor:
    """The image as it is scored: float32, clipped, optionally 8-bit quantised and converted to Y.

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)``.
        y_channel: score BT.601 Y (needs 3 channels).
        data_range: the value of white.
        clip: clamp to ``[0, data_range]`` (network outputs may overshoot).
        quantize: round to 256 levels before and (for Y) after the conversion, like scoring 8-bit
            files with MATLAB's ``rgb2ycbcr`` on ``uint8`` input.
    """
    image = torch.as_tensor(image).float()
    if clip:
        image = image.clamp(0.0, data_range)
    if quantize:
        image = torch.round(image * (255.0 / data_range)) * (data_range / 255.0)
    if y_channel:
        image = rgb_to_y(image, data_range)
        if quantize:
            image = torch.round(image * (255.0 / data_range)) * (data_range / 255.0)
    return image


def _batched(image: torch.Tensor) -> torch.Tensor:
    return image if image.ndim == 4 else image[None]


def _score(metric: Any, pred: torch.Tensor, target: torch.Tensor, **options: Any) -> torch.Tensor:
    pred, target = (_batched(prepare_for_scoring(t, **options)) for t in (pred, target))
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}.")
    return metric(pred, target).reshape(-1)


def restoration_psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    y_channel: bool = False,
    data_range: float = 1.0,
    clip: bool = True,
    quantize: bool = False,
) -> torch.Tensor:
    """Per-image PSNR (dB) of ``(B, C, H, W)`` or ``(C, H, W)`` images; ``inf`` for identical images.

    Args:
        pred: restored images.
        target: ground truth.
        y_channel: score the BT.601 Y channel of RGB images (deraining convention).
        data_range: the value of white.
        clip: clamp both images to ``[0, data_range]`` first.
        quantize: round to 8 bits first (see :func:`prepare_for_scoring`).

    Returns:
        A ``(B,)`` float tensor.
    """
    from monai.metrics import PSNRMetric

    options = {"y_channel": y_channel, "data_range": data_range, "clip": clip, "quantize": quantize}
    return _score(PSNRMetric(max_val=data_range, reduction="none"), pred, target, **options)


def restoration_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    y_channel: bool = False,
    data_range: float = 1.0,
    clip: bool = True,
    quantize: bool = False,
) -> torch.Tensor:
    """Per-image SSIM (mean over channels and valid window positions); arguments as :func:`restoration_psnr`.

    Images must be at least 11 pixels on each side (the Gaussian window).
    """
    from monai.metrics import SSIMMetric

    options = {"y_channel": y_channel, "data_range": data_range, "clip": clip, "quantize": quantize}
    return _score(SSIMMetric(spatial_dims=2, data_range=data_range, reduction="none"), pred, target, **options)


def _pred_and_label(output: Any) -> tuple[Any, Any]:
    from monai.handlers.utils import from_engine

    return tuple(from_engine(["pred", "label"])(output))  # type: ignore[return-value]


class _Prepared:
    """Applies :func:`prepare_for_scoring` to every image an ``output_transform`` returns (picklable)."""

    def __init__(self, output_transform: Callable[[Any], Any], **options: Any) -> None:
        self.output_transform = output_transform
        self.options = options

    def _prepare(self, item: Any) -> Any:
        if isinstance(item, (list, tuple)):
            return [prepare_for_scoring(i, **self.options) for i in item]
        return prepare_for_scoring(item, **self.options)

    def __call__(self, output: Any) -> tuple[Any, Any]:
        pred, label = self.output_transform(output)
        return self._prepare(pred), self._prepare(label)


class _RestorationMetric(IgniteMetricHandler):
    """Shared constructor of the two Ignite metrics."""

    def __init__(
        self,
        metric_fn: Any,
        y_channel: bool,
        data_range: float,
        clip: bool,
        quantize: bool,
        output_transform: Callable[[Any], Any] | None,
        save_details: bool,
    ) -> None:
        prepared = _Prepared(
            output_transform or _pred_and_label, y_channel=y_channel, data_range=data_range, clip=clip,
            quantize=quantize,
        )
        super().__init__(metric_fn=metric_fn, output_transform=prepared, save_details=save_details)


class RestorationPSNR(_RestorationMetric):
    """Mean PSNR (dB) over an evaluation epoch, as an Ignite metric for MONAI evaluators.

    A MONAI ``IgniteMetricHandler`` around ``monai.metrics.PSNRMetric`` that first clips (and
    optionally quantises / converts to Y) both images. With ``save_details`` the per-image scores
    are in ``engine.state.metric_details[name]``.

    Args:
        y_channel: score the BT.601 Y channel (deraining convention).
        data_range: the value of white.
        clip: clamp to ``[0, data_range]`` first.
        quantize: round to 8 bits first.
        output_transform: maps ``engine.state.output`` to ``(pred, label)`` (default: the ``"pred"`` and
            ``"label"`` entries, batched or decollated).
        save_details: keep per-image scores.
    """

    def __init__(
        self,
        y_channel: bool = False,
        data_range: float = 1.0,
        clip: bool = True,
        quantize: bool = False,
        output_transform: Callable[[Any], Any] | None = None,
        save_details: bool = True,
    ) -> None:
        from monai.metrics import PSNRMetric

        super().__init__(
            PSNRMetric(max_val=data_range), y_channel, data_range, clip, quantize, output_transform, save_details
        )


class RestorationSSIM(_RestorationMetric):
    """Mean SSIM over an evaluation epoch (``monai.metrics.SSIMMetric``); arguments as :class:`RestorationPSNR`."""

    def __init__(
        self,
        y_channel: bool = False,
        data_range: float = 1.0,
        clip: bool = True,
        quantize: bool = False,
        output_transform: Callable[[Any], Any] | None = None,
        save_details: bool = True,
    ) -> None:
        from monai.metrics import SSIMMetric

        super().__init__(
            SSIMMetric(spatial_dims=2, data_range=data_range), y_channel, data_range, clip, quantize, output_transform,
            save_details,
        )
