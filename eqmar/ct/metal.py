"""Metal insertion in the projection domain: metal attenuation, metal trace, partial-volume
edges and linear interpolation (LI) across the trace.
"""

from __future__ import annotations

import numpy as np

from eqmar.ct.materials import METAL_DENSITIES, REFERENCE_ENERGY_KEV, mass_attenuation, metal_symbol
from eqmar.utils import require_extra

require_extra(__name__, "scipy")

__all__ = [
    "PARTIAL_VOLUME_EROSION_BINS",
    "PARTIAL_VOLUME_FACTOR",
    "metal_attenuation",
    "metal_trace",
    "apply_partial_volume",
    "interpolate_trace",
]

#: Length (bins, along the detector) of the erosion that finds the trace edges.
PARTIAL_VOLUME_EROSION_BINS = 3
#: Edge bins of the metal trace are divided by this factor (partial-volume effect).
PARTIAL_VOLUME_FACTOR = 4.0


def metal_attenuation(metal: str = "Ti", density: float | None = None) -> float:
    """Linear attenuation of a metal at 70 keV (1/cm): ``density * µ/ρ(70 keV)``.

    Args:
        metal: element symbol or name (``"Ti"``, ``"titanium"``, ``"Fe"``, ...).
        density: g/cm³; ``None`` takes the element's density (Ti: 4.5 -> 2.41245 /cm).

    Raises:
        ValueError: for an unknown metal or a non-positive density.
    """
    symbol = metal_symbol(metal)
    rho = METAL_DENSITIES[symbol] if density is None else float(density)
    if not np.isfinite(rho) or rho <= 0:
        raise ValueError(f"metal_attenuation: density must be positive, got {density!r}")
    return rho * float(mass_attenuation(symbol, REFERENCE_ENERGY_KEV)[0])


def metal_trace(metal_projection: np.ndarray) -> np.ndarray:
    """Boolean metal trace: the rays that cross metal (``projection > 0``)."""
    return np.asarray(metal_projection) > 0


def _check_sinogram_pair(sinogram: np.ndarray, trace: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    sinogram = np.asarray(sinogram)
    trace = np.asarray(trace, dtype=bool)
    if sinogram.ndim != 2 or sinogram.shape != trace.shape:
        raise ValueError(
            f"{name}: sinogram and trace must be 2-D (views, bins) of equal shape, "
            f"got {sinogram.shape} and {trace.shape}"
        )
    return sinogram, trace


def apply_partial_volume(
    metal_projection: np.ndarray,
    erosion_bins: int = PARTIAL_VOLUME_EROSION_BINS,
    factor: float = PARTIAL_VOLUME_FACTOR,
) -> np.ndarray:
    """Weaken the edges of the metal trace to model partial-volume rays.

    The trace is eroded along the detector axis with a ``erosion_bins``-long line; the bins the
    erosion removes (trace XOR eroded trace) are divided by ``factor``. Bins at the detector border
    are not treated as edges (the image outside the detector is unknown).

    Returns:
        float32 copy of ``metal_projection`` with weakened edges.
    """
    from scipy.ndimage import binary_erosion

    projection = np.array(metal_projection, dtype=np.float32)
    if projection.ndim != 2:
        raise ValueError(f"apply_partial_volume: metal_projection must be 2-D (views, bins), got {projection.shape}")
    if erosion_bins < 1 or factor <= 0:
        raise ValueError(
            f"apply_partial_volume: erosion_bins must be >= 1 and factor > 0, got {erosion_bins}, {factor}"
        )
    trace = metal_trace(projection)
    eroded = binary_erosion(trace, structure=np.ones((1, erosion_bins), dtype=bool), border_value=1)
    edges = trace & ~eroded
    projection[edges] /= np.float32(factor)
    return projection


def interpolate_trace(sinogram: np.ndarray, trace: np.ndarray) -> np.ndarray:
    """Linear interpolation across the metal trace, view by view, along the detector.

    Each trace bin takes the value interpolated linearly between the nearest non-trace bins on
    its left and right in the same view; a trace run touching the detector border takes the value
    of its one neighbour; a view entirely in the trace is left unchanged. Bins outside the trace
    are copied. Vectorised over all views.

    Returns:
        float32 array shaped like ``sinogram``.
    """
    sinogram, trace = _check_sinogram_pair(sinogram, trace, "interpolate_trace")
    result = np.array(sinogram, dtype=np.float32)
    if not trace.any():
        return result
    num_bins = trace.shape[1]
    bins = np.broadcast_to(np.arange(num_bins), trace.shape)
    left = np.maximum.accumulate(np.where(trace, -1, bins), axis=1)
    right = np.minimum.accumulate(np.where(trace, num_bins, bins)[:, ::-1], axis=1)[:, ::-1]
    has_left = left >= 0
    has_right = right < num_bins
    left_values = np.take_along_axis(result, np.clip(left, 0, num_bins - 1), axis=1)
    right_values = np.take_along_axis(result, np.clip(right, 0, num_bins - 1), axis=1)
    both = has_left & has_right
    span = np.maximum(right - left, 1)  # outside the trace left == right: avoid 0/0
    weight = np.where(both, (bins - left) / span, np.where(has_left, 0.0, 1.0))
    interpolated = left_values + weight.astype(np.float32) * (right_values - left_values)
    fill = trace & (has_left | has_right)
    result[fill] = interpolated[fill]
    return result
