"""EQ-Reg: soft rotation equivariance for ordinary CNNs (Bai, Fu, Xie, Meng, CVPR 2025).

- :mod:`~eqmar.equivariance.groups`: C2, C4, D4, C8 acting on images and orientation channels.
- :mod:`~eqmar.equivariance.functional`: the per-layer residual.
- :mod:`~eqmar.equivariance.pairing`: the paired batch ``[x ; g · x]``.
- :mod:`~eqmar.equivariance.eqreg`: :class:`EQReg`, the handler for MONAI/Ignite trainers.
- :mod:`~eqmar.equivariance.diagnostics`: per-layer equivariance errors and their plot.
- :mod:`~eqmar.equivariance.gconv`: strictly equivariant group convolutions.
"""

from __future__ import annotations

from eqmar.equivariance.diagnostics import EquivarianceReport, equivariance_report, plot_equivariance_report
from eqmar.equivariance.eqreg import EQReg
from eqmar.equivariance.functional import equivariance_difference, equivariance_residual
from eqmar.equivariance.gconv import GroupConv2d, GroupLiftingConv2d, GroupPool
from eqmar.equivariance.groups import C2, C4, C8, D4, GROUPS, RotationGroup, get_group
from eqmar.equivariance.layers import convs_divisible_by, select_layers, unwrap_network
from eqmar.equivariance.pairing import RotationPairing, pair_batch

__all__ = [
    "EQReg",
    "EquivarianceReport",
    "equivariance_report",
    "plot_equivariance_report",
    "equivariance_difference",
    "equivariance_residual",
    "GroupConv2d",
    "GroupLiftingConv2d",
    "GroupPool",
    "RotationGroup",
    "C2",
    "C4",
    "C8",
    "D4",
    "GROUPS",
    "get_group",
    "convs_divisible_by",
    "select_layers",
    "unwrap_network",
    "pair_batch",
    "RotationPairing",
]
