"""Restoration backbones for CT metal artifact reduction.

All networks take ONE tensor ``(B, 3, H, W)`` = [ma_CT, LI_CT, non-metal mask (1 outside metal)]
in µ units and return the corrected ``(B, 1, H, W)`` image in eval mode. The unrolled dictionary
networks (DICDNet, ACDNet, OSCNet) return a :class:`MAROutput` in training mode, which
:class:`eqmar.losses.MARLoss` consumes. :func:`proximal_conv_names` lists the convs EQ-Reg hooks.
"""

from __future__ import annotations

from eqmar.networks.acdnet import ACDNet
from eqmar.networks.baseline import MARResidualUNet, mar_baseline_unet
from eqmar.networks.blocks import MAROutput, proximal_conv_names
from eqmar.networks.dicdnet import DICDNet
from eqmar.networks.oscnet import OSCNet

__all__ = ["ACDNet", "DICDNet", "OSCNet", "MAROutput", "MARResidualUNet", "mar_baseline_unet", "proximal_conv_names"]
