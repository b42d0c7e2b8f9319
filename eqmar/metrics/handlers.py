"""Ignite metrics for the SynDeepLesion MAR PSNR/SSIM, usable as MONAI evaluator metrics.

:class:`MARPSNR` and :class:`MARSSIM` average the per-sample scores of
:func:`eqmar.metrics.mar.batch_mar_psnr` / :func:`~eqmar.metrics.mar.batch_mar_ssim` over an epoch,
are safe under distributed evaluation (sums and counts are all-reduced) and, when the test-mask index
of every sample is given, also keep the G1 … G5 group means.

MONAI's ``SupervisedEvaluator`` keeps only ``image``, ``label`` and ``pred`` in ``engine.state.output``;
the metal mask stays in ``engine.state.batch``. Two ways to reach it:

1. ``batch_transform`` (as in MONAI's own handlers) reads it from the batch::

       MARPSNR(output_transform=from_engine(["pred", "label"]),
               batch_transform=from_engine(["mask", "mask_index"]))

2. a post-processing transform copies it into the output, then ``output_transform`` yields all::

       SupervisedEvaluator(..., postprocessing=CopyItemsd(keys="mask", names="metal_mask"),
                           key_val_metric={"psnr": MARPSNR(from_engine(["pred", "label", "metal_mask"]))})

``output_transform`` must return a tuple ``(pred, gt)`` (with ``batch_transform``) or
``(pred, gt, metal_mask[, mask_index])``; ``batch_transform`` returns ``metal_mask`` or a tuple
``(metal_mask, mask_index)``. Each item may be a batched tensor (B, 1, H, W) or, as after MONAI's
decollation, a list of per-sample (1, H, W) tensors; ``mask_index`` an int or one value per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce

from eqmar.metrics.mar import GROUP_NAMES, batch_mar_psnr, batch_mar_ssim, mask_groups

__all__ = ["MARPSNR", "MARSSIM"]


def _identity(output: Any) -> Any:
    return output


def _as_items(value: Any, allow_single: bool) -> tuple[Any, ...]:
    """Split a transform's result into its items; a non-tuple counts as one item where allowed."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, list) and not allow_single:
        return tuple(value)
    return (value,)


def _as_image_batch(item: Any, name: str) -> torch.Tensor:
    """A batched tensor, a single image or a list of per-sample images as a (B, 1, H, W)-style tensor."""
    if isinstance(item, (list, tuple)):
        if not item:
            raise ValueError(f"{name}: empty list of samples")
        samples = [_as_image_batch(sample, f"{name}[{i}]") for i, sample in enumerate(item)]
        try:
            return torch.cat(samples, dim=0)
        except RuntimeError as error:
            raise ValueError(f"{name}: samples have different shapes ({error})") from None
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if not isinstance(item, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, array or list of them, got {type(item).__name__}")
    if item.ndim == 2:
        return item[None, None]
    if item.ndim == 3:
        return item[None]  # one channel-first sample
    return item


class _MARMetric(Metric):
    """Epoch mean of a per-sample MAR score, with optional per-group means."""

    _batch_score: Callable[..., torch.Tensor]

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = _identity,
        batch_transform: Callable[[Any], Any] | None = None,
        per_group: bool = False,
        png_autoscale: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        """
        Args:
            output_transform: maps ``engine.state.output`` to ``(pred, gt, metal_mask[, mask_index])``,
                or to ``(pred, gt)`` when ``batch_transform`` supplies the rest.
            batch_transform: optional; maps ``engine.state.batch`` to ``metal_mask`` or
                ``(metal_mask, mask_index)``, appended to the output items.
            per_group: also store the group means as ``<name>_G1`` … ``<name>_G5`` in
                ``engine.state.metrics`` (needs ``mask_index``).
            png_autoscale: score along the authors' PNG route (per-image min–max) instead of the
                protocol's fixed scale; see :func:`eqmar.metrics.mar.batch_mar_scores`.
            device: device of the accumulators (the one all-reduced under distributed evaluation).
        """
        self._batch_transform = batch_transform
        self.per_group = per_group
        self.png_autoscale = png_autoscale
        self.group_means: dict[str, float] = {}
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64, device=self._device)
        self._num = torch.zeros((), dtype=torch.float64, device=self._device)
        self._group_sum = torch.zeros(len(GROUP_NAMES), dtype=torch.float64, device=self._device)
        self._group_num = torch.zeros(len(GROUP_NAMES), dtype=torch.float64, device=self._device)
        self.group_means = {}

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        """Score one batch.

        Args:
            output: ``(pred, gt, metal_mask)`` or ``(pred, gt, metal_mask, mask_index)``.
        """
        name = type(self).__name__
        if not isinstance(output, (tuple, list)) or len(output) not in (3, 4):
            raise ValueError(
                f"{name}: expected (pred, gt, metal_mask[, mask_index]) from output_transform/batch_transform, "
                f"got {type(output).__name__} with {len(output) if isinstance(output, (tuple, list)) else 1} item(s)"
            )
        labels = ("pred", "gt", "metal_mask")
        pred, gt, mask = (
            _as_image_batch(item, f"{name}: {label}") for item, label in zip(output, labels, strict=False)
        )
        scores = type(self)._batch_score(pred, gt, mask, png_autoscale=self.png_autoscale).to(self._device)
        self._sum += scores.sum()
        self._num += scores.numel()
        if len(output) == 4:
            self._add_to_groups(scores, output[3])

    def _add_to_groups(self, scores: torch.Tensor, mask_index: Any) -> None:
        groups = mask_groups(mask_index).to(self._device) - 1
        if groups.numel() == 1:
            groups = groups.expand(scores.numel())
        if groups.numel() != scores.numel():
            raise ValueError(
                f"{type(self).__name__}: got {groups.numel()} mask indices for {scores.numel()} samples"
            )
        self._group_sum.index_add_(0, groups, scores)
        self._group_num.index_add_(0, groups, torch.ones_like(scores))

    @sync_all_reduce("_sum", "_num", "_group_sum", "_group_num")
    def compute(self) -> float:
        """The mean over all samples seen since the last reset (group means go to ``group_means``)."""
        if self._num.item() == 0:
            raise NotComputableError(f"{type(self).__name__} needs at least one sample before it can be computed")
        self.group_means = {
            group: (total / count).item() if count > 0 else math.nan
            for group, total, count in zip(GROUP_NAMES, self._group_sum, self._group_num, strict=True)
        }
        return (self._sum / self._num).item()

    @torch.no_grad()
    def iteration_completed(self, engine: Engine) -> None:
        output = _as_items(self._output_transform(engine.state.output), allow_single=False)
        if self._batch_transform is not None:
            output = (*output, *_as_items(self._batch_transform(engine.state.batch), allow_single=True))
        self.update(output)

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        if self.per_group:
            for group, value in self.group_means.items():
                engine.state.metrics[f"{name}_{group}"] = value


class MARPSNR(_MARMetric):
    """Epoch mean of the SynDeepLesion MAR PSNR (dB); see :func:`eqmar.metrics.mar.batch_mar_psnr`.

    Identical quantised images give ``inf`` (not capped), which makes the mean ``inf``.
    """

    _batch_score = staticmethod(batch_mar_psnr)


class MARSSIM(_MARMetric):
    """Epoch mean of the SynDeepLesion MAR SSIM; see :func:`eqmar.metrics.mar.batch_mar_ssim`."""

    _batch_score = staticmethod(batch_mar_ssim)
