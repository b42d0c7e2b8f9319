"""eqmar.metrics: the SynDeepLesion metal-artifact-reduction metric.

- :mod:`eqmar.metrics.ssim`: Wang et al.'s reference SSIM (``ssim.m``), batched in torch.
- :mod:`eqmar.metrics.mar`: 8-bit quantisation, metal exclusion, MAR PSNR/SSIM and mask groups.
- :mod:`eqmar.metrics.scores`: per-pair accumulator, the G1 … G5 group table and its markdown form.
- :mod:`eqmar.metrics.handlers`: Ignite metrics for MONAI evaluators (imported on first use:
  importing Ignite costs about two seconds).
"""

from __future__ import annotations

from eqmar.metrics.mar import (
    GROUP_NAMES,
    MASK_GROUPS,
    MU_MAX,
    batch_mar_psnr,
    batch_mar_scores,
    batch_mar_ssim,
    mar_psnr,
    mar_ssim,
    mask_group,
    mask_groups,
    quantize_mu,
)
from eqmar.metrics.scores import MARMetricAccumulator, MARScores, format_mar_table
from eqmar.metrics.ssim import ssim_downsample_factor, wang_downsample, wang_ssim

_LAZY_HANDLERS = ("MARPSNR", "MARSSIM")

__all__ = [
    "GROUP_NAMES",
    "MASK_GROUPS",
    "MU_MAX",
    "MARPSNR",
    "MARSSIM",
    "MARMetricAccumulator",
    "MARScores",
    "batch_mar_psnr",
    "batch_mar_scores",
    "batch_mar_ssim",
    "format_mar_table",
    "mar_psnr",
    "mar_ssim",
    "mask_group",
    "mask_groups",
    "quantize_mu",
    "ssim_downsample_factor",
    "wang_downsample",
    "wang_ssim",
]


def __getattr__(name: str) -> object:
    if name in _LAZY_HANDLERS:
        from eqmar.metrics import handlers

        return getattr(handlers, name)
    raise AttributeError(f"module 'eqmar.metrics' has no attribute {name!r}")
