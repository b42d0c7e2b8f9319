"""Interpolating (Joseph-type) fan-beam forward projection on the CPU.

Each ray (source to detector-bin centre) is sampled once per image column when it runs more
horizontally than vertically, else once per row; at each sample the image is linearly interpolated
between the two nearest pixel centres across the ray (zero outside the image) and the samples are
summed times the ray length per column (row). This is the model of ASTRA's CUDA fan-beam
projector: a metal trace computed this way matches the CUDA-made SynDeepLesion reference traces
(IoU >= 0.999), while ASTRA's CPU line projector, which weights pixels by exact intersection
lengths, gives traces about one bin narrower per edge (IoU 0.915-0.990).

Flat and arc detectors differ only in the rays' directions (equally spaced points on a line, or
equally spaced fan angles); the sampling along each ray is shared.
"""

from __future__ import annotations

import numpy as np

from eqmar.ct.arc import arc_ray_directions
from eqmar.ct.geometry import FanBeamGeometry, fan_flat_vectors

__all__ = ["JosephForwardProjector"]


class JosephForwardProjector:
    """Forward projection with linear interpolation between pixel centres.

    Args:
        geometry: a flat- or arc-detector fan-beam geometry.

    Cost: one NumPy pass per view over ``bins x image_size`` samples (about 5 s at 640geo on
    2 cores), so it is meant for the once-per-mask metal projection, not for every image.
    """

    def __init__(self, geometry: FanBeamGeometry) -> None:
        self.geometry = geometry
        # work in pixel units: positions are then fractional pixel indices up to an offset
        vectors = fan_flat_vectors(geometry) / geometry.pixel_size_cm
        self._sources = vectors[:, 0:2]
        self._centres = np.arange(geometry.image_size) - geometry.image_size / 2.0 + 0.5
        self._bins = np.arange(geometry.num_det) - (geometry.num_det - 1) / 2.0
        self._rays = self._ray_vectors(vectors)

    def _ray_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """Direction of every ray, ``(views, bins, 2)``; only ratios of its components matter."""
        if self.geometry.detector == "arc":
            return arc_ray_directions(self.geometry)
        # source to bin centre d + k u, in this operation order (the flat results stay bit-stable)
        ray_x = vectors[:, 2:3] + self._bins[None, :] * vectors[:, 4:5] - vectors[:, 0:1]
        ray_y = vectors[:, 3:4] + self._bins[None, :] * vectors[:, 5:6] - vectors[:, 1:2]
        return np.stack([ray_x, ray_y], axis=-1)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Line integrals (cm units for an image in 1/cm), ``(views, bins)`` float32."""
        g = self.geometry
        image = np.asarray(image, dtype=np.float64)
        if image.shape != g.image_shape:
            raise ValueError(f"JosephForwardProjector: image must have shape {g.image_shape}, got {image.shape}")
        n = g.image_size
        padded = np.zeros((n + 2, n + 2))  # a zero border: interpolation fades to zero outside
        padded[1:-1, 1:-1] = image
        # rows run top to bottom (y decreasing): transposing and flipping turns the vertical case
        # into the horizontal one on the same padded image
        by_rows = np.ascontiguousarray(padded[::-1].T)
        sinogram = np.empty(g.sinogram_shape, dtype=np.float32)
        for view, ((sx, sy), rays) in enumerate(zip(self._sources, self._rays, strict=False)):
            ray_x, ray_y = rays[:, 0], rays[:, 1]
            horizontal = np.abs(ray_x) >= np.abs(ray_y)
            values = np.empty(g.num_det)
            # horizontal rays: sample at column centres x_j, interpolate along y (row index n/2-0.5-y)
            values[horizontal] = self._sum_along(padded, sx, sy, ray_x[horizontal], ray_y[horizontal], flip=True)
            # vertical rays: sample at row centres y_i, interpolate along x; in by_rows (rows become
            # columns, bottom row first) x plays the part of -y above
            values[~horizontal] = self._sum_along(by_rows, sy, sx, ray_y[~horizontal], ray_x[~horizontal], flip=False)
            sinogram[view] = values * g.pixel_size_cm
        return sinogram

    def _sum_along(
        self, padded: np.ndarray, s_main: float, s_cross: float, r_main: np.ndarray, r_cross: np.ndarray, flip: bool
    ) -> np.ndarray:
        """Sum of interpolated samples at the centres along the main axis, times the step length.

        ``padded[row, col]``: ``col`` indexes the main axis (centre k at ``k - n/2 + 0.5``), ``row``
        the cross axis, increasing with the cross coordinate when ``flip`` is False and
        decreasing when True.
        """
        if r_main.size == 0:
            return np.zeros(0)
        n = self.geometry.image_size
        cross = s_cross + (self._centres[None, :] - s_main) / r_main[:, None] * r_cross[:, None]
        position = (n / 2.0 - 0.5 - cross) if flip else (cross + n / 2.0 - 0.5)
        position = np.clip(position + 1.0, 0.0, n + 1.0 - 1e-9)  # +1: the zero border
        lower = np.floor(position).astype(np.intp)
        fraction = position - lower
        columns = np.arange(1, n + 1)[None, :]
        samples = (1.0 - fraction) * padded[lower, columns] + fraction * padded[np.minimum(lower + 1, n + 1), columns]
        step = np.hypot(r_main, r_cross) / np.abs(r_main)
        return samples.sum(axis=1) * step
