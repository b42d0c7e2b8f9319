"""Numba kernels behind :mod:`eqmar.equivariance.fused_cpu` (imported only when numba is installed).

Arrays are C-contiguous float32 ``(B, C, H, W)`` halves of a paired feature tensor. ``q`` is the number
of quarter turns of the group element and ``n`` its channel shift within groups of ``order``
orientation channels. ``memory`` holds the difference ``rot_q(z0) - shift_n(z1)`` in the memory layout
``torch.rot90`` gives its result: for odd ``q`` the difference is ``memory.transpose(2, 3)``, so a norm
over it sums in the same order as the PyTorch path does.

Every element is one IEEE subtraction, or one product followed by one sum. numba does not contract
these into fused multiply-adds unless asked (no ``fastmath``), so results are bit-identical to the
PyTorch operations they replace.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["rotated_difference_planes", "residual_gradient_planes"]


@njit(parallel=True, cache=True, nogil=True)
def rotated_difference_planes(
    z0: np.ndarray, z1: np.ndarray, memory: np.ndarray, q: int, n: int, order: int
) -> None:  # pragma: no cover - compiled
    """``memory = rot_q(z0) - shift_n(z1)``, written in ``torch.rot90``'s layout (see the module docstring)."""
    batch, channels, height, width = z0.shape
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        source = z0[b, c]
        shifted = z1[b, c - c % order + (c % order + n) % order]
        out = memory[b, c]
        if q == 0:
            for i in range(height):
                for j in range(width):
                    out[i, j] = source[i, j] - shifted[i, j]
        elif q == 2:
            for i in range(height):
                for j in range(width):
                    out[i, j] = source[height - 1 - i, width - 1 - j] - shifted[i, j]
        elif q == 1:  # rot90(z0, 1) is flip(z0, W) viewed transposed
            for i in range(height):
                for j in range(width):
                    out[i, j] = source[i, width - 1 - j] - shifted[j, i]
        else:  # rot90(z0, 3) is flip(z0, H) viewed transposed
            for i in range(height):
                for j in range(width):
                    out[i, j] = source[height - 1 - i, j] - shifted[j, i]


@njit(parallel=True, cache=True, nogil=True)
def residual_gradient_planes(
    memory: np.ndarray,
    grad0: np.ndarray,
    grad1: np.ndarray,
    out0: np.ndarray,
    out1: np.ndarray,
    factor: np.float32,
    q: int,
    n: int,
    order: int,
    has_grad: bool,
) -> None:  # pragma: no cover - compiled
    """``out0 = rot_q^-1(d) * factor + grad0`` and ``out1 = shift_n^-1(d) * (-factor) + grad1``."""
    batch, channels, height, width = memory.shape
    negative = -factor
    for plane in prange(batch * channels):
        b, c = plane // channels, plane % channels
        shifted_c = c - c % order + (c % order + n) % order
        d = memory[b, c]
        first, second = out0[b, c], out1[b, shifted_c]
        g0, g1 = grad0[b, c], grad1[b, shifted_c]
        # one loop per turn: a branch inside the loop keeps it from being vectorised
        if q == 0:
            for i in range(height):
                for j in range(width):
                    first[i, j] = _scaled_sum(d[i, j], factor, g0[i, j], has_grad)
                    second[i, j] = _scaled_sum(d[i, j], negative, g1[i, j], has_grad)
        elif q == 2:
            for i in range(height):
                for j in range(width):
                    first[i, j] = _scaled_sum(d[height - 1 - i, width - 1 - j], factor, g0[i, j], has_grad)
                    second[i, j] = _scaled_sum(d[i, j], negative, g1[i, j], has_grad)
        elif q == 1:
            for i in range(height):
                for j in range(width):
                    first[i, j] = _scaled_sum(d[i, width - 1 - j], factor, g0[i, j], has_grad)
                    second[i, j] = _scaled_sum(d[j, i], negative, g1[i, j], has_grad)
        else:
            for i in range(height):
                for j in range(width):
                    first[i, j] = _scaled_sum(d[height - 1 - i, j], factor, g0[i, j], has_grad)
                    second[i, j] = _scaled_sum(d[j, i], negative, g1[i, j], has_grad)


@njit(inline="always", cache=True)
def _scaled_sum(value: np.float32, factor: np.float32, grad: np.float32, has_grad: bool) -> np.float32:  # pragma: no cover
    # a rounded product, then a rounded sum: what autograd's accumulation of a separate term gives
    term = value * factor
    return term + grad if has_grad else term
