"""SynDeepLesion metal-artifact simulator with per-image and per-mask caching.

One image and one mask go through expensive projections only once:

* :meth:`SynDeepLesionSimulator.prepare_image` resizes/clips the HU image, computes the ground-truth
  µ map, the water and bone sinograms and the noise-free polychromatic tissue sinogram;
* :meth:`SynDeepLesionSimulator.prepare_mask` resizes the mask and computes the metal sinogram
  (with the interpolating projector, as the CUDA reference), its trace and the partial-volume edges.

A pair then costs the polychromatic sum on the trace only (outside it the metal line integral
is zero, so the cached tissue projection is exact there), a Poisson draw, the beam-hardening
correction, LI and two FBPs (one back-projection pass for both). At 640geo on 2 (shared) CPU
cores a cached pair takes 0.3-0.6 s and a pair with fresh projections 6-11 s
(``bench/bench_synthesis.py``); the CPU back-projector keeps a ~440 MB matrix per simulator
(``bp_cache_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eqmar.ct.geometry import FanBeamGeometry
from eqmar.ct.metal import apply_partial_volume, interpolate_trace, metal_attenuation, metal_trace
from eqmar.ct.physics import (
    PHOTONS,
    SCATTER_PHOTONS,
    PolychromaticModel,
    add_poisson_noise,
    apply_bhc,
    check_generator,
    fit_water_bhc,
    hu_to_mu,
    prepare_hu,
    resize_square,
    split_tissue,
)
from eqmar.ct.projector import Projector
from eqmar.ct.spectrum import Spectrum

__all__ = ["PreparedImage", "PreparedMask", "SynDeepLesionSimulator", "resize_metal_mask"]


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """Cached projections of one clean image (made by :meth:`SynDeepLesionSimulator.prepare_image`).

    Attributes:
        mu: ground-truth attenuation map at 70 keV, ``(N, N)`` float32.
        water_sinogram: 70 keV line integrals of the water part, ``(V, B)`` float32.
        bone_sinogram: 70 keV line integrals of the bone part, ``(V, B)`` float32.
        poly_tissue: noise-free polychromatic projection of the tissue, ``(V, B)`` float64.
        geometry: geometry it was made for.
    """

    mu: np.ndarray
    water_sinogram: np.ndarray
    bone_sinogram: np.ndarray
    poly_tissue: np.ndarray
    geometry: FanBeamGeometry


@dataclass(frozen=True, eq=False)
class PreparedMask:
    """Cached projection of one metal mask (made by :meth:`SynDeepLesionSimulator.prepare_mask`).

    Attributes:
        mask: binary metal mask at image size, ``(N, N)`` uint8.
        metal_sinogram: metal line integrals at 70 keV with partial-volume edges, ``(V, B)`` float32.
        trace: metal trace, ``(V, B)`` bool.
        geometry: geometry it was made for.
    """

    mask: np.ndarray
    metal_sinogram: np.ndarray
    trace: np.ndarray
    geometry: FanBeamGeometry


class SynDeepLesionSimulator:
    """Metal-artifact simulation following the SynDeepLesion protocol.

    Args:
        geometry: a :class:`FanBeamGeometry` or preset name (default ``"640geo"``).
        device: projector device, ``"auto"``, ``"cpu"`` or ``"cuda"``.
        metal: implant metal, symbol or name (default titanium).
        metal_density: g/cm³; ``None`` uses the metal's density (Ti: 4.5).
        spectrum: tube spectrum; ``None`` uses the packaged GE 120 kVp table (20..120 keV).
        photons: incident photons per bin.
        scatter: scatter photons added per bin.
        bp_cache_bytes: memory for the CPU back-projection matrix (see :class:`Projector`).

    Example:
        >>> sim = SynDeepLesionSimulator("640geo")  # doctest: +SKIP
        >>> img = sim.prepare_image(hu_512)  # doctest: +SKIP
        >>> pair = sim.simulate_pair(img, sim.prepare_mask(mask_512), np.random.default_rng(0))  # doctest: +SKIP
    """

    def __init__(
        self,
        geometry: FanBeamGeometry | str = "640geo",
        device: str = "auto",
        metal: str = "Ti",
        metal_density: float | None = None,
        spectrum: Spectrum | None = None,
        photons: float = PHOTONS,
        scatter: float = SCATTER_PHOTONS,
        bp_cache_bytes: int = 1 << 30,
    ) -> None:
        if photons <= 0 or scatter < 0:
            raise ValueError(f"SynDeepLesionSimulator: photons must be > 0 and scatter >= 0, got {photons}, {scatter}")
        self.projector = Projector(geometry, device=device, bp_cache_bytes=bp_cache_bytes)
        self.geometry = self.projector.geometry
        self.metal = metal
        self.metal_mu = metal_attenuation(metal, metal_density)
        self.photons = float(photons)
        self.scatter = float(scatter)
        self.model = PolychromaticModel(("water", "bone", metal), spectrum)
        self.bhc_coefficients = fit_water_bhc(self.model)

    # ------------------------------------------------------------------------------- caching
    def prepare_image(self, hu: np.ndarray) -> PreparedImage:
        """Resize/clip a square HU image (any size) and cache its tissue projections."""
        mu = hu_to_mu(prepare_hu(hu, self.geometry.image_size))
        water, bone = split_tissue(mu)
        water_sinogram = self.projector.forward(water)
        bone_sinogram = self.projector.forward(bone)
        zeros = np.zeros_like(water_sinogram)
        poly_tissue = self.model.project([water_sinogram, bone_sinogram, zeros])
        return PreparedImage(mu, water_sinogram, bone_sinogram, poly_tissue, self.geometry)

    def prepare_mask(self, mask: np.ndarray) -> PreparedMask:
        """Resize a square binary metal mask (any size) and cache its metal projection.

        Raises:
            ValueError: when ``mask`` is not square or not binary (0/1, bool or 0/255), or has no
                metal pixel left at the simulator's image size (a pair without metal would pass
                for a real one in training).
        """
        resized = resize_metal_mask(mask, self.geometry.image_size)
        if not resized.any():
            raise ValueError(
                f"the metal mask has no metal pixel at {self.geometry.image_size} px "
                f"(it had {int(np.count_nonzero(mask))} at {np.shape(mask)[0]} px)"
            )
        # the interpolating projector reproduces the (CUDA-made) reference metal traces on CPU too
        metal_sinogram = self.projector.forward_interpolating(resized.astype(np.float32)) * np.float32(self.metal_mu)
        metal_sinogram = apply_partial_volume(metal_sinogram)
        return PreparedMask(resized.astype(np.uint8), metal_sinogram, metal_trace(metal_sinogram), self.geometry)

    # ------------------------------------------------------------------------------- simulation
    def _noisy_corrected(self, projection: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noisy = add_poisson_noise(projection, rng, self.photons, self.scatter)
        return apply_bhc(noisy, self.bhc_coefficients).astype(np.float32)

    def simulate_clean(self, img: PreparedImage, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Clean references (the ``gt.h5`` keys).

        Returns:
            ``image`` (ground-truth µ), ``poly_sinogram`` (noisy, beam-hardening corrected) and
            ``poly_CT`` (its FBP), all float32.
        """
        self._check_prepared(img, PreparedImage, "img")
        check_generator(rng)
        poly_sinogram = self._noisy_corrected(img.poly_tissue, rng)
        return {"image": img.mu.copy(), "poly_sinogram": poly_sinogram, "poly_CT": self.projector.fbp(poly_sinogram)}

    def simulate_pair(self, img: PreparedImage, mask: PreparedMask, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One metal-corrupted pair (the ``k.h5`` keys plus ``mask``).

        Returns:
            ``ma_sinogram``, ``LI_sinogram`` (float32, views x bins), ``ma_CT``, ``LI_CT`` (float32
            images), ``metal_trace`` (uint8) and ``mask`` (uint8 image-size metal mask).
        """
        self._check_prepared(img, PreparedImage, "img")
        self._check_prepared(mask, PreparedMask, "mask")
        check_generator(rng)
        trace = mask.trace
        projection = img.poly_tissue.copy()
        projection[trace] = self.model.project(
            [img.water_sinogram[trace], img.bone_sinogram[trace], mask.metal_sinogram[trace]]
        )
        ma_sinogram = self._noisy_corrected(projection, rng)
        li_sinogram = interpolate_trace(ma_sinogram, trace)
        ma_ct, li_ct = self.projector.fbp_many([ma_sinogram, li_sinogram])
        return {
            "ma_sinogram": ma_sinogram,
            "LI_sinogram": li_sinogram,
            "ma_CT": ma_ct,
            "LI_CT": li_ct,
            "metal_trace": trace.astype(np.uint8),
            "mask": mask.mask.copy(),
        }

    def _check_prepared(self, item: object, kind: type, name: str) -> None:
        if not isinstance(item, kind):
            raise TypeError(
                f"SynDeepLesionSimulator: {name} must be a {kind.__name__} from prepare_*, got {type(item).__name__}"
            )
        if item.geometry != self.geometry:  # type: ignore[attr-defined]
            raise ValueError(f"SynDeepLesionSimulator: {name} was prepared for another geometry")

    def close(self) -> None:
        """Free the projector's ASTRA memory."""
        self.projector.close()

    def __enter__(self) -> SynDeepLesionSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resize_metal_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """A square binary metal mask (0/1, bool or 0/255, any size) resized as the protocol does, uint8 0/1.

    Small masks can vanish in the bilinear down-sizing (e.g. 512 -> 64 px): callers check the result.
    """
    return resize_square(_binary_uint8(mask), image_size, "mask")


def _binary_uint8(mask: np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"mask must be a square 2-D array, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    values = np.unique(array)
    if not (np.isin(values, (0, 1)).all() or np.isin(values, (0, 255)).all()):
        raise ValueError(
            f"mask must be binary (0/1, bool or 0/255), found values {values[:5]}{'...' if values.size > 5 else ''}"
        )
    return (array > 0).astype(np.uint8)
