"""Equi-angular (arc) fan-beam detector: ray layout and the fan-beam Ram-Lak filter.

An arc detector is centred on the source and samples the fan angle ``gamma`` uniformly:
bin ``k`` looks along ``gamma_k = (k - (num_det - 1) / 2) * det_spacing`` (radians) measured from
the central ray, towards the side where a flat detector's bin index grows
(:func:`~eqmar.ct.geometry.fan_view_frames`), so the two detectors' sinograms share their
orientation.

Filtered back-projection follows Kak & Slaney (*Principles of Computerized Tomographic Imaging*,
ch. 3.4.2, equi-angular rays) for a full 360 degree scan with source radius ``R``:

1. weight each projection by ``R cos(gamma)``;
2. convolve along the detector with ``g(n) = (1/2) (n dg / sin(n dg))^2 h(n dg)``, ``h`` the
   band-limited ramp, i.e. ``g(0) = 1 / (8 dg^2)``, ``g(n) = 0`` for even ``n`` and
   ``g(n) = -1 / (2 (pi sin(n dg))^2)`` for odd ``n``, and multiply by ``dg``
   (:class:`ArcRampFilter`);
3. back-project with weight ``d_beta / L^2``, ``L`` the source-pixel distance in cm
   (:class:`~eqmar.ct.backprojection.PixelDrivenBackprojector` with ``weighting="fbp"``).

The ``1/2`` of the full-turn average is already in ``g``. With sinograms of line integrals
(dimensionless) the result is in 1/cm, as the flat path's ODL ``fbp_op``. The kernel is sampled in
space and applied by zero-padded FFT (linear, not circular, convolution), so unlike ODL's
frequency-sampled ramp it adds no constant offset.
"""

from __future__ import annotations

import numpy as np

from eqmar.ct.geometry import FanBeamGeometry, fan_view_frames
from eqmar.utils import require_extra

require_extra(__name__, "scipy")

__all__ = ["arc_fan_angles", "arc_ray_directions", "arc_astra_vectors", "arc_ramp_kernel", "ArcRampFilter"]


def _require_arc(geometry: FanBeamGeometry, caller: str) -> None:
    if not isinstance(geometry, FanBeamGeometry) or geometry.detector != "arc":
        detector = getattr(geometry, "detector", type(geometry).__name__)
        raise ValueError(f"{caller}: needs an arc-detector FanBeamGeometry, got detector={detector!r}")


def arc_fan_angles(geometry: FanBeamGeometry) -> np.ndarray:
    """Fan angle of each bin centre in radians, ``(num_det,)`` float64, 0 on the central ray.

    Raises:
        ValueError: when ``geometry`` does not have an arc detector.
    """
    _require_arc(geometry, "arc_fan_angles")
    return (np.arange(geometry.num_det) - (geometry.num_det - 1) / 2.0) * geometry.det_spacing


def arc_ray_directions(geometry: FanBeamGeometry) -> np.ndarray:
    """Unit direction of every ray, ``(views, bins, 2)`` float64 (image x right, y up).

    Raises:
        ValueError: when ``geometry`` does not have an arc detector.
    """
    gamma = arc_fan_angles(geometry)
    return _in_fan_frames(geometry, np.cos(gamma), np.sin(gamma))


def _in_fan_frames(geometry: FanBeamGeometry, central_parts: np.ndarray, bin_axis_parts: np.ndarray) -> np.ndarray:
    """Per-bin vectors ``central_parts[k] * central + bin_axis_parts[k] * bin_axis`` of every view."""
    _, central, bin_axes = fan_view_frames(geometry)
    return central_parts[None, :, None] * central[:, None, :] + bin_axis_parts[None, :, None] * bin_axes[:, None, :]


def arc_astra_vectors(geometry: FanBeamGeometry) -> np.ndarray:
    """ASTRA ``fanflat_vec`` rows describing the arc rays one by one, in pixel units.

    ASTRA's 2-D projectors know flat detectors only, but a ``fanflat_vec`` row may hold a single
    bin: row ``view * num_det + bin`` has that view's source, the bin centre on the physical arc
    (radius ``source_origin_cm + origin_det_cm`` around the source) and the bin's chord along the
    arc as its width. A projection with these rows, reshaped to ``(views, bins)``, is the arc
    sinogram.

    Returns:
        ``(views * bins, 6)`` float64 rows ``(src_x, src_y, det_x, det_y, u_x, u_y)``.

    Raises:
        ValueError: when ``geometry`` does not have an arc detector.
    """
    sources, _, _ = fan_view_frames(geometry)
    gamma = arc_fan_angles(geometry)
    directions = _in_fan_frames(geometry, np.cos(gamma), np.sin(gamma))
    tangents = _in_fan_frames(geometry, -np.sin(gamma), np.cos(gamma))  # d(direction)/d(gamma)
    radius = geometry.source_origin_cm + geometry.origin_det_cm
    rows = np.concatenate(
        [
            np.broadcast_to(sources[:, None, :], directions.shape),
            sources[:, None, :] + radius * directions,
            radius * geometry.det_spacing * tangents,
        ],
        axis=-1,
    )
    return rows.reshape(-1, 6) / geometry.pixel_size_cm


def arc_ramp_kernel(num_det: int, spacing: float) -> np.ndarray:
    """Equi-angular ramp kernel ``g(n)`` for ``n = -(num_det - 1) ... num_det - 1`` (1/rad^2).

    Args:
        num_det: number of detector bins (the kernel covers every bin difference).
        spacing: fan-angle step ``dg`` in radians.

    Returns:
        ``(2 * num_det - 1,)`` float64, ``g(0)`` in the middle.

    Raises:
        ValueError: for a non-positive ``num_det`` or ``spacing``, or bins spanning half a turn
            or more (``sin(n dg)`` would vanish).
    """
    if isinstance(num_det, bool) or not isinstance(num_det, (int, np.integer)) or num_det < 1:
        raise ValueError(f"arc_ramp_kernel: num_det must be a positive integer, got {num_det!r}")
    if not np.isfinite(spacing) or spacing <= 0:
        raise ValueError(f"arc_ramp_kernel: spacing must be a positive finite angle (radians), got {spacing!r}")
    if (num_det - 1) * spacing >= np.pi:
        raise ValueError(f"arc_ramp_kernel: {num_det} bins of {spacing} rad span half a turn or more")
    offsets = np.arange(-(num_det - 1), num_det)
    kernel = np.zeros(offsets.size)
    odd = offsets % 2 == 1
    kernel[odd] = -1.0 / (2.0 * (np.pi * np.sin(offsets[odd] * spacing)) ** 2)
    kernel[num_det - 1] = 1.0 / (8.0 * spacing**2)
    return kernel


class ArcRampFilter:
    """Ram-Lak filtering of equi-angular fan-beam sinograms (steps 1-2 of the module's FBP).

    Its output, back-projected by ``PixelDrivenBackprojector(geometry, weighting="fbp")``, is the
    FBP reconstruction in 1/cm.

    Args:
        geometry: an arc-detector fan-beam geometry.

    Raises:
        ValueError: when ``geometry`` does not have an arc detector.
    """

    def __init__(self, geometry: FanBeamGeometry) -> None:
        from scipy import fft

        _require_arc(geometry, "ArcRampFilter")
        self.geometry = geometry
        num_det = geometry.num_det
        self._cosine_weights = geometry.source_origin_cm * np.cos(arc_fan_angles(geometry))
        # zero-padded to >= 2B - 1 so that the FFT product is the linear convolution
        self._fft_size = fft.next_fast_len(2 * num_det - 1, real=True)
        kernel = arc_ramp_kernel(num_det, geometry.det_spacing) * geometry.det_spacing
        wrapped = np.zeros(self._fft_size)
        wrapped[:num_det] = kernel[num_det - 1 :]  # offsets 0 .. B-1
        wrapped[self._fft_size - (num_det - 1) :] = kernel[: num_det - 1]  # offsets -(B-1) .. -1
        self._kernel_spectrum = fft.rfft(wrapped)

    def __call__(self, sinograms: np.ndarray) -> np.ndarray:
        """Filter one ``(V, B)`` sinogram or a stack ``(..., V, B)``; returns float32 of that shape.

        Raises:
            ValueError: when the last two axes are not ``(num_views, num_det)``.
        """
        from scipy import fft

        array = np.asarray(sinograms, dtype=np.float64)
        if array.ndim < 2 or array.shape[-2:] != self.geometry.sinogram_shape:
            raise ValueError(
                f"ArcRampFilter: sinograms must end with shape {self.geometry.sinogram_shape} (views, bins), "
                f"got {array.shape}"
            )
        spectrum = fft.rfft(array * self._cosine_weights, n=self._fft_size, axis=-1)
        filtered = fft.irfft(spectrum * self._kernel_spectrum, n=self._fft_size, axis=-1)
        return np.ascontiguousarray(filtered[..., : self.geometry.num_det], dtype=np.float32)
