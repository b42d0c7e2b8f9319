"""Training inputs as the clinical route makes them: stored HU, threshold mask, image-domain LI.

A clinical user has only the reconstructed slice: integer HU clipped to the stored range (metal
saturates at 3071 HU), no sinogram. :class:`~eqmar.apps.mar.inference.MARInference` rebuilds the
network's inputs from that image (metal by HU threshold, LI by re-projection). Those inputs differ
from the protocol's: the threshold takes in the bright rim around the implant, the re-projected LI
keeps more of the streaks near the metal, and the metal itself is clipped. A network trained on the
protocol's sinogram-domain inputs only leaves an error band next to the metal on that route
(``docs/results.md``, "The clinical route").

This module makes the route's inputs for every pair of a SynDeepLesion root, once, so that a model
can also learn from them:

* :func:`stored_hu`: the image a scanner stores for a µ map;
* :func:`route_inputs`: ``(ma_CT, LI_CT, metal mask)`` of one metal-affected slice, made as the route
  makes them;
* :func:`ensure_route_inputs`: those inputs for a split, written beside the protocol's files
  (``route_<split>_<tag>/<image id>/<k>.h5``, resumable);
* :class:`RouteInputsDataset`: the pairs of a split with the route's inputs in place of the
  protocol's (same keys, so :class:`~eqmar.apps.mar.transforms.MARInputsd` and the loss work as is;
  the loss then leaves out the route's mask, which the route puts back as stored).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqmar.apps.mar.inference import DEFAULT_METAL_THRESHOLD_HU, _progress, image_domain_li, threshold_metal_mask
from eqmar.data.datasets import SynDeepLesionDataset

__all__ = [
    "ROUTE_METAL_THRESHOLD_HU",
    "ROUTE_TRACE_MODEL",
    "STORED_HU_RANGE",
    "RouteInputsDataset",
    "ensure_route_inputs",
    "route_inputs",
    "route_split_dir",
    "stored_hu",
]

#: Stored range of the usual 12-bit CT image (HU): metal saturates at the top.
STORED_HU_RANGE = (-1024.0, 3071.0)
#: Keys of a route file.
ROUTE_KEYS = ("ma_CT", "LI_CT", "mask")
#: How the training set's route inputs are made: the metal trace's ray model (the line projector's
#: trace, widened by a bin, covers the blooming rim that the threshold takes in, and is about 6x faster
#: on CPU than the interpolating one) and the metal threshold.
ROUTE_TRACE_MODEL = "line"
ROUTE_METAL_THRESHOLD_HU = DEFAULT_METAL_THRESHOLD_HU


def stored_hu(mu: np.ndarray) -> np.ndarray:
    """The image a scanner stores for a µ map: integer HU clipped to :data:`STORED_HU_RANGE` (int16)."""
    from eqmar.ct.physics import mu_to_hu

    return np.clip(np.rint(mu_to_hu(mu)), *STORED_HU_RANGE).astype(np.int16)


def route_inputs(
    ma_mu: np.ndarray,
    projector: Any,
    metal_threshold_hu: float = ROUTE_METAL_THRESHOLD_HU,
    trace_model: str = ROUTE_TRACE_MODEL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The route's network inputs for a metal-affected µ slice on the projector's grid.

    Args:
        ma_mu: (N, N) metal-affected µ (``ma_CT``).
        projector: :class:`~eqmar.ct.projector.Projector` of the slice's geometry.
        metal_threshold_hu: the route's metal threshold.
        trace_model: ray model of the metal trace (:func:`~eqmar.apps.mar.inference.metal_trace_of`).

    Returns:
        ``(ma, li, mask)``: the stored slice back in µ, its image-domain LI (float32 µ) and the
        threshold mask (uint8). An empty mask (no pixel above the threshold) gives ``li = ma``.
    """
    from eqmar.ct.physics import HU_MIN, hu_to_mu

    hu = stored_hu(ma_mu).astype(np.float32)
    mask = threshold_metal_mask(hu, metal_threshold_hu)
    # as MARInference's working grid (prepare_hu): nothing below -1000 HU
    ma = hu_to_mu(np.maximum(hu, np.float32(HU_MIN)))
    li = image_domain_li(ma, mask, projector, trace_model) if mask.any() else ma.copy()
    return ma, li.astype(np.float32), mask.astype(np.uint8)


def route_split_dir(root: str | os.PathLike, split: str, geometry: str) -> Path:
    """Folder of the route inputs of one split: ``<root>/route_<split>_<geometry>``."""
    return Path(root) / f"route_{split}_{geometry}"


def _route_path(root: Path, split: str, geometry: str, image_id: str, mask_index: int) -> Path:
    return route_split_dir(root, split, geometry) / image_id / f"{mask_index}.h5"


def ensure_route_inputs(
    root: str | os.PathLike,
    split: str,
    geometry: str,
    projector_geometry: Any,
    mask_indices: Sequence[int],
    metal_threshold_hu: float = ROUTE_METAL_THRESHOLD_HU,
    trace_model: str = ROUTE_TRACE_MODEL,
    progress: bool = True,
) -> Path:
    """Write the route's inputs of every (image, mask) pair of a split that lacks them; return the folder.

    Files are written atomically, so an interrupted run resumes where it stopped.

    Args:
        root: SynDeepLesion root holding the split's protocol files.
        split: ``"train"`` or ``"test"``.
        geometry: geometry tag of the split's folder (e.g. ``"640geo_416px640v"``).
        projector_geometry: :class:`~eqmar.ct.geometry.FanBeamGeometry` the files were simulated with.
        mask_indices: masks to pair with every image.
        metal_threshold_hu: the route's metal threshold.
        trace_model: ray model of the metal trace (``"line"``: about 6x faster than
            ``"interpolating"`` on CPU, and a superset of its trace).
        progress: show a progress bar.
    """
    from eqmar.ct.projector import Projector
    from eqmar.data.syndeeplesion import SynDeepLesionLayout, _write_h5, read_pair

    root = Path(root)
    layout = SynDeepLesionLayout(root, split, geometry)
    todo = [(image_id, int(k)) for image_id in layout.read_list() for k in mask_indices
            if not _route_path(root, split, geometry, image_id, int(k)).is_file()]
    folder = route_split_dir(root, split, geometry)
    if not todo:
        return folder
    projector = Projector(projector_geometry, device="cpu")
    try:
        for image_id, k in _progress(todo, progress, f"route inputs ({split})", unit="pair"):
            pair_path = layout.pair_path(image_id, k)
            ma = read_pair(pair_path, keys=("ma_CT",))["ma_CT"]
            if ma.shape != (projector_geometry.image_size,) * 2:
                raise ValueError(f"{pair_path}: ma_CT {ma.shape} does not match the geometry's "
                                 f"{projector_geometry.image_size} px")
            ma_route, li, mask = route_inputs(ma, projector, metal_threshold_hu, trace_model)
            _write_h5(_route_path(root, split, geometry, image_id, k), {"ma_CT": ma_route, "LI_CT": li, "mask": mask})
    finally:
        projector.close()
    return folder


class RouteInputsDataset(SynDeepLesionDataset):
    """Pairs of a split with the route's inputs (see :func:`ensure_route_inputs`) instead of the protocol's.

    Takes the arguments of :class:`~eqmar.data.datasets.SynDeepLesionDataset` (``root, split,
    mask_indices, transform, geometry=...``); the route files of those masks must exist. Samples
    have its keys (``ma_CT``, ``LI_CT``, ``gt``, ``mask``, ``mask_index``, ``image_id``), with
    ``mask`` the route's threshold mask. Route files hold no sinograms.
    """

    def inputs(self, image_id: str, mask_index: int, size: int) -> dict[str, np.ndarray]:
        """The route file's ``ma_CT``, ``LI_CT`` and threshold ``mask`` of the pair."""
        from eqmar.data.syndeeplesion import _read_h5

        if self.with_sinograms:
            raise ValueError("RouteInputsDataset: route files hold no sinograms (with_sinograms=True)")
        layout = self.layout
        return _read_h5(_route_path(layout.root, layout.split, layout.geometry, image_id, mask_index), ROUTE_KEYS, None)
