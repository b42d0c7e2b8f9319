"""Turn CT files of any supported kind into a list of 2-D HU slices for the MAR simulator.

Rule for volumes (DICOM series, 3-D NIfTI): the body area of an axial slice is its number of
pixels above ``body_threshold_hu`` (−500 HU: soft tissue and bone, not air or lung). Slices whose
body area is at least ``min_body_fraction`` of the volume's largest body area are candidates
(this drops the ends of the scan, where the body is cut tangentially or absent); from them at most
``max_slices`` are taken, evenly spaced in slice order, first and last candidates included. A
volume in which no slice has body is rejected (ValueError).

Slices are returned at native size in display orientation (rows anterior→posterior, columns
patient right→left, as DICOM and DeepLesion store them); they must be square. Resizing to the
simulation grid is the simulator's job.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from eqmar.utils import require_extra

require_extra(__name__, "pydicom", "nibabel", "PIL")

__all__ = ["load_ct_slices", "select_axial_slices"]

BODY_THRESHOLD_HU = -500.0


def select_axial_slices(
    volume: np.ndarray,
    min_body_fraction: float = 0.5,
    max_slices: int = 8,
    body_threshold_hu: float = BODY_THRESHOLD_HU,
) -> list[int]:
    """Indices of the axial slices (last axis) to use from an HU volume (H, W, D); see module doc.

    Args:
        volume: HU volume, slices along the last axis.
        min_body_fraction: keep slices with body area >= this fraction of the largest one.
        max_slices: at most this many indices, evenly spaced over the candidates.
        body_threshold_hu: HU above which a pixel counts as body.

    Returns:
        Sorted slice indices (empty when no slice contains body).
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be (H, W, D), got shape {volume.shape}.")
    if not 0.0 <= min_body_fraction <= 1.0 or max_slices < 1:
        raise ValueError(
            f"need 0 <= min_body_fraction <= 1 and max_slices >= 1, got {min_body_fraction}, {max_slices}."
        )
    area = np.count_nonzero(volume > body_threshold_hu, axis=(0, 1))
    if area.max(initial=0) == 0:
        return []
    candidates = np.flatnonzero(area >= min_body_fraction * area.max())
    if len(candidates) <= max_slices:
        return candidates.tolist()
    picks = np.round(np.linspace(0, len(candidates) - 1, max_slices)).astype(int)
    return candidates[np.unique(picks)].tolist()


def _check_square(slice2d: np.ndarray, source: str) -> np.ndarray:
    if slice2d.ndim != 2 or slice2d.shape[0] != slice2d.shape[1]:
        raise ValueError(f"{source}: slices must be square 2-D images, got shape {slice2d.shape}.")
    return np.ascontiguousarray(slice2d, dtype=np.float32)


def _kind_of(path: Path) -> str:
    from pydicom.misc import is_dicom

    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(".png"):
        return "png"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".h5"):
        return "syndeeplesion-h5"
    if name.endswith((".dcm", ".dicom")) or is_dicom(path):
        return "dicom"
    raise ValueError(
        f"{path}: unsupported file type; expected a DeepLesion .png, DICOM file/folder, NIfTI or SynDeepLesion .h5."
    )


def _volume_slices(volume: np.ndarray, source: str, **selection) -> list[tuple[np.ndarray, str]]:
    if volume.ndim == 2 or volume.shape[-1] == 1:
        return [(_check_square(volume.reshape(volume.shape[:2]), source), source)]
    picks = select_axial_slices(volume, **selection)
    if not picks:
        # An all-air volume is most likely not in HU (a mask, a zero-filled export): say so
        # instead of returning no slices, which callers would skip without a trace.
        raise ValueError(
            f"{source}: no axial slice has body (pixels above {selection['body_threshold_hu']} HU); "
            "is this a CT volume in HU?"
        )
    return [(_check_square(volume[:, :, k], source), f"{source}#slice={k}") for k in picks]


def load_ct_slices(
    path: str | os.PathLike,
    min_body_fraction: float = 0.5,
    max_slices: int = 8,
    body_threshold_hu: float = BODY_THRESHOLD_HU,
) -> list[tuple[np.ndarray, str]]:
    """Load 2-D HU slices from a DeepLesion PNG, a DICOM file or series folder, a NIfTI volume or a SynDeepLesion h5.

    A SynDeepLesion ``.h5`` file (``gt.h5`` of the published layout) holds the clean slice as µ
    (1/cm) under ``image``; it is converted to HU with :func:`eqmar.ct.physics.mu_to_hu`.

    Args:
        path: the file or series folder.
        min_body_fraction: slice-selection rule for volumes (see module docstring).
        max_slices: at most this many slices per volume.
        body_threshold_hu: HU threshold of the body-area measure.

    Returns:
        List of ``(hu, source_id)``: ``hu`` float32 (H, H) in HU at native size; ``source_id``
        is the path, plus ``#slice=<k>`` (index in the sorted volume) for slices of volumes.

    Raises:
        FileNotFoundError: missing path.
        ValueError: unsupported or invalid input (non-square, non-CT, corrupt, non-finite, a volume
            without any body slice ...).
    """
    from eqmar.data.readers import CTDicomReader, CTNiftiReader, DeepLesionPNGReader

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"CT input not found: {p}")
    source = str(p)
    selection = {
        "min_body_fraction": min_body_fraction,
        "max_slices": max_slices,
        "body_threshold_hu": body_threshold_hu,
    }
    kind = _kind_of(p)
    if kind == "png":
        reader = DeepLesionPNGReader(reverse_indexing=False)
        hu, _ = reader.get_data(reader.read(p))
        return [(_check_square(hu, source), source)]
    if kind == "syndeeplesion-h5":
        return [(_check_square(_syndeeplesion_clean_hu(p), source), source)]
    if kind == "dicom":
        # swap_ij=False keeps DICOM's (row, column) order, i.e. display orientation.
        reader = CTDicomReader(swap_ij=False)
        hu, _ = reader.get_data(reader.read(p))
        if p.is_file() and hu.ndim == 3:
            hu = np.moveaxis(hu, 0, -1)  # a multi-frame file stores frames first
        return _volume_slices(hu, source, **selection)
    reader = CTNiftiReader(as_closest_canonical=True)
    data, _ = reader.get_data(reader.read(p))
    if data.ndim not in (2, 3):
        raise ValueError(f"{source}: expected a 2-D or 3-D NIfTI image, got shape {data.shape}.")
    if data.ndim == 2:
        data = data[:, :, None]
    # Canonical RAS voxel axes (x→left-to-right, y→posterior-to-anterior): flip both and transpose
    # to get DICOM display order (rows anterior→posterior, columns patient right→left).
    display = np.flip(data, axis=(0, 1)).transpose(1, 0, 2)
    return _volume_slices(display, source, **selection)


def _syndeeplesion_clean_hu(path: Path) -> np.ndarray:
    """The clean slice of a SynDeepLesion h5 file (µ under ``image``), in HU."""
    import h5py

    from eqmar.ct.physics import mu_to_hu

    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise ValueError(f"{path}: no 'image' dataset (keys: {sorted(f)}); expected a SynDeepLesion gt.h5.")
            mu = np.asarray(f["image"][()], dtype=np.float32)
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error}).") from None
    if mu.ndim != 2 or not np.isfinite(mu).all():
        raise ValueError(f"{path}: 'image' must be a finite 2-D µ map, got shape {mu.shape}.")
    return mu_to_hu(mu)
