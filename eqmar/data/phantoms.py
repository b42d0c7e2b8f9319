"""Procedural CT slices in HU: abdomen, thorax, pelvis and head (teeth level).

The slices are built from ellipses and arches placed like axial anatomy (anterior at the top,
patient right on the image left, as CT is displayed), with per-structure HU drawn from
:data:`TISSUE_HU`, partial-volume edges, smooth tissue texture and pixel noise at clinical
levels (≈ 12 HU). Each seed gives a different patient (pose, size, organ HU, bowel loops, lung
vessels); the same seed always gives the same slice. They stand in for DeepLesion slices in
tests and demos where real data are not available.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eqmar.utils import require_extra

require_extra(__name__, "scipy")

__all__ = ["PHANTOM_KINDS", "TISSUES", "TISSUE_HU", "demo_ct_slices", "phantom_slice"]

# Mean HU range of each tissue; a structure's mean HU is drawn uniformly from its range.
TISSUE_HU: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "lung": (-850.0, -700.0),
    "fat": (-120.0, -80.0),
    "fluid": (0.0, 20.0),
    "soft_tissue": (20.0, 60.0),
    "blood": (40.0, 200.0),
    "trabecular_bone": (200.0, 400.0),
    "cortical_bone": (1000.0, 1900.0),
    "tooth": (1800.0, 2600.0),
}
TISSUES: tuple[str, ...] = tuple(TISSUE_HU)
PHANTOM_KINDS: tuple[str, ...] = ("abdomen", "thorax", "pelvis", "head")

# Amplitude (HU, std) of the smooth texture within each tissue: lung parenchyma and trabecular
# bone are visibly structured, fat and fluid nearly flat.
_TEXTURE_HU = {
    "air": 0.0,
    "lung": 25.0,
    "fat": 6.0,
    "fluid": 3.0,
    "soft_tissue": 6.0,
    "blood": 5.0,
    "trabecular_bone": 40.0,
    "cortical_bone": 60.0,
    "tooth": 60.0,
}
_PIXEL_NOISE_HU = 12.0
_AIR_FLOOR_HU = -1024.0  # scanners clip at -1024 HU


class _Canvas:
    """Normalised coordinates (x right, y down, both in [-1, 1]) with a random patient pose."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.size = size
        coords = (np.arange(size) - (size - 1) / 2) / (size / 2)
        y, x = np.meshgrid(coords, coords, indexing="ij")
        angle = np.deg2rad(rng.uniform(-6, 6))
        self._scale = (rng.uniform(0.9, 1.04), rng.uniform(0.9, 1.04))
        self._shift = tuple(rng.uniform(-0.03, 0.03, size=2))
        self._cos, self._sin = np.cos(angle), np.sin(angle)
        (sx, sy), (kx, ky), c, s = self._shift, self._scale, self._cos, self._sin
        self.x = ((x - sx) * c + (y - sy) * s) / kx
        self.y = (-(x - sx) * s + (y - sy) * c) / ky
        self.labels = np.zeros((size, size), dtype=np.uint8)
        self.hu = np.full((size, size), TISSUE_HU["air"][0], dtype=np.float64)

    def _window(self, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
        """Pixel window holding the disc of ``radius`` around anatomy point (cx, cy)."""
        (sx, sy), (kx, ky), c, s = self._shift, self._scale, self._cos, self._sin
        u, v = cx * kx, cy * ky  # undo the pose: anatomy -> normalised image coordinates
        half = self.size / 2
        col = (u * c - v * s + sx) * half + (self.size - 1) / 2
        row = (u * s + v * c + sy) * half + (self.size - 1) / 2
        r = radius * max(kx, ky) * half + 2
        return (
            slice(max(int(row - r), 0), max(int(np.ceil(row + r)) + 1, 0)),
            slice(max(int(col - r), 0), max(int(np.ceil(col + r)) + 1, 0)),
        )

    def ellipse(self, cx: float, cy: float, a: float, b: float, theta: float = 0.0) -> np.ndarray:
        # Evaluated only in the ellipse's bounding window: most structures are small.
        window = self._window(cx, cy, max(a, b))
        c, s = np.cos(theta), np.sin(theta)
        dx, dy = self.x[window] - cx, self.y[window] - cy
        out = np.zeros(self.x.shape, dtype=bool)
        out[window] = ((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2 <= 1.0
        return out

    def arch(self, apex_y: float, depth: float, half_width: float, thickness: float) -> np.ndarray:
        """U-shaped band (dental arch, mandible) opening towards the back of the head."""
        curve = apex_y + depth * (self.x / half_width) ** 2
        return (np.abs(self.y - curve) <= thickness / 2) & (np.abs(self.x) <= half_width)

    def paint(self, region: np.ndarray, tissue: str, hu: float | None = None) -> float:
        value = self.rng.uniform(*TISSUE_HU[tissue]) if hu is None else hu
        self.hu[region] = value
        self.labels[region] = TISSUES.index(tissue)
        return value

    def bone(self, cx: float, cy: float, a: float, b: float, cortex: float, theta: float = 0.0) -> None:
        """Bone cross-section: cortical shell of thickness ``cortex`` around trabecular bone."""
        self.paint(self.ellipse(cx, cy, a, b, theta), "cortical_bone")
        if a > cortex and b > cortex:
            self.paint(self.ellipse(cx, cy, a - cortex, b - cortex, theta), "trabecular_bone")

    def jitter(self, spread: float = 0.015) -> float:
        return float(self.rng.normal(0.0, spread))


def _trunk(cv: _Canvas, a: float, b: float) -> None:
    """Skin-fat layer, muscle wall and inner fat of the trunk."""
    cv.paint(cv.ellipse(0, 0.02, a, b), "fat")
    cv.paint(cv.ellipse(0, 0.02, a - 0.07, b - 0.07), "soft_tissue")
    cv.paint(cv.ellipse(0, 0.03, a - 0.15, b - 0.15), "fat")


def _spine(cv: _Canvas, cy: float, size: float = 1.0) -> None:
    """Vertebra with paraspinal muscles, spinal canal and posterior elements."""
    for side in (-1, 1):
        cv.paint(cv.ellipse(side * 0.17 * size, cy + 0.2 * size, 0.12 * size, 0.09 * size), "soft_tissue")
    cv.bone(0, cy + 0.2 * size, 0.13 * size, 0.07 * size, 0.025)  # lamina and spinous base
    cv.paint(cv.ellipse(0, cy + 0.3 * size, 0.025 * size, 0.07 * size), "cortical_bone")
    cv.bone(0, cy, 0.13 * size, 0.115 * size, 0.025)  # vertebral body
    cv.paint(cv.ellipse(0, cy + 0.17 * size, 0.05 * size, 0.045 * size), "fluid")  # canal


def _abdomen(cv: _Canvas) -> None:
    _trunk(cv, 0.88, 0.64)
    _spine(cv, 0.25)
    cv.paint(cv.ellipse(-0.33 + cv.jitter(), -0.05, 0.36, 0.33, 0.3), "soft_tissue")  # liver
    cv.paint(cv.ellipse(0.47 + cv.jitter(), 0.08, 0.14, 0.21, -0.4), "soft_tissue")  # spleen
    for side in (-1, 1):  # kidneys
        cv.paint(cv.ellipse(side * 0.3 + cv.jitter(), 0.24, 0.1, 0.15, side * 0.5), "soft_tissue")
    cv.paint(cv.ellipse(0.22, -0.22, 0.17, 0.13, 0.2), "soft_tissue")  # stomach
    cv.paint(cv.ellipse(0.22, -0.29, 0.09, 0.04, 0.2), "air")  # gastric gas
    for _ in range(int(cv.rng.integers(4, 9))):  # bowel loops, some holding gas
        cx, cy = cv.rng.uniform(-0.15, 0.5), cv.rng.uniform(-0.45, 0.05)
        r = cv.rng.uniform(0.05, 0.09)
        cv.paint(cv.ellipse(cx, cy, r, r * cv.rng.uniform(0.6, 1.0), cv.rng.uniform(0, np.pi)), "soft_tissue")
        if cv.rng.random() < 0.5:
            cv.paint(cv.ellipse(cx, cy - 0.3 * r, 0.5 * r, 0.3 * r), "air")
    cv.paint(cv.ellipse(0.07, 0.14, 0.055, 0.055), "blood")  # aorta
    cv.paint(cv.ellipse(-0.1, 0.12, 0.06, 0.045), "blood")  # inferior vena cava


def _thorax(cv: _Canvas) -> None:
    _trunk(cv, 0.92, 0.62)
    for side in (-1, 1):  # scapulae
        cv.paint(cv.ellipse(side * 0.55, 0.3, 0.15, 0.025, side * 0.55), "cortical_bone")
    for side in (-1, 1):
        cv.paint(cv.ellipse(side * 0.38 + cv.jitter(), 0.0, 0.33, 0.43, side * 0.08), "lung")
    lungs = cv.labels == TISSUES.index("lung")
    for _ in range(int(cv.rng.integers(25, 45))):  # pulmonary vessels in the parenchyma
        cx, cy = cv.rng.uniform(-0.7, 0.7), cv.rng.uniform(-0.4, 0.4)
        r = cv.rng.uniform(0.006, 0.018)
        vessel = cv.ellipse(cx, cy, r, r * cv.rng.uniform(0.6, 1.0)) & lungs
        cv.paint(vessel, "soft_tissue")
    cv.paint(cv.ellipse(0.1, -0.08, 0.25, 0.21, -0.5), "blood")  # heart
    cv.paint(cv.ellipse(-0.06, -0.2, 0.06, 0.06), "blood")  # ascending aorta
    cv.paint(cv.ellipse(0.1, 0.22, 0.055, 0.055), "blood")  # descending aorta
    cv.paint(cv.ellipse(-0.02, 0.16, 0.03, 0.025), "air")  # oesophageal air
    _spine(cv, 0.28, 0.85)
    for angle in np.deg2rad(np.arange(-160, 180, 25)):  # rib sections on the chest wall
        if abs(np.rad2deg(angle) + 90) < 20:
            continue  # sternum instead
        cv.bone(0.8 * np.cos(angle), 0.5 * np.sin(angle) + 0.02, 0.04, 0.028, 0.015, angle + np.pi / 2)
    cv.bone(0, -0.5, 0.09, 0.035, 0.015)  # sternum


def _pelvis(cv: _Canvas) -> None:
    _trunk(cv, 0.92, 0.62)
    cv.paint(cv.ellipse(0, -0.1, 0.2, 0.15), "fluid")  # bladder
    cv.paint(cv.ellipse(0, 0.2, 0.08, 0.07), "soft_tissue")  # rectum
    cv.paint(cv.ellipse(0, 0.18, 0.035, 0.025), "air")
    for side in (-1, 1):
        cx = side * (0.46 + cv.jitter())
        cv.bone(cx, 0.02, 0.22, 0.21, 0.035)  # acetabulum
        cv.paint(cv.ellipse(cx, 0.02, 0.165, 0.165), "soft_tissue")  # joint space
        cv.bone(cx, 0.02, 0.15, 0.15, 0.03)  # femoral head
        for dx in (0.2, 0.25):
            cv.paint(cv.ellipse(side * dx, -0.12 - (dx - 0.2), 0.03, 0.03), "blood")  # iliac vessels
    cv.bone(0, 0.42, 0.16, 0.08, 0.03)  # sacrum/coccyx


def _head(cv: _Canvas) -> None:
    cv.paint(cv.ellipse(0, 0.05, 0.66, 0.82), "fat")
    cv.paint(cv.ellipse(0, 0.05, 0.61, 0.77), "soft_tissue")
    apex, depth, half_width = -0.55 + cv.jitter(), 0.55, 0.45
    cv.paint(cv.arch(apex, depth, half_width, 0.14), "cortical_bone")  # alveolar bone
    cv.paint(cv.arch(apex, depth, half_width - 0.03, 0.07), "trabecular_bone")
    n_teeth = int(cv.rng.integers(10, 15))
    for t in np.linspace(-0.92, 0.92, n_teeth):
        if cv.rng.random() < 0.1:
            continue  # missing tooth
        cx = t * half_width
        cy = apex + depth * t**2
        tangent = np.arctan(2 * depth * t / half_width)
        cv.paint(cv.ellipse(cx, cy, 0.045, 0.055, tangent), "tooth")
    for side in (-1, 1):  # mandibular rami
        cv.bone(side * 0.5, 0.22, 0.05, 0.16, 0.02, side * 0.15)
    cv.paint(cv.ellipse(0, 0.32, 0.09, 0.05), "air")  # oropharynx
    _spine(cv, 0.45, 0.7)


_BUILDERS: dict[str, Callable[[_Canvas], None]] = {
    "abdomen": _abdomen,
    "thorax": _thorax,
    "pelvis": _pelvis,
    "head": _head,
}


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smoothed white noise rescaled to unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.standard_normal(shape), sigma)
    return noise / noise.std()


def phantom_slice(
    kind: str, seed: int = 0, size: int = 512, return_labels: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """An anatomically plausible axial CT slice in HU.

    Args:
        kind: one of :data:`PHANTOM_KINDS` (``"abdomen"``, ``"thorax"``, ``"pelvis"``, ``"head"``).
        seed: patient variation; the same seed gives the same slice.
        size: side length in pixels (the anatomy scales with it).
        return_labels: also return the (size, size) uint8 tissue label map, value ``i`` meaning
            ``TISSUES[i]`` (labels are the painted structures, before edge blurring).

    Returns:
        (size, size) float32 HU, >= -1024; with ``return_labels`` a (hu, labels) tuple.
    """
    from scipy.ndimage import gaussian_filter

    if kind not in _BUILDERS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {PHANTOM_KINDS}.")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}.")
    rng = np.random.default_rng([seed, PHANTOM_KINDS.index(kind)])
    canvas = _Canvas(size, rng)
    _BUILDERS[kind](canvas)
    pixel = size / 512  # texture and blur are defined for a 512 grid
    hu = gaussian_filter(canvas.hu, 0.6 * pixel)  # partial-volume edges
    texture_amplitude = np.array([_TEXTURE_HU[t] for t in TISSUES])[canvas.labels]
    hu += texture_amplitude * _gaussian_noise(rng, hu.shape, 3.0 * pixel)
    hu += _PIXEL_NOISE_HU * _gaussian_noise(rng, hu.shape, 0.7 * pixel)
    hu = np.maximum(hu, _AIR_FLOOR_HU).astype(np.float32)
    return (hu, canvas.labels) if return_labels else hu


def demo_ct_slices(n: int, seed: int = 0, size: int = 512) -> list[tuple[np.ndarray, str]]:
    """``n`` HU slices for demos and tests: procedural phantoms mixed with a real CT slice.

    Every fifth slice (positions 4, 9, ...) is pydicom's bundled ``CT_small.dcm`` (a real
    128x128 CT slice, 0.66 mm pixels), read with :class:`eqmar.data.readers.CTDicomReader` and
    upsampled bilinearly to ``size`` (it is a small field of view, so this only rescales the
    anatomy). The others cycle through :data:`PHANTOM_KINDS` with seeds derived from ``seed``.
    When pydicom's test file is missing, phantoms are used throughout.

    Args:
        n: number of slices.
        seed: base seed.
        size: side length.

    Returns:
        List of ``(hu float32 (size, size), source_id)``, like :func:`eqmar.data.slices.load_ct_slices`;
        source ids are ``"phantom:<kind>:<seed>"`` or ``"pydicom:CT_small.dcm"``.
    """
    real = _ct_small(size)
    slices: list[tuple[np.ndarray, str]] = []
    for i in range(n):
        if real is not None and i % 5 == 4:
            slices.append((real.copy(), "pydicom:CT_small.dcm"))
            continue
        kind = PHANTOM_KINDS[i % len(PHANTOM_KINDS)]
        slice_seed = seed * 1000 + i
        slices.append((phantom_slice(kind, slice_seed, size), f"phantom:{kind}:{slice_seed}"))
    return slices


def _ct_small(size: int) -> np.ndarray | None:
    """pydicom's CT_small.dcm in HU, bilinearly resized to (size, size); None when unavailable."""
    import torch
    from pydicom.data import get_testdata_file

    from eqmar.data.readers import CTDicomReader

    path = get_testdata_file("CT_small.dcm", download=False)  # never fetch at run time
    if path is None:
        return None
    reader = CTDicomReader(swap_ij=False)
    hu, _ = reader.get_data(reader.read(path))
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None],
        size=(size, size),
        mode="bilinear",
        align_corners=False,
    )
    return resized[0, 0].numpy()
