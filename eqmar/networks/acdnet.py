"""ACDNet: Adaptive Convolutional Dictionary Network for CT metal artifact reduction.

Hong Wang, Yuexiang Li, Deyu Meng, Yefeng Zheng, "Adaptive Convolutional Dictionary Network for CT
Metal Artifact Reduction", IJCAI 2022.

Model: the artifact of sample ``b`` is ``A_b = Σ_n C_{b,n} ⊛ M_{b,n}`` with sample-specific filters
``C_{b,n} = Σ_j K_{b,n,j} D_j``: a common dictionary ``D`` (``d`` filters, learned) mixed by
per-sample coefficients ``K_b`` (``N × d``, rows of unit norm) that are themselves unrolled
variables. Every stage takes proximal gradient steps on ``K`` (K-net), ``M`` (M-net) and ``X``
(X-net). Before the adaptive stages, two non-adaptive warm-up iterations with a plain dictionary
of ``N`` filters initialise ``M`` and ``X`` (supplementary material, Sec. 1.2), followed by two
identity-initialised 1×1 convolutions on ``M``.

Because the dictionary is linear, ``C_b ⊛ M_b = D ⊛ (K_bᵀ M_b)`` and the adjoint and the
coefficient gradient factor the same way, so no per-sample grouped convolution and no
``B·N·d·H·W`` tensor is ever formed.

Published configuration (defaults, X-net width 33 → 36 for C4 groups): T = 10 stages, d = 32
filters of 9×9, N = 6 feature maps, 3 ResBlocks of 3×3 convs per proximal net, eta_M = 1,
eta_X = 5, eta_K = 5, artifact threshold 1, M-net threshold 1.5. EQ-Reg regularises the X-nets of
ACDNet only (its M-net width N = 6 is not a multiple of 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eqmar.networks.blocks import (
    UPDATE_SCALE,
    ConvDictionary,
    ProximalNet,
    UnrolledMARNet,
    UnrolledRun,
    UnrolledStage,
    analyze,
    image_update,
    learnable_scalar,
    make_stages,
    oriented_gaussian_dictionary,
    run_common_dictionary_stages,
    synthesize,
)

__all__ = ["ACDNet", "CoefficientNet", "adaptive_synthesize", "adaptive_analyze", "coefficient_gradient"]

# The published K step is eta_K / (H·W·50): the gradient sums over all pixels, so it is divided
# by the pixel count to make the step independent of the patch size, and by 50 on top.
_COEFFICIENT_STEP_DIVISOR = 50.0


def adaptive_synthesize(feature_maps: torch.Tensor, coeffs: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """``A_b = Σ_n (Σ_j K_{b,n,j} D_j) ⊛ M_{b,n}``.

    Args:
        feature_maps: ``(B, N, H, W)``.
        coeffs: ``(B, N, d)``.
        dictionary: ``(1, d, k, k)``.
    """
    return synthesize(torch.einsum("bnd,bnhw->bdhw", coeffs, feature_maps), dictionary)


def adaptive_analyze(residual: torch.Tensor, coeffs: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`adaptive_synthesize` with respect to the feature maps: ``(B,1,H,W) -> (B,N,H,W)``."""
    return torch.einsum("bnd,bdhw->bnhw", coeffs, analyze(residual, dictionary))


def coefficient_gradient(feature_maps: torch.Tensor, residual: torch.Tensor, dictionary: torch.Tensor) -> torch.Tensor:
    """``G_{b,n,j} = <D_j ⊛ M_{b,n}, R_b>``: minus the gradient of ``½‖R‖²`` w.r.t. ``K`` (``(B, N, d)``)."""
    return torch.einsum("bnhw,bdhw->bnd", feature_maps, analyze(residual, dictionary))


class CoefficientNet(nn.Module):
    """Proximal net of the coefficients ``K``: a residual two-layer MLP, then unit-norm rows.

    Args:
        num_feature_maps: ``N``.
        num_filters: ``d``.
    """

    def __init__(self, num_feature_maps: int, num_filters: int) -> None:
        super().__init__()
        width = num_feature_maps * num_filters
        self.fc_1 = nn.Linear(width, width)
        self.fc_2 = nn.Linear(width, width)

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        flat = coeffs.flatten(1)
        flat = F.relu(flat + self.fc_2(F.relu(self.fc_1(flat))))
        # Unit-norm rows remove the scale ambiguity between the coefficients and the feature maps.
        return F.normalize(flat.view_as(coeffs), dim=2, eps=1e-6)


class ACDNet(UnrolledMARNet):
    """ACDNet backbone for 2-D metal artifact reduction.

    Input: ``(B, 3, H, W)`` = [ma_CT, LI_CT, non-metal mask (1 outside metal, 0 in metal)], µ maps.
    Output: ``(B, 1, H, W)`` in eval mode; :class:`~eqmar.networks.blocks.MAROutput` in training
    mode, including the two warm-up images/artifacts that the published loss also supervises.

    Sub-modules: ``init.x_net``, ``warmup_stages[i].x_net`` / ``.m_net`` (i < 2),
    ``stages[t].x_net`` / ``.m_net`` / ``.k_net``, ``final_x_net``, ``dictionary`` (``D``),
    ``warmup_dictionary``, ``feature_transition``. With ``R`` ResBlocks there are
    ``(T + 4)·2R`` X-net convs (84 for T = 10, R = 3) and ``(T + 2)·2R`` M-net convs of width
    ``N`` (regularisable only when ``N`` is a multiple of the group order).

    Args:
        spatial_dims: must be 2.
        num_stages: adaptive stages ``T`` (10 published).
        num_filters: common dictionary size ``d`` (32 published).
        num_feature_maps: feature maps per sample ``N`` = M-net width (6 published).
        features: X-net width (image + auxiliary channels; 33 published, 36 for C4).
        kernel_size: conv kernel size inside the proximal nets (3 published).
        dictionary_kernel_size: size of the dictionary filters (9 published).
        num_res_blocks: ResBlocks per proximal net (3 published).
        num_warmup_stages: non-adaptive warm-up iterations (2 published).
        eta_m: initial M step size (1 published).
        eta_x: initial X step size (5 published).
        eta_k: initial K step size (5 published).
        artifact_threshold: soft threshold on the first artifact estimate (1 published).
        feature_threshold: per-channel threshold at the end of every M-net (1.5 published).
        intensity_scale: internal scale applied to µ inputs (255 published).
        group_order: if not ``None``, ``features`` must be divisible by it (default 4).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_stages: int = 10,
        num_filters: int = 32,
        num_feature_maps: int = 6,
        features: int = 36,
        kernel_size: int = 3,
        dictionary_kernel_size: int = 9,
        num_res_blocks: int = 3,
        num_warmup_stages: int = 2,
        eta_m: float = 1.0,
        eta_x: float = 5.0,
        eta_k: float = 5.0,
        artifact_threshold: float = 1.0,
        feature_threshold: float = 1.5,
        intensity_scale: float = 255.0,
        group_order: int | None = 4,
    ) -> None:
        super().__init__(spatial_dims, features, num_res_blocks, kernel_size, intensity_scale, group_order)
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}.")
        if num_feature_maps < 1:
            raise ValueError(f"num_feature_maps must be >= 1, got {num_feature_maps}.")
        bank = oriented_gaussian_dictionary(max(num_filters, num_feature_maps), dictionary_kernel_size)
        self.dictionary = ConvDictionary(initial=bank[:, :num_filters])
        self.warmup_dictionary = ConvDictionary(initial=bank[:, :num_feature_maps])
        self.artifact_threshold = learnable_scalar(artifact_threshold)
        self.warmup_stages = make_stages(
            num_warmup_stages, features, num_feature_maps, num_res_blocks, kernel_size, eta_x, eta_m,
            feature_threshold,
        )
        self.feature_transition = nn.Sequential(
            nn.Conv2d(num_feature_maps, num_feature_maps, 1, bias=False),
            nn.Conv2d(num_feature_maps, num_feature_maps, 1, bias=False),
        )
        for conv in self.feature_transition:
            nn.init.dirac_(conv.weight)
        self.stages = nn.ModuleList(
            UnrolledStage(
                x_net=ProximalNet(features, num_res_blocks, kernel_size),
                m_net=ProximalNet(num_feature_maps, num_res_blocks, kernel_size, threshold=feature_threshold),
                eta_x=eta_x,
                eta_m=eta_m,
                k_net=CoefficientNet(num_feature_maps, num_filters),
                eta_k=None if t == 0 else eta_k,
            )
            for t in range(num_stages)
        )

    def unroll(
        self, image: torch.Tensor, aux: torch.Tensor, ma: torch.Tensor, mask: torch.Tensor
    ) -> UnrolledRun:
        warm_filters = self.warmup_dictionary()
        warm = run_common_dictionary_stages(
            self.warmup_stages, image, aux, ma, mask, warm_filters, warm_filters, self.artifact_threshold
        )
        image, aux = warm.image, warm.aux
        feature_maps = self.feature_transition(F.relu(warm.feature_maps))
        dictionary = self.dictionary()
        num_pixels = ma.shape[-2] * ma.shape[-1]
        coeffs = artifact = xq = None
        images, artifacts = [], []
        for stage in self.stages:
            residual = mask * (ma - image)
            if coeffs is None:
                coeffs = stage.k_net(coefficient_gradient(feature_maps, residual, dictionary))
            else:
                # ``artifact`` from the previous stage is exactly C(K) ⊛ M at the current K and M.
                grad_k = coefficient_gradient(feature_maps, residual - mask * artifact, dictionary)
                coeffs = stage.k_net(coeffs + stage.eta_k / (num_pixels * _COEFFICIENT_STEP_DIVISOR) * grad_k)
            artifact = adaptive_synthesize(feature_maps, coeffs, dictionary)
            grad_m = adaptive_analyze(residual - mask * artifact, coeffs, dictionary)
            feature_maps = stage.m_net(feature_maps + stage.eta_m * UPDATE_SCALE * grad_m)
            artifact = adaptive_synthesize(feature_maps, coeffs, dictionary)
            image, aux, xq = image_update(stage.x_net, stage.eta_x, image, aux, artifact, ma, mask)
            images.append(image)
            artifacts.append(artifact)
        return UnrolledRun(xq, tuple(images), tuple(artifacts), warm.images, warm.artifacts)
