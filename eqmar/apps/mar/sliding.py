"""Run a MAR network on whole slices the way it was trained: patch by patch.

A network with instance normalisation (MONAI's BasicUNet, the LI-residual UNet of the demo)
normalises every feature map by its own mean and variance over the input it is given. Trained on
64-96 px patches, it sees other statistics on a whole slice (far more air, other tissue mixes) and
shifts intensities: the full-geometry UNet scored 30.5 dB on a real slice where LI scores 35.5 dB,
and 37.9 dB when run on overlapping patches of its training size. The model file records that size
(``meta["inference_roi"]``); every eqmar consumer of MAR model files runs the network through
:func:`mar_forward`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["mar_forward", "inference_roi"]

#: Overlap of neighbouring patches (fraction of the patch) and the blending of their outputs.
OVERLAP = 0.5
BLEND = "gaussian"


def inference_roi(meta: dict[str, Any] | None) -> int | None:
    """The patch size a model file asks to be run with (``meta["inference_roi"]``), or None for whole slices.

    Raises:
        ValueError: a value that is not a positive integer.
    """
    value = (meta or {}).get("inference_roi")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model meta inference_roi must be a positive integer patch size, got {value!r}")
    return value


def mar_forward(network: nn.Module, inputs: torch.Tensor, roi: int | None = None, batch: int = 16) -> torch.Tensor:
    """``network(inputs)``, on overlapping ``roi`` × ``roi`` patches blended with Gaussian weights when given.

    Args:
        network: the MAR network (``(B, 3, H, W) -> (B, 1, H, W)``, or its training-mode output whose
            first element is the image).
        inputs: ``(B, 3, H, W)`` network input.
        roi: patch size; ``None``, or one not smaller than the slice, runs the whole slice at once.
        batch: patches per forward pass.
    """

    def run(x: torch.Tensor) -> torch.Tensor:
        out = network(x)
        return out if isinstance(out, torch.Tensor) else out[0]

    if roi is None or (inputs.shape[-2] <= roi and inputs.shape[-1] <= roi):
        return run(inputs)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(inputs, (roi, roi), batch, run, overlap=OVERLAP, mode=BLEND)
