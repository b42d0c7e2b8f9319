"""Networks: restoration backbones for CT metal artifact reduction, and strict-equivariant baselines.

All networks take ONE tensor ``(B, 3, H, W)`` = [ma_CT, LI_CT, non-metal mask (1 outside metal)]
in µ units and return the corrected ``(B, 1, H, W)`` image in eval mode. The unrolled dictionary
networks (DICDNet, ACDNet, OSCNet) return a :class:`MAROutput` in training mode, which
:class:`eqmar.losses.MARLoss` consumes. :func:`proximal_conv_names` lists the convs EQ-Reg hooks.
:mod:`eqmar.networks.group_equivariant` holds the strictly equivariant P4/P4M networks used as
hard-constraint baselines by every recipe.

The other tasks' networks: :mod:`eqmar.networks.restoration` (a residual MONAI U-Net and its
parameter-matched strict twin, for natural-image restoration), :mod:`eqmar.networks.inpainting`
(the masked average the inpainting networks correct) and :mod:`eqmar.networks.classifier` (the
rotated-digits CNN and its strict P4/P4M counterparts).
"""

from __future__ import annotations

from eqmar.networks.acdnet import ACDNet
from eqmar.networks.baseline import MARResidualUNet, mar_baseline_unet
from eqmar.networks.blocks import MAROutput, proximal_conv_names, proximal_net_names
from eqmar.networks.dicdnet import DICDNet
from eqmar.networks.group_equivariant import StrictClassifier, StrictRestorationNet, count_parameters, match_fields
from eqmar.networks.oscnet import OSCNet
from eqmar.networks.rcdnet import DerainOutput, RCDNet, background_conv_names

__all__ = [
    "ACDNet",
    "DICDNet",
    "OSCNet",
    "RCDNet",
    "DerainOutput",
    "background_conv_names",
    "MAROutput",
    "MARResidualUNet",
    "StrictClassifier",
    "StrictRestorationNet",
    "count_parameters",
    "mar_baseline_unet",
    "match_fields",
    "proximal_conv_names",
    "proximal_net_names",
]
