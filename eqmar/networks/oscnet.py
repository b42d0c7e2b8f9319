"""OSCNet: orientation-shared convolutional dictionary network for CT metal artifact reduction.

Hong Wang, Qi Xie, Yuexiang Li, Yawen Huang, Deyu Meng, Yefeng Zheng, "Orientation-Shared
Convolution Representation for CT Metal Artifact Learning", MICCAI 2022 (OSCNet; extended as
OSCNet+ in IEEE TMI 2023).

OSCNet is DICDNet with a structured dictionary: metal artifacts are streaks radiating in many
directions, so each of ``num_filters`` base filters is used at ``num_rotations`` orientations that
share its weights. A filter is a Fourier-series expansion ``f(p) = Σ_i w_i φ_i(p)`` on continuous
coordinates ``p ∈ [-1, 1]²``; its rotated copy by ``θ_r = 2πr / num_rotations`` is evaluated
exactly as ``Σ_i w_i φ_i(R_θr⁻¹ p)``, so rotation costs no interpolation. The basis is windowed
smoothly outside the unit disc (where a rotated square filter has no support) and orthonormalised
over all orientations jointly.

Published configuration: 4 base filters × 8 orientations = 32 feature maps (M-net width), 9×9
filters, Fourier order 5, T = 10, otherwise as DICDNet.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from eqmar.networks.blocks import UPDATE_SCALE, oriented_gaussian_dictionary
from eqmar.networks.dicdnet import DICDNet

__all__ = ["OSCNet", "OrientationSharedDictionary", "rotated_fourier_basis"]


def _harmonics(order: int) -> list[tuple[int, int]]:
    """Integer frequency pairs of a 2-D Fourier series of the given order, one of each ±pair."""
    low, high = -(order // 2), (order - 1) // 2
    pairs = [(k, j) for k in range(low, high + 1) for j in range(low, high + 1)]
    return [(k, j) for k, j in pairs if k > 0 or (k == 0 and j >= 0)]


def rotated_fourier_basis(kernel_size: int = 9, num_rotations: int = 8, order: int = 5) -> torch.Tensor:
    """Orthonormal Fourier basis sampled at ``num_rotations`` rotations of the filter grid.

    Args:
        kernel_size: odd filter size.
        num_rotations: number of evenly spaced orientations over 360°.
        order: number of harmonics per axis.

    Returns:
        tensor ``(num_rotations, kernel_size, kernel_size, rank)``; ``basis[r] @ w`` is the filter
        with coefficients ``w`` rotated by ``2πr / num_rotations``; when ``r·4/num_rotations`` is
        an integer ``n`` this equals ``torch.rot90(basis[0] @ w, n)`` exactly.
    """
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}.")
    if num_rotations < 1 or order < 1:
        raise ValueError(f"num_rotations and order must be >= 1, got {num_rotations}, {order}.")
    half = (kernel_size - 1) / 2
    coords = torch.arange(kernel_size, dtype=torch.float64) / half - 1.0
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    # Negative angles in (row, column) coordinates: then the quarter-turn copies equal
    # ``torch.rot90(base, r)``, the rotation convention of EQ-Reg.
    theta = torch.arange(num_rotations, dtype=torch.float64).view(-1, 1, 1) * (-2 * math.pi / num_rotations)
    xr = torch.cos(theta) * xx + torch.sin(theta) * yy
    yr = -torch.sin(theta) * xx + torch.cos(theta) * yy
    # Frequency spacing chosen so the highest harmonic stays just below the grid's Nyquist rate.
    omega = math.pi * (order - 1) / order
    radius2 = xx**2 + yy**2
    window = torch.exp(-torch.clamp(radius2 - 1.0, min=0.0) / 0.2)
    columns = []
    for k, j in _harmonics(order):
        phase = omega * (k * xr + j * yr)
        columns.append(torch.cos(phase) * window)
        if (k, j) != (0, 0):
            columns.append(torch.sin(phase) * window)
    raw = torch.stack(columns, dim=-1).reshape(num_rotations * kernel_size**2, -1)
    u, s, _ = torch.linalg.svd(raw, full_matrices=False)
    rank = int((s > 1e-6 * s[0]).sum())
    return u[:, :rank].reshape(num_rotations, kernel_size, kernel_size, rank).float()


class OrientationSharedDictionary(nn.Module):
    """Dictionary of ``num_filters`` base filters, each at ``num_rotations`` orientations.

    Channel ``m·num_rotations + r`` holds base filter ``m`` rotated by ``2πr / num_rotations``
    (orientation index fastest). Coefficients are initialised by least squares so that the
    unrotated filters approximate :func:`~eqmar.networks.blocks.oriented_gaussian_dictionary`.

    Args:
        num_filters: number of base filters (4 published).
        num_rotations: orientations per base filter (8 published).
        kernel_size: filter size (9 published).
        order: Fourier order (5 published).
    """

    def __init__(self, num_filters: int = 4, num_rotations: int = 8, kernel_size: int = 9, order: int = 5) -> None:
        super().__init__()
        basis = rotated_fourier_basis(kernel_size, num_rotations, order)
        self.register_buffer("basis", basis)
        self.num_rotations = num_rotations
        target = oriented_gaussian_dictionary(num_filters, kernel_size)[0].flatten(1).T.double()
        design = basis[0].flatten(0, 1).double()
        coeffs = torch.linalg.lstsq(design, target).solution.T
        self.coefficients = nn.Parameter(coeffs.float())

    @property
    def num_atoms(self) -> int:
        """Number of dictionary filters = feature-map channels (base filters × orientations)."""
        return int(self.coefficients.shape[0]) * self.num_rotations

    def raw_filters(self) -> torch.Tensor:
        """All rotated filters ``(1, num_filters·num_rotations, k, k)``, without the update scale."""
        filters = torch.einsum("rhwi,mi->mrhw", self.basis, self.coefficients)
        return filters.reshape(1, -1, *filters.shape[-2:])

    def forward(self) -> torch.Tensor:
        return self.raw_filters() * UPDATE_SCALE


class OSCNet(DICDNet):
    """OSCNet backbone: :class:`~eqmar.networks.dicdnet.DICDNet` with an orientation-shared dictionary.

    Input/output conventions, sub-module names and conv counts are those of DICDNet; the M-net
    width is ``num_filters · num_rotations`` (32 published).

    Args:
        spatial_dims: must be 2.
        num_stages: unrolled stages ``T`` (10 published).
        num_filters: base filters per orientation (4 published).
        num_rotations: orientations (8 published).
        fourier_order: harmonics per axis of the filter expansion (5 published).
        features: X-net width (33 published; 36 for C4).
        kernel_size: conv kernel size inside the proximal nets.
        dictionary_kernel_size: size of the dictionary filters (9 published).
        num_res_blocks: ResBlocks per proximal net (3 published).
        eta_m, eta_x, artifact_threshold, feature_threshold, intensity_scale, group_order: as DICDNet.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        num_stages: int = 10,
        num_filters: int = 4,
        num_rotations: int = 8,
        fourier_order: int = 5,
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
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            num_stages=num_stages,
            features=features,
            kernel_size=kernel_size,
            num_res_blocks=num_res_blocks,
            eta_m=eta_m,
            eta_x=eta_x,
            artifact_threshold=artifact_threshold,
            feature_threshold=feature_threshold,
            intensity_scale=intensity_scale,
            group_order=group_order,
            dictionary=OrientationSharedDictionary(num_filters, num_rotations, dictionary_kernel_size, fourier_order),
        )
