"""DICDNet: Deep Interpretable Convolutional Dictionary Network for CT metal artifact reduction.

Hong Wang, Yuexiang Li, Nanjun He, Kai Ma, Deyu Meng, Yefeng Zheng, "DICDNet: Deep Interpretable
Convolutional Dictionary Network for Metal Artifact Reduction in CT Images", IEEE TMI 41(4), 2022
(early access 2021).

Model: the metal-affected image is ``Y = X + A`` outside metal, with the artifact ``A = Σ_k C_k ⊛ M_k``
built from a dictionary ``C`` (learned, shared by all samples and stages) and sparse feature maps
``M``. Each of the ``T`` unrolled stages takes a proximal gradient step on ``M`` (then the M-net)
and on ``X`` (then the X-net), all restricted to the non-metal region by the mask.

Published configuration (the defaults, with the X-net width raised from 33 to 36 so that EQ-Reg's
C4 groups fit): T = 10 stages, 3 ResBlocks of 3×3 convs per proximal net, 32 dictionary filters of
9×9, step sizes initialised at eta_M = 1 and eta_X = 5, a learnable soft threshold tau = 1 on the
first artifact estimate and a per-channel threshold of 0.5 at the end of every M-net.
"""

from __future__ import annotations

import torch
from torch import nn

from eqmar.networks.blocks import (
    ConvDictionary,
    UnrolledMARNet,
    UnrolledRun,
    check_group_divisible,
    learnable_scalar,
    make_stages,
    run_common_dictionary_stages,
)

__all__ = ["DICDNet"]


class DICDNet(UnrolledMARNet):
    """DICDNet backbone for 2-D metal artifact reduction.

    Input: ``(B, 3, H, W)`` = [ma_CT, LI_CT, non-metal mask (1 outside metal, 0 in metal)], µ maps.
    Output: ``(B, 1, H, W)`` corrected µ map in eval mode; :class:`~eqmar.networks.blocks.MAROutput`
    (final image + per-stage images/artifacts + ``X_0``) in training mode, for :class:`~eqmar.losses.MARLoss`.

    Sub-modules: ``init.x_net`` (computes ``X_0``), ``stages[t].x_net`` / ``stages[t].m_net``,
    ``final_x_net``, ``dictionary`` (shared by all stages) and ``first_dictionary`` (used only for
    the first back-projection, learned separately as published). With ``R`` ResBlocks there are
    ``(T + 2)·2R`` X-net convs and ``T·2R`` M-net convs (132 in all for T = 10, R = 3), all
    ``C -> C`` and therefore all regularisable by EQ-Reg when C is a multiple of the group order.

    Args:
        spatial_dims: must be 2.
        num_stages: number of unrolled stages ``T`` (10 published).
        num_filters: dictionary size = number of feature-map channels = M-net width (32 published).
        features: X-net width, the image channel plus ``features - 1`` auxiliary channels
            (33 published; 36 here so that C4 groups fit).
        kernel_size: conv kernel size inside the proximal nets (3 published).
        dictionary_kernel_size: size of the dictionary filters (9 published).
        num_res_blocks: ResBlocks per proximal net (3 published).
        eta_m: initial M step size (1 published).
        eta_x: initial X step size (5 published).
        artifact_threshold: initial soft threshold on the first artifact estimate (1 published,
            in the internal 0-255 scale).
        feature_threshold: initial per-channel threshold at the end of every M-net (0.5 published).
        intensity_scale: internal scale applied to µ inputs (255: the published networks see µ·255).
        group_order: if not ``None``, ``features`` and ``num_filters`` must be divisible by it
            (default 4, the C4 group of EQ-Reg).
        dictionary: advanced: a module whose ``forward()`` returns the ``(1, K, k, k)`` dictionary
            and with ``num_atoms`` and ``raw_filters()`` (OSCNet passes an orientation-shared one);
            default a learnable :class:`~eqmar.networks.blocks.ConvDictionary`.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_stages: int = 10,
        num_filters: int = 32,
        features: int = 36,
        kernel_size: int = 3,
        dictionary_kernel_size: int = 9,
        num_res_blocks: int = 3,
        eta_m: float = 1.0,
        eta_x: float = 5.0,
        artifact_threshold: float = 1.0,
        feature_threshold: float = 0.5,
        intensity_scale: float = 255.0,
        group_order: int | None = 4,
        dictionary: nn.Module | None = None,
    ) -> None:
        super().__init__(spatial_dims, features, num_res_blocks, kernel_size, intensity_scale, group_order)
        self.dictionary = dictionary if dictionary is not None else ConvDictionary(num_filters, dictionary_kernel_size)
        num_atoms = self.dictionary.num_atoms
        check_group_divisible("num_filters", num_atoms, group_order)
        self.first_dictionary = ConvDictionary(initial=self.dictionary.raw_filters().detach())
        self.artifact_threshold = learnable_scalar(artifact_threshold)
        self.stages = make_stages(
            num_stages, features, num_atoms, num_res_blocks, kernel_size, eta_x, eta_m, feature_threshold
        )

    def unroll(
        self, image: torch.Tensor, aux: torch.Tensor, ma: torch.Tensor, mask: torch.Tensor
    ) -> UnrolledRun:
        trace = run_common_dictionary_stages(
            self.stages, image, aux, ma, mask, self.dictionary(), self.first_dictionary(), self.artifact_threshold
        )
        return UnrolledRun(trace.xq, trace.images, trace.artifacts)
