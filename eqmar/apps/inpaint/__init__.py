"""Inpainting of randomly missing pixels under Poisson noise (the EQ-Reg paper's inpainting task).

- :mod:`~eqmar.apps.inpaint.transforms`: :class:`RandPixelMask` / :class:`RandPixelMaskd`.
- :mod:`~eqmar.networks.inpainting`: :class:`MaskedAverage`, the residual U-Net and its strict twin.
- :mod:`~eqmar.apps.inpaint.workflow`: :class:`InpaintingConfig` and :func:`run_inpainting_experiment`.
"""

from __future__ import annotations

from eqmar.apps.inpaint.transforms import DEFAULT_MASK_RATE, DEFAULT_POISSON_GAMMA, RandPixelMask, RandPixelMaskd
from eqmar.apps.inpaint.workflow import (
    InpaintingConfig,
    build_inpainting_network,
    build_strict_network,
    inpainting_degradation,
    run_inpainting_experiment,
    strict_group,
)
from eqmar.networks.inpainting import MaskedAverage, build_inpainting_strict_network, build_inpainting_unet

__all__ = [
    "DEFAULT_MASK_RATE",
    "DEFAULT_POISSON_GAMMA",
    "InpaintingConfig",
    "MaskedAverage",
    "RandPixelMask",
    "RandPixelMaskd",
    "build_inpainting_network",
    "build_inpainting_strict_network",
    "build_inpainting_unet",
    "build_strict_network",
    "inpainting_degradation",
    "run_inpainting_experiment",
    "strict_group",
]
