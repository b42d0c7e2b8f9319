"""RCDNet: the rain convolutional dictionary network for single-image deraining.

Hong Wang, Qi Xie, Qian Zhao, Deyu Meng, "A Model-driven Deep Neural Network for Single Image Rain
Removal", CVPR 2020.

Model: a rainy image is ``O = B + R`` with the rain layer ``R = Σ_k C_k ⊛ M_k`` built from a learned
rain-kernel dictionary ``C`` (shared by all samples and stages) and sparse rain maps ``M``. Each of
the ``S`` unrolled stages takes a proximal gradient step on ``M`` followed by the M-net, then one on
the background ``B`` followed by the B-net. It is the deraining ancestor of DICDNet and unrolls
exactly the same scheme with colour channels and no mask, so it is assembled here from the blocks of
:mod:`eqmar.networks.blocks` (the B-net is the ``x_net`` of those blocks; the authors' code calls it
``Xnet`` as well).

Published configuration (the defaults, with the B-net width raised from 3 + 32 = 35 to 36 so that
EQ-Reg's C4 groups fit, as in the EQ-Reg paper): S = 17 stages, 32 rain kernels of 9×9 per colour
channel, 32 rain maps in the M-net, 4 ResBlocks of 3×3 convs per proximal net (``T = 4`` in the
authors' code), step sizes initialised at eta_M = 1 and eta_B = 5, a learnable soft threshold
tau = 1 on the first rain estimate and a per-channel threshold of 0.5 at the end of every M-net.
The published network works on 0-255 images: inputs in [0, 1] are multiplied by
``intensity_scale`` (255) inside, and every returned image is divided by it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from eqmar.networks.blocks import (
    ConvDictionary,
    ImageInitializer,
    ProximalNet,
    check_group_divisible,
    learnable_scalar,
    make_stages,
    proximal_conv_names,
    run_common_dictionary_stages,
    scale_outputs,
)

__all__ = ["RCDNet", "DerainOutput", "background_conv_names", "BACKGROUND_NETS", "RAIN_NETS"]

#: Sub-network kinds of the background proximal nets (B-net: ``init.x_net``, ``stages.*.x_net``,
#: ``final_x_net``) and of the rain-map proximal nets (M-net), for :func:`proximal_conv_names`.
BACKGROUND_NETS = ("x_net",)
RAIN_NETS = ("m_net",)


class DerainOutput(NamedTuple):
    """Training-mode output of :class:`RCDNet` (all tensors ``(B, C, H, W)``, in the input's units).

    Attributes:
        background: final background (after the last B-net refinement); also the eval-mode output.
        stage_backgrounds: per-stage backgrounds ``B_1 .. B_S`` (before the final refinement).
        stage_rains: per-stage rain layers ``R_1 .. R_S``.
        init_background: the initial estimate ``B_0``.
        rainy: the rainy input ``O``, needed by the loss for the rain target ``O - B_gt``.

    Note:
        MONAI's ``SupervisedTrainer`` decollates ``engine.state.output`` after each iteration; the
        tuple then becomes a per-sample list in field order, so training-time handlers find the
        final background at ``output[i]["pred"][0]``. Evaluators run in eval mode and get a tensor.
    """

    background: torch.Tensor
    stage_backgrounds: tuple[torch.Tensor, ...]
    stage_rains: tuple[torch.Tensor, ...]
    init_background: torch.Tensor
    rainy: torch.Tensor


class RCDNet(nn.Module):
    """RCDNet backbone for 2-D single-image rain removal.

    Input: rainy images ``(B, C, H, W)`` in [0, 1] (``C = in_channels``, 3 for RGB).
    Output: the background ``(B, C, H, W)`` in eval mode; :class:`DerainOutput` (final background +
    per-stage backgrounds/rain layers + ``B_0``) in training mode, for :class:`~eqmar.losses.DerainLoss`.

    Sub-modules: ``init.x_net`` (computes ``B_0``), ``stages[s].x_net`` (B-net) / ``stages[s].m_net``
    (M-net), ``final_x_net``, ``dictionary`` (the rain kernels ``C``, shared by all stages) and
    ``first_dictionary`` (used only for the first back-projection, learned separately as published).
    With ``T`` ResBlocks there are ``(S + 2)·2T`` B-net convs (``features -> features``) and
    ``S·2T`` M-net convs; :func:`background_conv_names` lists the B-net ones, the layers EQ-Reg
    regularises for deraining.

    Args:
        spatial_dims: must be 2.
        in_channels: image channels (3 published; 1 for grey images).
        num_stages: number of unrolled stages ``S`` (17 published).
        num_filters: rain kernels = rain-map channels = M-net width (32 published).
        features: B-net width: the image channels plus ``features - in_channels`` auxiliary channels
            (3 + 32 published; 36 here so that C4 groups fit).
        kernel_size: conv kernel size inside the proximal nets (3 published).
        dictionary_kernel_size: size of the rain kernels (9 published).
        num_res_blocks: ResBlocks per proximal net (4 published).
        eta_m: initial M step size (1 published).
        eta_b: initial B step size (5 published).
        rain_threshold: initial soft threshold on the first rain estimate (1 published, 0-255 scale).
        map_threshold: initial per-channel threshold at the end of every M-net (0.5 published).
        intensity_scale: internal scale of [0, 1] inputs (255: the published network sees 0-255).
        group_order: if not ``None``, ``features`` and ``num_filters`` must be divisible by it
            (default 4, the C4 group of EQ-Reg).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_stages: int = 17,
        num_filters: int = 32,
        features: int = 36,
        kernel_size: int = 3,
        dictionary_kernel_size: int = 9,
        num_res_blocks: int = 4,
        eta_m: float = 1.0,
        eta_b: float = 5.0,
        rain_threshold: float = 1.0,
        map_threshold: float = 0.5,
        intensity_scale: float = 255.0,
        group_order: int | None = 4,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"spatial_dims={spatial_dims} is not supported: RCDNet is 2-D only.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        check_group_divisible("features", features, group_order)
        check_group_divisible("num_filters", num_filters, group_order)
        if not intensity_scale > 0:
            raise ValueError(f"intensity_scale must be > 0, got {intensity_scale}.")
        self.in_channels = int(in_channels)
        self.intensity_scale = float(intensity_scale)
        self.init = ImageInitializer(features, num_res_blocks, kernel_size, image_channels=in_channels)
        self.dictionary = ConvDictionary(num_filters, dictionary_kernel_size, image_channels=in_channels)
        self.first_dictionary = ConvDictionary(initial=self.dictionary.raw_filters().detach())
        self.rain_threshold = learnable_scalar(rain_threshold)
        self.stages = make_stages(
            num_stages, features, num_filters, num_res_blocks, kernel_size, eta_b, eta_m, map_threshold
        )
        self.final_x_net = ProximalNet(features, num_res_blocks, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor | DerainOutput:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"RCDNet expects rainy images of shape (B, {self.in_channels}, H, W), got {shape}.")
        s = self.intensity_scale
        rainy = x * s
        background0, aux0 = self.init(rainy)
        trace = run_common_dictionary_stages(
            self.stages, background0, aux0, rainy, 1.0,
            self.dictionary(), self.first_dictionary(), self.rain_threshold,
        )
        final = self.final_x_net(trace.xq)[:, : self.in_channels] / s
        if not self.training:
            return final
        return DerainOutput(
            background=final,
            stage_backgrounds=scale_outputs(s, *trace.images),
            stage_rains=scale_outputs(s, *trace.artifacts),
            init_background=background0 / s,
            rainy=x,
        )


def background_conv_names(
    net: nn.Module, group_order: int | None = None, which: Sequence[str] = BACKGROUND_NETS
) -> list[str]:
    """Qualified names of RCDNet's B-net convs: the layers EQ-Reg regularises for deraining.

    The EQ-Reg paper regularises only the background ("X-net") proximal nets of RCDNet: every conv
    of ``init.x_net``, ``stages[s].x_net`` and ``final_x_net`` (``(S + 2)·2T`` layers). The rain-map
    nets, the rain kernels and the initial 3×3 filters are left alone.

    Args:
        net: an :class:`RCDNet` (a DDP ``module.`` prefix is kept as is).
        group_order: when given, raise if a selected conv has out-channels not divisible by it.
        which: sub-network kinds (default the B-net; add :data:`RAIN_NETS` to include the M-net).

    Returns:
        names usable with ``net.get_submodule`` and as EQ-Reg's ``layers``.
    """
    return proximal_conv_names(net, which=which, group_order=group_order)
