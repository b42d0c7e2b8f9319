"""A small parallel-beam projector in PyTorch: forward projection and filtered back-projection.

It needs nothing beyond torch and NumPy, so MAR inference can make its image-domain LI input where
eqmar's fan-beam physics (ASTRA, ODL) is not installed (:class:`eqmar.apps.mar.inferer.PortableMARInference`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["ParallelBeamProjector"]


class ParallelBeamProjector:
    """Parallel-beam forward projection and filtered back-projection on a square grid, in PyTorch.

    The fallback LI projector of :class:`PortableMARInference`: it exposes the three methods that
    :func:`eqmar.apps.mar.inference.image_domain_li` uses (``forward``, ``forward_interpolating``,
    ``fbp``) plus ``close``. Detector bins are one pixel wide. The forward projection is
    pixel-driven with linear interpolation on the detector and the back-projection its adjoint
    (linear interpolation of the filtered sinogram), so ``forward_interpolating`` is ``forward``:
    the two bins around the projection of every nonzero pixel get a positive value, which makes
    the metal trace cover the metal. The FBP uses the band-limited Ram-Lak kernel (Kak & Slaney,
    chapter 3) on a zero-padded detector, so ``fbp(forward(x))`` reproduces ``x`` up to
    discretisation error.

    Args:
        image_size: side of the square image grid (pixels).
        num_views: projection angles over 180 degrees; default ``ceil(pi / 2 * image_size)``, the
            usual sampling requirement for a parallel-beam scan of that grid.
        device: torch device for the computation.
        max_samples: (pixel, angle) pairs per chunk of angles; bounds temporary memory to about
            ``40 * max_samples`` bytes.
    """

    def __init__(
        self,
        image_size: int,
        num_views: int | None = None,
        device: str | torch.device = "cpu",
        max_samples: int = 1 << 22,
    ) -> None:
        if int(image_size) < 2:
            raise ValueError(f"ParallelBeamProjector: image_size must be >= 2, got {image_size}.")
        self.image_size = int(image_size)
        self.num_views = (
            int(num_views) if num_views is not None else max(int(math.ceil(math.pi / 2 * self.image_size)), 8)
        )
        if self.num_views < 1:
            raise ValueError(f"ParallelBeamProjector: num_views must be >= 1, got {num_views}.")
        # an odd detector wide enough for the grid's diagonal, with one bin of margin on each side
        half = int(math.ceil((self.image_size - 1) / 2 * math.sqrt(2))) + 1
        self.num_bins = 2 * half + 1
        self.device = torch.device(device)
        self.max_samples = int(max_samples)
        self.angles = torch.arange(self.num_views, dtype=torch.float64) * (math.pi / self.num_views)
        self._ramp = self._ramp_filter()

    # ------------------------------------------------------------------------------ helpers
    def _chunks(self, samples_per_view: int) -> list[slice]:
        step = max(1, self.max_samples // max(samples_per_view, 1))
        return [slice(i, min(i + step, self.num_views)) for i in range(0, self.num_views, step)]

    def _ramp_filter(self) -> torch.Tensor:
        """Frequency response of the spatial Ram-Lak kernel on a zero-padded detector."""
        length = 1 << int(math.ceil(math.log2(2 * self.num_bins)))
        k = torch.arange(length, dtype=torch.float64)
        k = torch.where(k > length // 2, k - length, k)  # circular indices -L/2 .. L/2
        kernel = torch.zeros(length, dtype=torch.float64)
        kernel[k == 0] = 0.25
        odd = (k.abs() % 2) == 1
        kernel[odd] = -1.0 / (math.pi**2 * k[odd] ** 2)
        return torch.fft.rfft(kernel).real.to(torch.float32)

    def _image(self, image: np.ndarray, name: str) -> torch.Tensor:
        array = np.asarray(image, dtype=np.float32)
        if array.shape != (self.image_size, self.image_size):
            raise ValueError(
                f"ParallelBeamProjector: {name} must be ({self.image_size}, {self.image_size}), got {array.shape}."
            )
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    # ------------------------------------------------------------------------------ operators
    def forward(self, image: np.ndarray) -> np.ndarray:
        """Line integrals (pixel units) of a ``(N, N)`` image: a ``(views, bins)`` float32 sinogram.

        Pixel-driven: each nonzero pixel is split between the two detector bins around its
        centre's projection with linear weights (the adjoint of :meth:`fbp`'s back-projection),
        so sparse images such as metal masks project in proportion to their size.
        """
        pixels = self._image(image, "image").reshape(-1)
        keep = torch.nonzero(pixels, as_tuple=True)[0]
        out = torch.zeros(self.num_views * self.num_bins, dtype=torch.float32, device=self.device)
        if keep.numel():
            values = pixels[keep]
            coords = torch.arange(self.image_size, dtype=torch.float64, device=self.device) - (self.image_size - 1) / 2
            x, y = coords[keep % self.image_size], coords[keep // self.image_size]  # column, row
            centre = (self.num_bins - 1) / 2
            for chunk in self._chunks(int(keep.numel())):
                theta = self.angles[chunk].to(self.device)
                t = x[None] * torch.cos(theta)[:, None] + y[None] * torch.sin(theta)[:, None] + centre
                lower = torch.floor(t)
                upper_weight = (t - lower).to(torch.float32)
                base = (torch.arange(chunk.start, chunk.stop, device=self.device) * self.num_bins)[:, None]
                index = (lower.long() + base).reshape(-1)
                out.index_add_(0, index, ((1 - upper_weight) * values[None]).reshape(-1))
                out.index_add_(0, index + 1, (upper_weight * values[None]).reshape(-1))
        return out.reshape(self.num_views, self.num_bins).cpu().numpy()

    def forward_interpolating(self, image: np.ndarray) -> np.ndarray:
        """Same as :meth:`forward`, whose linear detector weights already interpolate."""
        return self.forward(image)

    def fbp(self, sinogram: np.ndarray) -> np.ndarray:
        """Filtered back-projection of a ``(views, bins)`` sinogram to a ``(N, N)`` float32 image."""
        import torch.nn.functional as F

        data = np.asarray(sinogram, dtype=np.float32)
        if data.shape != (self.num_views, self.num_bins):
            raise ValueError(
                f"ParallelBeamProjector: sinogram must be ({self.num_views}, {self.num_bins}), got {data.shape}."
            )
        length = 2 * (self._ramp.shape[0] - 1)
        spectrum = torch.fft.rfft(torch.from_numpy(data).to(self.device), n=length, dim=-1)
        filtered = torch.fft.irfft(spectrum * self._ramp.to(self.device), n=length, dim=-1)[:, : self.num_bins]
        centre = (self.num_bins - 1) / 2
        coords = torch.arange(self.image_size, dtype=torch.float64, device=self.device) - (self.image_size - 1) / 2
        image = torch.zeros((self.image_size, self.image_size), dtype=torch.float32, device=self.device)
        for chunk in self._chunks(self.image_size * self.image_size):
            theta = self.angles[chunk].to(self.device)
            cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
            t = coords[None, None, :] * cos + coords[None, :, None] * sin  # (views, rows=y, cols=x)
            grid = torch.stack([t / centre, torch.zeros_like(t)], dim=-1).to(torch.float32)
            samples = F.grid_sample(
                filtered[chunk][:, None, None, :], grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )
            image += samples[:, 0].sum(dim=0)
        return (image * (math.pi / self.num_views)).cpu().numpy()

    def close(self) -> None:
        """Nothing to free (present for the projector interface)."""

    def __repr__(self) -> str:
        return f"ParallelBeamProjector(size={self.image_size}, views={self.num_views}, bins={self.num_bins})"
