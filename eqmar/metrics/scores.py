"""Per-pair MAR scores grouped by metal size, and the markdown table MAR papers print.

A SynDeepLesion evaluation scores every (image, test mask) pair; papers report the mean PSNR/SSIM of
each metal-size group G1 (largest) … G5 (smallest) and of all pairs. :class:`MARMetricAccumulator`
collects the per-pair values, :class:`MARScores` holds the group table and
:func:`format_mar_table` prints several methods side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eqmar.metrics.mar import GROUP_NAMES, _mask_index_array, batch_mar_scores, mask_groups

__all__ = ["AVERAGE", "MARScores", "MARMetricAccumulator", "format_mar_table"]

AVERAGE = "average"
"""Key of the all-pairs mean in :meth:`MARScores.as_dict`."""

_COLUMN_TITLES = {"G1": "G1 (large)", "G5": "G5 (small)", AVERAGE: "Average"}


def _as_1d_float(values: Any, name: str) -> np.ndarray:
    """Per-pair values as a 1-D float64 array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(array).any():
        raise ValueError(f"{name}: contains NaN")
    return array


@dataclass(frozen=True)
class MARScores:
    """The grouped result of a MAR evaluation.

    Attributes:
        psnr: mean PSNR (dB) per group name ``"G1"`` … ``"G5"`` and ``"average"``; NaN for a group
            without pairs.
        ssim: mean SSIM, same keys.
        count: number of pairs, same keys.
    """

    psnr: dict[str, float]
    ssim: dict[str, float]
    count: dict[str, int]

    @classmethod
    def from_pairs(cls, psnr: Any, ssim: Any, mask_index: Any) -> MARScores:
        """Group per-pair scores by their test-mask index.

        Args:
            psnr: per-pair PSNR values (sequence, array or tensor).
            ssim: per-pair SSIM values, same length.
            mask_index: per-pair 0-based test-mask index (0..9), same length.

        Returns:
            The group table.
        """
        psnr_a = _as_1d_float(psnr, "MARScores.from_pairs: psnr")
        ssim_a = _as_1d_float(ssim, "MARScores.from_pairs: ssim")
        groups = mask_groups(mask_index).numpy()
        if not len(psnr_a) == len(ssim_a) == len(groups):
            raise ValueError(
                "MARScores.from_pairs: psnr, ssim and mask_index must have the same length, got "
                f"{len(psnr_a)}, {len(ssim_a)} and {len(groups)}"
            )
        selections = {name: groups == number for number, name in enumerate(GROUP_NAMES, start=1)}
        selections[AVERAGE] = np.ones(len(groups), dtype=bool)
        return cls(
            psnr={name: _mean(psnr_a[sel]) for name, sel in selections.items()},
            ssim={name: _mean(ssim_a[sel]) for name, sel in selections.items()},
            count={name: int(sel.sum()) for name, sel in selections.items()},
        )

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{"G1": {"psnr": ..., "ssim": ..., "n": ...}, ..., "average": {...}}``."""
        return {
            name: {"psnr": self.psnr[name], "ssim": self.ssim[name], "n": self.count[name]} for name in self.psnr
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, float]]) -> MARScores:
        """The scores :meth:`as_dict` gave (e.g. read back from ``results.json``)."""
        return cls(
            psnr={name: float(cell["psnr"]) for name, cell in data.items()},
            ssim={name: float(cell["ssim"]) for name, cell in data.items()},
            count={name: int(cell["n"]) for name, cell in data.items()},
        )

    def to_markdown(self, name: str = "method", psnr_digits: int = 2, ssim_digits: int = 4) -> str:
        """This result as a one-row paper table; see :func:`format_mar_table`."""
        return format_mar_table({name: self}, psnr_digits=psnr_digits, ssim_digits=ssim_digits)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _format_cell(psnr: float, ssim: float, psnr_digits: int, ssim_digits: int) -> str:
    if math.isnan(psnr):
        return "–"
    psnr_text = "inf" if math.isinf(psnr) else f"{psnr:.{psnr_digits}f}"
    return f"{psnr_text}/{ssim:.{ssim_digits}f}"


def format_mar_table(results: Mapping[str, MARScores], psnr_digits: int = 2, ssim_digits: int = 4) -> str:
    """The usual MAR paper table: one row per method, cells ``PSNR/SSIM`` for G1 … G5 and the average.

    Args:
        results: method name → its :class:`MARScores`, in row order.
        psnr_digits: decimals of PSNR.
        ssim_digits: decimals of SSIM.

    Returns:
        A GitHub-flavoured markdown table (no trailing newline).
    """
    if not results:
        raise ValueError("format_mar_table: results is empty")
    columns = [*GROUP_NAMES, AVERAGE]
    header = ["Method", *(_COLUMN_TITLES.get(column, column) for column in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * len(columns)) + "|"]
    for method, scores in results.items():
        cells = [_format_cell(scores.psnr[c], scores.ssim[c], psnr_digits, ssim_digits) for c in columns]
        lines.append("| " + " | ".join([method, *cells]) + " |")
    return "\n".join(lines)


class MARMetricAccumulator:
    """Collects per-pair MAR PSNR/SSIM with their test-mask indices and builds the group table.

    Example::

        acc = MARMetricAccumulator()
        for batch in loader:
            acc.update(net(batch["ma_CT"]), batch["gt"], batch["mask"], batch["mask_index"])
        print(acc.aggregate().to_markdown("my net"))
    """

    def __init__(self, png_autoscale: bool = False) -> None:
        """
        Args:
            png_autoscale: score along the authors' PNG route (per-image min–max) instead of the
                protocol's fixed scale; see :func:`eqmar.metrics.mar.batch_mar_scores`.
        """
        self.png_autoscale = png_autoscale
        self._psnr: list[np.ndarray] = []
        self._ssim: list[np.ndarray] = []
        self._index: list[np.ndarray] = []

    def reset(self) -> None:
        """Forget all collected pairs."""
        self._psnr, self._ssim, self._index = [], [], []

    def __len__(self) -> int:
        return sum(len(values) for values in self._psnr)

    def update(
        self, pred: Any, gt: Any, metal_mask: Any, mask_index: int | Sequence[int] | Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score a batch and collect the results.

        Args:
            pred: restored µ maps (1/cm), shape (B, 1, H, W).
            gt: ground-truth µ maps, same shape.
            metal_mask: binary masks at the image size, (H, W) or (B, 1, H, W).
            mask_index: the test-mask index (0..9) of every sample: one int for the whole batch or B values.

        Returns:
            The batch's per-sample ``(psnr, ssim)``.
        """
        psnr, ssim = batch_mar_scores(pred, gt, metal_mask, png_autoscale=self.png_autoscale)
        indices = _mask_index_array(mask_index)
        if indices.size == 1:
            indices = np.repeat(indices, len(psnr))
        self.add(psnr, ssim, indices)
        return psnr, ssim

    def add(self, psnr: Any, ssim: Any, mask_index: Any) -> None:
        """Collect already computed per-pair scores.

        Args:
            psnr: per-pair PSNR values.
            ssim: per-pair SSIM values, same length.
            mask_index: per-pair test-mask indices (0..9), same length.
        """
        psnr_a = _as_1d_float(psnr, "MARMetricAccumulator.add: psnr")
        ssim_a = _as_1d_float(ssim, "MARMetricAccumulator.add: ssim")
        index_a = _mask_index_array(mask_index)
        if not len(psnr_a) == len(ssim_a) == len(index_a):
            raise ValueError(
                "MARMetricAccumulator.add: psnr, ssim and mask_index must have the same length, got "
                f"{len(psnr_a)}, {len(ssim_a)} and {len(index_a)}"
            )
        self._psnr.append(psnr_a)
        self._ssim.append(ssim_a)
        self._index.append(index_a)

    def per_pair(self) -> dict[str, np.ndarray]:
        """All collected pairs: ``{"psnr": ..., "ssim": ..., "mask_index": ...}`` as 1-D arrays."""
        return {
            "psnr": np.concatenate(self._psnr) if self._psnr else np.zeros(0),
            "ssim": np.concatenate(self._ssim) if self._ssim else np.zeros(0),
            "mask_index": np.concatenate(self._index) if self._index else np.zeros(0, dtype=np.int64),
        }

    def aggregate(self) -> MARScores:
        """The group table of everything collected so far."""
        if not len(self):
            raise ValueError("MARMetricAccumulator.aggregate: no pairs collected yet")
        pairs = self.per_pair()
        return MARScores.from_pairs(pairs["psnr"], pairs["ssim"], pairs["mask_index"])
