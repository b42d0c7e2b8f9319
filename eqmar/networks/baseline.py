"""A plain MONAI network as the MAR baseline: BasicUNet predicting a residual on the LI image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from eqmar.networks.blocks import split_mar_input

__all__ = ["MARResidualUNet", "mar_baseline_unet"]


class MARResidualUNet(nn.Module):
    """Wraps a 3-in/1-out network so it corrects the LI image: ``output = LI + net(x)``.

    LI already removes most streaks and is exact far from metal, so learning the residual on LI
    starts from the strongest classical estimate and keeps the network's job small.

    Input: ``(B, 3, H, W)`` = [ma_CT, LI_CT, non-metal mask], the same tensor as DICDNet/ACDNet.
    Output: ``(B, 1, H, W)`` in train and eval mode (so :class:`~eqmar.losses.MARLoss` applies
    only its masked final-image term).

    Args:
        net: the residual network (``unet`` attribute), mapping 3 channels to 1.
        nonnegative: clamp the output at µ = 0 (−1000 HU). Attenuation cannot be negative, and the
            clamp lets training settle air at exactly 0 instead of at 0 ± the streaks and noise of
            LI: without it, noise in the air around the body cost most of the SSIM gap to the
            ground truth on the MAR demo's held-out set (SSIM 0.81; 0.94 with air exact).
    """

    def __init__(self, net: nn.Module, nonnegative: bool = True) -> None:
        super().__init__()
        self.unet = net
        self.nonnegative = bool(nonnegative)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, li, _ = split_mar_input(x)
        out = li + self.unet(x)
        return torch.relu(out) if self.nonnegative else out


def mar_baseline_unet(
    features: Sequence[int] = (36, 36, 72, 144, 288, 36),
    spatial_dims: int = 2,
    zero_init_residual: bool = True,
    nonnegative: bool = True,
    **kwargs,
) -> MARResidualUNet:
    """MONAI ``BasicUNet(spatial_dims=2, in_channels=3, out_channels=1)`` as an LI-residual baseline.

    The default widths are MONAI's ``(32, 32, 64, 128, 256, 32)`` raised to multiples of 4 so every
    conv can be EQ-Reg-regularised. Input height and width must be divisible by 16.

    Args:
        features: the six BasicUNet widths.
        spatial_dims: must be 2.
        zero_init_residual: zero the last 1×1 conv so training starts exactly from LI. A randomly
            initialised residual is O(0.1-1) while µ values are ~0.2: in a 200-step CPU run on the
            SynDeepLesion sample the UNet was still at 22 dB (LI: 37.5 dB) without it.
        nonnegative: clamp the output at µ = 0 (see :class:`MARResidualUNet`).
        kwargs: other ``BasicUNet`` arguments (``act``, ``norm``, ``dropout``, ``upsample``...).
    """
    if spatial_dims != 2:
        raise ValueError(f"spatial_dims={spatial_dims} is not supported: the MAR input is 2-D.")
    features = tuple(features)
    if len(features) != 6:
        raise ValueError(f"features must have 6 entries (BasicUNet widths), got {features}.")
    unet = BasicUNet(spatial_dims=2, in_channels=3, out_channels=1, features=features, **kwargs)
    if zero_init_residual:
        nn.init.zeros_(unet.final_conv.weight)
        nn.init.zeros_(unet.final_conv.bias)
    return MARResidualUNet(unet, nonnegative=nonnegative)
