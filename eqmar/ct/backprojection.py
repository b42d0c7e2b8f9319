"""Pixel-driven fan-beam back-projection on the CPU (NumPy + SciPy sparse products).

For every pixel centre p and view, the ray from the source S through p meets the detector at a
fractional bin; the sinogram is linearly interpolated there (zero outside the detector) and
weighted by ``d_theta / L`` where ``L = (p - S).(D - S) / |D - S|^2`` is the pixel's distance from
the source as a fraction of the source-detector distance (D: detector centre). This is the
continuum adjoint of the fan-beam ray transform for ODL's weighted spaces, and it is what ASTRA's
CUDA back-projector computes under ODL's ``astra_cuda`` back-end: ODL ``fbp_op`` reconstructions
of the SynDeepLesion reference (made on a GPU) are reproduced to a mean absolute difference of
about 1e-5 /cm, where ASTRA's CPU ray-driven adjoint differs by about 2e-3 /cm (1 dB PSNR).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from eqmar.ct.geometry import FanBeamGeometry

__all__ = ["PixelDrivenBackprojector", "fan_flat_vectors"]

# Keep the interpolation matrix when it needs at most this much memory (640geo: ~440 MB).
_DEFAULT_CACHE_BYTES = 1 << 30
# Views per chunk: bounds the (pixels x views) temporaries and the sparse matrix to ~50 MB at 416 px.
_VIEWS_PER_CHUNK = 16


def fan_flat_vectors(geometry: FanBeamGeometry) -> np.ndarray:
    """Per-view source, detector-centre and bin-step vectors in cm, shape ``(views, 6)``.

    Columns are ``(src_x, src_y, det_x, det_y, u_x, u_y)`` in ASTRA's ``fanflat_vec`` convention
    (image x to the right, y up), for ODL's angle convention (view angle theta puts the source at
    ``R_s (-cos theta, -sin theta)``).
    """
    astra_angles = geometry.angles - np.pi / 2.0
    sin, cos = np.sin(astra_angles), np.cos(astra_angles)
    return np.stack(
        [
            sin * geometry.source_origin_cm,
            -cos * geometry.source_origin_cm,
            -sin * geometry.origin_det_cm,
            cos * geometry.origin_det_cm,
            cos * geometry.det_spacing,
            sin * geometry.det_spacing,
        ],
        axis=1,
    )


class PixelDrivenBackprojector:
    """Back-projection with linear detector interpolation and ``1/L`` fan weighting.

    The operator is a sparse (pixels x detector samples) interpolation matrix. When the number of
    views is a multiple of 4, view ``v + V/4`` is view ``v`` rotated by 90 degrees and the square
    pixel grid maps onto itself: the matrix is built for the first quarter of the views only and
    applied to all four quarters at once (as extra columns), whose partial images are rotated into
    place at the end. The matrix depends on the geometry only, so it is cached after the first
    call when it fits in ``max_cache_bytes`` (about 440 MB at 640geo); each call is then one
    sparse-dense product, several times faster than rebuilding it.

    Args:
        geometry: a flat-detector fan-beam geometry.
        views_per_chunk: views per sparse block (bounds the temporaries while building).
        max_cache_bytes: keep the matrix when it needs at most this many bytes (0: never).
    """

    def __init__(
        self,
        geometry: FanBeamGeometry,
        views_per_chunk: int = _VIEWS_PER_CHUNK,
        max_cache_bytes: int = _DEFAULT_CACHE_BYTES,
    ) -> None:
        if geometry.detector != "flat":
            raise NotImplementedError("PixelDrivenBackprojector: only flat detectors are supported")
        self.geometry = geometry
        self.views_per_chunk = max(1, int(views_per_chunk))
        self.quarters = 4 if geometry.num_views % 4 == 0 else 1
        vec = fan_flat_vectors(geometry)[: geometry.num_views // self.quarters]
        src, det, step = vec[:, 0:2], vec[:, 2:4], vec[:, 4:6]
        axis = det - src
        # The detector coordinate t = cross(axis, p - S) / cross(p - S, u) and the source distance
        # L = (p - S).axis / |axis|^2 are ratios/affine maps of the pixel position: store the
        # affine coefficients (c_x, c_y, c_0) of numerator, denominator and L per view.
        numerator = np.stack([-axis[:, 1], axis[:, 0], axis[:, 1] * src[:, 0] - axis[:, 0] * src[:, 1]], axis=1)
        denominator = np.stack([step[:, 1], -step[:, 0], -step[:, 1] * src[:, 0] + step[:, 0] * src[:, 1]], axis=1)
        norm2 = (axis**2).sum(axis=1, keepdims=True)
        distance = np.stack([axis[:, 0], axis[:, 1], -(axis * src).sum(axis=1)], axis=1) / norm2
        coefficients = np.stack([numerator, denominator, distance], axis=1)  # (views, 3 maps, 3 coefficients)
        self._coefficients = coefficients.astype(np.float32)
        centres = (np.arange(geometry.image_size) - geometry.image_size / 2.0 + 0.5) * geometry.pixel_size_cm
        x, y = np.meshgrid(centres, -centres)  # row 0 = top (largest y)
        homogeneous = np.stack([x.ravel(), y.ravel(), np.ones(x.size)], axis=1).astype(np.float32)
        self._pixels = homogeneous  # (pixels, 3): each affine map of all pixels is one GEMM
        quarter_views = coefficients.shape[0]
        self.matrix_bytes = geometry.image_size**2 * quarter_views * 2 * 8  # float32 weight + int32 column
        self._cache_enabled = self.matrix_bytes <= max_cache_bytes
        self._blocks: list[Any] | None = None
        self._lock = threading.Lock()

    def __call__(self, sinograms: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Back-project one ``(V, B)`` sinogram or a stack ``(C, V, B)``; returns float32 images."""
        g = self.geometry
        stack = np.asarray(sinograms, dtype=np.float32)
        single = stack.ndim == 2
        stack = stack[None] if single else stack
        if stack.ndim != 3 or stack.shape[1:] != g.sinogram_shape:
            raise ValueError(
                f"PixelDrivenBackprojector: sinograms must have shape {g.sinogram_shape} or (C, *that), got {np.shape(sinograms)}"
            )
        channels = stack.shape[0]
        table = self._lookup_table(stack)
        accumulated = np.zeros((g.image_size * g.image_size, table.shape[1]), dtype=np.float64)
        for block in self._interpolation_blocks():
            accumulated += block @ table  # float32 within a block, float64 across blocks
        # columns are (quarter, channel); rotate each quarter's partial image into place
        partial = (accumulated * g.angle_step).reshape(g.image_size, g.image_size, self.quarters, channels)
        images = sum(np.rot90(partial[:, :, q], k=q, axes=(0, 1)) for q in range(self.quarters))
        images = np.ascontiguousarray(np.moveaxis(images, -1, 0), dtype=np.float32)
        return images[0] if single else images

    def _lookup_table(self, stack: np.ndarray) -> np.ndarray:
        """Rows ``(view of quarter 0, padded bin)``, columns ``(quarter, channel)``.

        One zero bin on each side of the detector (the interpolation fades to zero outside it)
        and one spare bin keep every ``index + 1`` in range.
        """
        channels, num_views, num_bins = stack.shape
        padded = np.zeros((channels, num_views, num_bins + 3), dtype=np.float32)
        padded[:, :, 1 : num_bins + 1] = stack
        quarter_views = num_views // self.quarters
        table = padded.reshape(channels, self.quarters, quarter_views, num_bins + 3).transpose(2, 3, 1, 0)
        return np.ascontiguousarray(table.reshape(quarter_views * (num_bins + 3), self.quarters * channels))

    def _interpolation_blocks(self) -> Iterator[Any]:
        """The sparse blocks of the interpolation matrix, from the cache when enabled."""
        if not self._cache_enabled:
            yield from self._build_blocks()
            return
        with self._lock:
            if self._blocks is None:
                self._blocks = list(self._build_blocks())
        yield from self._blocks

    def _build_blocks(self) -> Iterator[Any]:
        quarter_views = self._coefficients.shape[0]
        for start in range(0, quarter_views, self.views_per_chunk):
            yield self._block(start, min(start + self.views_per_chunk, quarter_views))

    def _block(self, start: int, stop: int) -> Any:
        """CSR matrix (pixels x table rows) of views ``start:stop``.

        Each pixel row holds, per view, the weights of the two detector bins around its ray
        (``w (1 - f)`` and ``w f``); SciPy's CSR product then fuses the gather, the weighting and
        the sum over views in one compiled loop.
        """
        from scipy.sparse import csr_matrix

        g = self.geometry
        row_length = g.num_det + 3
        views = stop - start
        coefficients = self._coefficients[start:stop]
        # pixel-major (pixels, views) maps, so that each sparse row's entries are contiguous
        numerator, denominator, distance = (self._pixels @ coefficients[:, k, :].T for k in range(3))
        position = np.divide(numerator, denominator, out=numerator)
        position += (g.num_det - 1) / 2.0
        np.clip(position, -1.0, float(g.num_det), out=position)
        lower = np.floor(position)
        upper_weight = np.subtract(position, lower, out=position)  # the fraction ...
        weight = np.reciprocal(distance, out=distance)
        upper_weight *= weight  # ... times the fan weight
        lower_weight = np.subtract(weight, upper_weight, out=weight)
        index = lower.astype(np.int32)
        index += (1 + np.arange(start, stop, dtype=np.int32) * row_length)[None, :]
        columns = np.concatenate([index, index + 1], axis=1).ravel()
        weights = np.concatenate([lower_weight, upper_weight], axis=1).ravel()
        row_starts = np.arange(0, columns.size + 1, 2 * views, dtype=np.int32)
        num_rows = self._coefficients.shape[0] * row_length
        return csr_matrix((weights, columns, row_starts), shape=(index.shape[0], num_rows))
