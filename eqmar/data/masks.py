"""Metal masks: loading the CNN-MAR mask set, the standard split, resizing and procedural masks.

The SynDeepLesion protocol uses 100 binary 512x512 masks (Zhang & Yu, CNN-MAR, TMI 2018); test
masks are :data:`TEST_MASK_INDICES`, the other 90 train. The original file is not redistributable,
so :func:`load_masks` reads it when a user has it and :func:`generate_mask_set` makes a stand-in
set of realistic implants (screws, rods, dental fillings, hip prostheses).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqmar.utils import require_extra

require_extra(__name__, "PIL", "scipy", extra="ct")

__all__ = [
    "MASK_KINDS",
    "MASK_SET_SIZE",
    "PUBLISHED_TEST_MASK_AREAS",
    "TEST_MASK_INDICES",
    "TRAIN_MASK_INDICES",
    "check_mask_stack",
    "generate_mask_set",
    "generate_masks",
    "load_masks",
    "resize_mask",
    "split_mask_set",
]

MASK_SET_SIZE = 100
TEST_MASK_INDICES: tuple[int, ...] = (0, 1, 19, 29, 35, 42, 62, 63, 97, 99)
TRAIN_MASK_INDICES: tuple[int, ...] = tuple(i for i in range(MASK_SET_SIZE) if i not in TEST_MASK_INDICES)
# Pixel counts at 512 of the ten published test masks, in test order (testmask.npy of the
# public sample); generate_mask_set mirrors their size ranking so the metric's groups keep meaning.
PUBLISHED_TEST_MASK_AREAS: tuple[int, ...] = (371, 1338, 688, 84, 171, 54, 1329, 3119, 182, 180)
MASK_KINDS: tuple[str, ...] = ("screw", "rod", "dental", "hip")
_MAT_VARIABLE = "CT_samples_bwMetal"
# Metal area bounds at 512x512 (~35..2000 px at 416, scaled by (512/416)^2).
_AREA_RANGE_512 = (53, 3030)


# ----------------------------------------------------------------------------------------------
# loading and splitting
# ----------------------------------------------------------------------------------------------


def load_masks(path: str | os.PathLike, variable: str = _MAT_VARIABLE) -> np.ndarray:
    """Load a stack of binary metal masks as (H, W, N) uint8 0/1.

    Accepts ``SampleMasks.mat`` (MATLAB v5/v7 through :func:`scipy.io.loadmat`, or v7.3/HDF5
    through h5py) holding ``variable``, and ``.npy`` files such as ``trainmask.npy`` /
    ``testmask.npy`` of shape (H, W, N) (a single (H, W) mask becomes N = 1). Values must be
    binary: bool, 0/1, or 0/255 as 8-bit image masks store them.

    Args:
        path: the mask file.
        variable: MATLAB variable name for ``.mat`` files.

    Returns:
        (H, W, N) uint8 array with values in {0, 1}.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unknown suffix, unreadable (corrupt, truncated, pickled) file, missing
            variable, wrong rank, non-square or non-binary masks, or no masks at all; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            masks = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # bad magic, pickled objects, empty or truncated file
            if "pickle" in str(e):  # numpy's advice to allow pickles is not for a mask file: never loaded
                raise ValueError(f"{path}: holds pickled Python objects, not a mask array; not loaded") from None
            raise ValueError(f"{path}: not a readable .npy file (corrupt or truncated?): {e}") from e
    elif suffix == ".mat":
        masks = _load_mat_masks(path, variable)
    else:
        raise ValueError(f"{path}: unsupported mask file type {suffix!r}; expected .mat or .npy.")
    return check_mask_stack(masks, str(path))


def _load_mat_masks(path: Path, variable: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        contents = loadmat(path, variable_names=[variable])
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        return _load_mat73_masks(path, variable)
    except Exception as e:  # SciPy raises MatReadError, ValueError, OSError, ... for damaged files
        raise ValueError(f"{path}: not a readable .mat file (corrupt or truncated?): {e}") from e
    if variable not in contents:
        raise ValueError(f"{path}: variable {variable!r} not found in the .mat file.")
    return contents[variable]


def _load_mat73_masks(path: Path, variable: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if variable not in f:
                raise ValueError(f"{path}: variable {variable!r} not found; it has {sorted(f.keys())}.")
            if not isinstance(f[variable], h5py.Dataset):
                raise ValueError(f"{path}: variable {variable!r} is not an array.")
            data = f[variable][()]
    except OSError as e:  # a v7.3 header over bytes that are not HDF5
        raise ValueError(f"{path}: not a readable .mat file (MATLAB 7.3 header, but not valid HDF5): {e}") from e
    # MATLAB stores column-major, so h5py sees the dimensions reversed.
    return np.transpose(data, tuple(range(data.ndim))[::-1])


def _as_binary_stack(masks: np.ndarray, name: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[:, :, None]
    if masks.ndim != 3:
        raise ValueError(f"{name}: masks must have shape (H, W, N), got {masks.shape}.")
    if masks.dtype == bool:
        return np.ascontiguousarray(masks, dtype=np.uint8)
    values = np.unique(masks)
    if not (np.isin(values, (0, 1)).all() or np.isin(values, (0, 255)).all()):
        raise ValueError(f"{name}: masks must be binary (0/1, bool or 0/255), found values {values[:8]}.")
    return np.ascontiguousarray(masks > 0, dtype=np.uint8)


def check_mask_stack(masks: np.ndarray, name: str = "masks") -> np.ndarray:
    """Validate a stack of metal masks as the simulator needs them; return it as (H, W, N) uint8 0/1.

    Args:
        masks: (H, W, N) or a single (H, W) mask (N = 1); bool, 0/1 or 0/255 values.
        name: what to call the stack in error messages (e.g. the file name).

    Raises:
        ValueError: wrong rank, non-binary values, non-square masks, or N = 0.
    """
    stack = _as_binary_stack(masks, name)
    if stack.shape[0] != stack.shape[1]:
        raise ValueError(f"{name}: masks must be square, got {stack.shape[0]}x{stack.shape[1]} (H x W).")
    if stack.shape[2] == 0:
        raise ValueError(f"{name}: no masks in the stack (shape {stack.shape}).")
    return stack


def split_mask_set(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 100-mask set (H, W, 100) into (train (H, W, 90), test (H, W, 10)).

    Test masks are taken at :data:`TEST_MASK_INDICES` in that order, so test mask ``k`` is the
    ``k``-th entry of ``testmask.npy`` and of the ``k.h5`` files.
    """
    masks = _as_binary_stack(masks, "masks")
    if masks.shape[2] != MASK_SET_SIZE:
        raise ValueError(f"the standard split needs {MASK_SET_SIZE} masks, got {masks.shape[2]}.")
    return masks[:, :, list(TRAIN_MASK_INDICES)], masks[:, :, list(TEST_MASK_INDICES)]


def resize_mask(mask: np.ndarray, size: int = 416) -> np.ndarray:
    """Resize a binary mask (H, W) or stack (H, W, N) to (size, size) the protocol's way.

    The published data loaders resize with ``PIL.Image.fromarray(uint8 mask).resize(...,
    BILINEAR)``. Pillow shrinks in two separable passes (rows, then columns) with an anti-aliased
    triangle filter of half-width ``512/416`` input pixels, and rounds to uint8 after each pass.
    On a 0/1 image every pass therefore keeps a pixel as metal when the normalised filter weight
    on metal is at least one half, so the result stays 0/1 (53..2061 metal pixels at 416 for the
    published test masks). This function calls Pillow itself so that the metal pixels match the
    reference data loaders bit for bit (tests check it against an independent NumPy model).

    Args:
        mask: 0/1 (or bool) array, (H, W) or (H, W, N).
        size: output side length.

    Returns:
        uint8 0/1 array, (size, size) or (size, size, N).
    """
    from PIL import Image

    stack = _as_binary_stack(mask, "mask")
    resized = [
        np.asarray(Image.fromarray(stack[:, :, i]).resize((size, size), Image.Resampling.BILINEAR))
        for i in range(stack.shape[2])
    ]
    out = np.stack(resized, axis=-1).astype(np.uint8)
    return out[:, :, 0] if np.asarray(mask).ndim == 2 else out


# ----------------------------------------------------------------------------------------------
# procedural masks
# ----------------------------------------------------------------------------------------------
# Shapes are drawn in pixels of a 512 grid (0.03 cm in the 640geo geometry) and scaled to `size`.


def _rotated(x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    return dx * c + dy * s, -dx * s + dy * c


@dataclass(frozen=True)
class _Shape:
    """One metal object: centre and half-extent (pixels) bound the window it is rasterised in."""

    cx: float
    cy: float
    extent: float
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _threaded_shaft(
    cx: float, cy: float, angle: float, length: float, width: float, rng: np.random.Generator
) -> _Shape:
    """Screw: a shaft with a sinusoidal thread profile and a wider head at one end."""
    pitch = rng.uniform(3.0, 5.0)
    head_len = rng.uniform(0.12, 0.2) * length

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = _rotated(x, y, cx, cy, angle)
        half_width = width / 2 * (1 + 0.18 * np.sin(2 * np.pi * u / pitch))
        shaft = (np.abs(u) <= length / 2) & (np.abs(v) <= half_width)
        head = (u >= length / 2 - head_len) & (u <= length / 2 + 0.1 * length) & (np.abs(v) <= 0.85 * width)
        return shaft | head

    return _Shape(cx, cy, 0.6 * length + width, inside)


def _blob(
    cx: float,
    cy: float,
    radius: float,
    aspect: float,
    angle: float,
    rng: np.random.Generator,
    roughness: float = 0.12,
    hole: float = 0.0,
) -> _Shape:
    """Irregular ellipse (radius modulated by random harmonics), optionally hollow."""
    amplitudes = rng.uniform(0, roughness, size=3) / np.arange(2, 5)
    phases = rng.uniform(0, 2 * np.pi, size=3)

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u, v = _rotated(x, y, cx, cy, angle)
        phi = np.arctan2(v * aspect, u)
        harmonics = sum(a * np.cos(k * phi + p) for k, a, p in zip(range(2, 5), amplitudes, phases, strict=True))
        r2 = u**2 + (v * aspect) ** 2
        solid = r2 <= (radius * (1 + harmonics)) ** 2
        return solid & (r2 > (hole * radius) ** 2) if hole > 0 else solid

    return _Shape(cx, cy, radius * (1 + roughness) * max(aspect, 1.0) + 2, inside)


def _screws(rng: np.random.Generator, scale: float) -> list[_Shape]:
    """One to three screws; pairs converge like bilateral pedicle screws."""
    n = int(rng.choice([1, 2, 2, 3]))
    length = rng.uniform(28, 75) * scale
    width = rng.uniform(4, 7.5) * scale
    cx0, cy0 = rng.uniform(-60, 60) * scale, rng.uniform(-40, 70) * scale
    base = rng.uniform(0, np.pi)
    shapes = []
    for i in range(n):
        offset = (i - (n - 1) / 2) * rng.uniform(35, 55) * scale
        tilt = base + (i - (n - 1) / 2) * rng.uniform(0.2, 0.5)
        shapes.append(_threaded_shaft(cx0 + offset, cy0, tilt, length, width, rng))
    return shapes


def _rods(rng: np.random.Generator, scale: float) -> list[_Shape]:
    """Spinal rods: round cross-sections (usually bilateral pairs) or one rod in the slice plane."""
    cy = rng.uniform(0, 80) * scale
    if rng.random() < 0.35:
        length = rng.uniform(50, 150) * scale
        width = rng.uniform(5, 10) * scale
        cx, angle = rng.uniform(-40, 40) * scale, rng.uniform(0, np.pi)

        def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            u, v = _rotated(x, y, cx, cy, angle)
            return (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)

        return [_Shape(cx, cy, length / 2 + width, inside)]
    n = int(rng.choice([1, 2, 2, 2, 4]))
    radius = rng.uniform(3.5, 8) * scale
    spread = rng.uniform(25, 45) * scale
    shapes = []
    for i in range(n):
        side = -1 if i % 2 == 0 else 1
        cx = side * spread * (1 + i // 2) + rng.normal(0, 2) * scale
        shapes.append(_blob(cx, cy + rng.normal(0, 3) * scale, radius, 1.0, 0.0, rng, 0.05))
    return shapes


def _dental(rng: np.random.Generator, scale: float) -> list[_Shape]:
    """Fillings/crowns on teeth along a parabolic dental arch."""
    n = int(rng.integers(1, 5))
    arch_half_width = rng.uniform(55, 75) * scale
    arch_depth = rng.uniform(55, 80) * scale
    apex_y = rng.uniform(-90, -40) * scale
    positions = rng.choice(np.linspace(-1, 1, 14), size=n, replace=False)
    return [
        _blob(
            t * arch_half_width,
            apex_y + arch_depth * t**2,
            rng.uniform(4, 10) * scale,
            rng.uniform(1.0, 1.6),
            rng.uniform(0, np.pi),
            rng,
        )
        for t in positions
    ]


def _hip(rng: np.random.Generator, scale: float) -> list[_Shape]:
    """Hip prostheses: femoral head/stem cross-sections, some hollow cups, one or both sides."""
    sides = [-1, 1] if rng.random() < 0.3 else [int(rng.choice([-1, 1]))]
    shapes = []
    for side in sides:
        radius = rng.uniform(12, 26 if len(sides) == 2 else 30) * scale
        # An acetabular cup is a metal shell around a polyethylene liner.
        hole = 0.75 if rng.random() < 0.3 else 0.0
        shapes.append(
            _blob(
                side * rng.uniform(70, 110) * scale,
                rng.uniform(-10, 40) * scale,
                radius,
                rng.uniform(1.0, 1.4),
                rng.uniform(0, np.pi),
                rng,
                0.04,
                hole,
            )
        )
    return shapes


_KIND_DRAWERS: dict[str, Callable[[np.random.Generator, float], list[_Shape]]] = {
    "screw": _screws,
    "rod": _rods,
    "dental": _dental,
    "hip": _hip,
}


def _inside_body(x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    """Generous body outline (ellipse, pixels from the centre) that every implant must lie in."""
    return (x / (200 * scale)) ** 2 + (y / (170 * scale)) ** 2 <= 1.0


def _rasterise(shape: _Shape, size: int, scale: float) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Evaluate a shape in its bounding window only; None when it leaves the body or the image."""
    centre = (size - 1) / 2
    lo_x, hi_x = int(np.floor(centre + shape.cx - shape.extent)), int(np.ceil(centre + shape.cx + shape.extent)) + 1
    lo_y, hi_y = int(np.floor(centre + shape.cy - shape.extent)), int(np.ceil(centre + shape.cy + shape.extent)) + 1
    if lo_x < 0 or lo_y < 0 or hi_x > size or hi_y > size:
        return None
    y, x = np.meshgrid(np.arange(lo_y, hi_y) - centre, np.arange(lo_x, hi_x) - centre, indexing="ij")
    obj = shape.inside(x, y)
    if not obj.any() or (obj & ~_inside_body(x, y, scale)).any():
        return None
    return (slice(lo_y, hi_y), slice(lo_x, hi_x)), obj


def _draw_mask(
    size: int, kind: str, rng: np.random.Generator, scale: float, area_range: tuple[float, float]
) -> tuple[np.ndarray, int] | None:
    """One attempt: draw objects; None if one leaves the body, two touch, or the area is off."""
    from scipy.ndimage import binary_dilation

    mask = np.zeros((size, size), dtype=bool)
    shapes = _KIND_DRAWERS[kind](rng, scale)
    for shape in shapes:
        placed = _rasterise(shape, size, scale)
        if placed is None:
            return None
        window, obj = placed
        # Objects stay apart so that the object count is well defined (connected components).
        if (binary_dilation(obj, iterations=2) & mask[window]).any():
            return None
        mask[window] |= obj
    area = int(mask.sum())
    if not area_range[0] <= area <= area_range[1]:
        return None
    return mask, len(shapes)


def generate_masks(
    n: int,
    size: int = 512,
    seed: int = 0,
    kinds: Sequence[str] = MASK_KINDS,
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[dict]]:
    """Generate ``n`` realistic binary metal masks, seeded and reproducible.

    Each mask holds one kind of implant, chosen uniformly from ``kinds``, with one or several
    separate objects: ``"screw"`` (1–3 threaded screws, pairs converging like pedicle screws),
    ``"rod"`` (spinal rods in cross-section, usually bilateral, or one rod in the slice plane),
    ``"dental"`` (1–4 fillings along a dental arch), ``"hip"`` (one or two femoral head/stem
    sections, some hollow cups). All objects lie inside a central body ellipse, and the metal
    area is 53–3030 pixels at 512 (≈35–2000 at 416), scaled by ``(size/512)**2``.

    Args:
        n: number of masks.
        size: side length (masks are drawn on the 512 scale and scaled).
        seed: seed of a :class:`numpy.random.Generator`; same arguments give the same masks.
        kinds: implant kinds to draw from (subset of :data:`MASK_KINDS`).
        return_info: also return one dict per mask with ``kind``, ``n_objects`` and ``area``.

    Returns:
        (size, size, n) uint8 0/1 array, and the info list when ``return_info``.
    """
    kinds = tuple(kinds)
    bad = [k for k in kinds if k not in _KIND_DRAWERS]
    if not kinds or bad:
        raise ValueError(f"kinds must be a non-empty subset of {MASK_KINDS}, got {kinds}.")
    if n < 0 or size < 32:
        raise ValueError(f"need n >= 0 and size >= 32, got n={n}, size={size}.")
    rng = np.random.default_rng(seed)
    scale = size / 512
    area_range = (_AREA_RANGE_512[0] * scale**2, _AREA_RANGE_512[1] * scale**2)
    masks = np.zeros((size, size, n), dtype=np.uint8)
    info = []
    for i in range(n):
        kind = str(rng.choice(kinds))
        for _ in range(1000):
            drawn = _draw_mask(size, kind, rng, scale, area_range)
            if drawn is not None:
                break
        else:  # pragma: no cover - the draws above are tuned to succeed within a few tries
            raise RuntimeError(f"could not draw a valid {kind!r} mask at size {size}.")
        masks[:, :, i] = drawn[0]
        info.append({"kind": kind, "n_objects": drawn[1], "area": int(drawn[0].sum())})
    return (masks, info) if return_info else masks


def generate_mask_set(seed: int = 0, size: int = 512) -> np.ndarray:
    """A stand-in for the 100-mask CNN-MAR set, with the standard split semantics.

    100 masks are generated with :func:`generate_masks`. Ten of them, spread evenly over the
    size ranking, are placed at :data:`TEST_MASK_INDICES` so that test mask ``k`` has the same
    size rank among the test masks as the published test mask ``k`` (large masks at test
    positions 1 and 7, small ones at 3 and 5, ...), which keeps the metric's mask-size groups
    meaningful. The other 90 fill the train positions. Use :func:`split_mask_set` to get
    ``trainmask``/``testmask`` stacks.

    Args:
        seed: random seed.
        size: side length.

    Returns:
        (size, size, 100) uint8 0/1 array.
    """
    masks = generate_masks(MASK_SET_SIZE, size=size, seed=seed)
    order = np.argsort(masks.sum(axis=(0, 1)), kind="stable")  # small to large
    test_pool = order[np.round(np.linspace(0, MASK_SET_SIZE - 1, len(TEST_MASK_INDICES))).astype(int)]
    # Published test position with the r-th smallest area receives the r-th smallest pool mask.
    positions_by_size = np.argsort(PUBLISHED_TEST_MASK_AREAS, kind="stable")
    test_for_position = np.empty(len(TEST_MASK_INDICES), dtype=int)
    test_for_position[positions_by_size] = test_pool
    train_pool = np.setdiff1d(np.arange(MASK_SET_SIZE), test_pool)
    permutation = np.empty(MASK_SET_SIZE, dtype=int)
    permutation[list(TEST_MASK_INDICES)] = test_for_position
    permutation[list(TRAIN_MASK_INDICES)] = train_pool
    return masks[:, :, permutation]
