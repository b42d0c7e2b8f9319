"""Apply a trained MAR model to CT slices and volumes in Hounsfield units.

The networks of :mod:`eqmar.networks` were trained on SynDeepLesion-style inputs
``[ma_CT, LI_CT, non-metal mask]`` in µ (1/cm) at one image size. A clinical image has no raw
sinogram, so :class:`MARInference` rebuilds the three inputs from the reconstructed slice alone:

1. **Metal mask.** Given by the caller, or ``hu > metal_threshold_hu`` (default
   :data:`DEFAULT_METAL_THRESHOLD_HU` = 2500 HU). Cortical bone stays below about 2000 HU, while
   metal drives the reconstruction to the top of the scanner's range (3071 HU for the usual 12-bit
   storage, higher with extended-range scales), so 2500 HU separates the two with margin on both
   sides. Dental enamel (up to about 2500-3000 HU) and dense contrast agent can exceed it: for
   head scans at tooth level pass a mask or raise the threshold (e.g. 3000 HU).
2. **Working grid.** The slice (padded with air to a square if needed) is resampled to the
   model's training size: payload meta ``"image_size"``, else the size in a reduced geometry tag
   such as ``"640geo_128px160v"``, else 416 (full 640geo). The image is resized bilinearly like
   the protocol's 512→416 step (:func:`eqmar.ct.physics.prepare_hu`, clipped at −1000 HU); the
   mask with the protocol's rule (:func:`eqmar.data.masks.resize_mask`). A metal object too small
   to survive that rule (below about half a working pixel) is kept with the coverage rule
   instead: every working pixel that the metal touches. As in the protocol, which maps every
   512 px DeepLesion slice onto the same 416 px grid, the physical pixel spacing is not used.
3. **Image-domain LI.** µ = HU→µ; the µ image is forward-projected in the model's fan-beam
   geometry (640geo scaled to the working size, with the tag's number of views); the metal trace
   is where the projection of the mask is positive (interpolating projector, as in the
   simulator); the sinogram is linearly interpolated across the trace
   (:func:`eqmar.ct.metal.interpolate_trace`) and reconstructed by FBP. This is the standard LI
   when the raw data are not available: the re-projected trace carries the streaks of the image,
   and interpolating across it removes them together with the metal. Projectors are cached per
   geometry.
4. **Network.** ``network([ma_CT, LI_CT, 1 - mask])`` in eval mode without gradients.
5. **Back to the input.** The correction (network output minus the working-size input) is
   resampled to the input size and added to the input, so regions the network leaves alone keep
   their native resolution instead of going through a lossy down/up-sampling round trip
   (``preserve_detail=False`` resamples the network output itself). The original metal pixels
   are then put back: the network is trained with metal excluded from its loss and does not
   restore metal, and a reader needs to see the implant. Output is float32 HU.

Known gap to the training data: a stored clinical image saturates metal at the top of its HU
range, whereas simulated ``ma_CT`` keeps the full metal attenuation (about 2.4 /cm for titanium);
the network's metal pixels are excluded from its loss and overwritten here, but their values do
enter its convolutions.

A slice without metal is returned unchanged with ``info["metal_pixels"] == 0`` and a warning: a
documented fallback, not an error, because most slices of a volume contain no implant.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqmar.utils import require_extra, resolve_torch_device

require_extra(__name__, "scipy", "tqdm", extra="infer")

__all__ = [
    "pad_to_square",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_METAL_THRESHOLD_HU",
    "AIR_HU",
    "MARInference",
    "threshold_metal_mask",
    "model_geometry",
    "image_domain_li",
    "metal_trace_of",
    "TRACE_MODELS",
]

#: HU above which a pixel counts as metal when no mask is given (see module docstring).
DEFAULT_METAL_THRESHOLD_HU = 2500.0
#: Working size when a model file does not record one: the full 640geo grid.
DEFAULT_IMAGE_SIZE = 416
#: Ray models for the metal trace, see :func:`metal_trace_of`.
TRACE_MODELS = ("interpolating", "line")
#: Value used to pad non-square slices (air; the protocol clips below −1000 HU anyway).
AIR_HU = -1000.0

# "<preset>_<size>px<views>v", the tag SynthesisConfig gives a reduced geometry.
_REDUCED_TAG = re.compile(r"^(?P<preset>[A-Za-z0-9]+)_(?P<size>\d+)px(?P<views>\d+)v$")


def threshold_metal_mask(hu: np.ndarray, threshold_hu: float = DEFAULT_METAL_THRESHOLD_HU) -> np.ndarray:
    """Boolean metal mask ``hu > threshold_hu``."""
    return np.asarray(hu) > threshold_hu


def model_geometry(meta: dict[str, Any] | None, source: str | Path | None = None) -> Any:
    """Fan-beam geometry a model was trained with, from its model-file meta.

    Args:
        meta: payload ``"meta"`` of a model file; uses ``"geometry_tag"`` (a preset name such as
            ``"640geo"`` or a reduced tag ``"640geo_128px160v"``) and ``"image_size"``.
        source: the model file, named in the warning and the error.

    Returns:
        A :class:`~eqmar.ct.geometry.FanBeamGeometry`. Without a tag the published ``"640geo"`` is
        assumed, with a warning; the size is meta ``image_size`` > the tag's size >
        :data:`DEFAULT_IMAGE_SIZE`; views are the tag's, else the preset's.

    Raises:
        ValueError: a tag whose preset is not one of :data:`~eqmar.ct.geometry.GEOMETRY_PRESETS`
            (guessing would simulate the inputs on another scanner geometry than training saw).
    """
    from eqmar.ct.geometry import GEOMETRY_PRESETS, FanBeamGeometry

    meta = meta or {}
    where = f"{source}: " if source is not None else ""
    if not meta.get("geometry_tag"):
        warnings.warn(
            f"{where}the model file's meta names no geometry_tag; assuming the published 640geo geometry", stacklevel=2
        )
    tag = str(meta.get("geometry_tag") or "640geo")
    match = _REDUCED_TAG.match(tag)
    preset = match.group("preset") if match else tag
    if preset.lower() not in GEOMETRY_PRESETS:
        raise ValueError(
            f"{where}unknown geometry_tag {tag!r} in the model file's meta; "
            f"expected a preset of {sorted(GEOMETRY_PRESETS)}, "
            "optionally reduced as '<preset>_<size>px<views>v'"
        )
    base = FanBeamGeometry.preset(preset)
    size = meta.get("image_size") or (int(match.group("size")) if match else DEFAULT_IMAGE_SIZE)
    views = int(match.group("views")) if match else None
    if int(size) == base.image_size and views in (None, base.num_views):
        return base
    return base.scaled(int(size), views)


def metal_trace_of(metal_mask: np.ndarray, projector: Any, model: str = "interpolating") -> np.ndarray:
    """Boolean metal trace ``(views, bins)`` of an image-grid metal mask.

    Args:
        metal_mask: (N, N) metal mask on the projector's grid.
        projector: a :class:`~eqmar.ct.projector.Projector` for that grid.
        model: ``"interpolating"`` (default): the interpolating ray model the simulator uses, so
            traces match the training data (on CPU the slower path, about 4 s at 640geo);
            ``"line"``: ASTRA's CPU line projector (about 4x faster), whose trace is a subset
            of the interpolating one (it misses grazing rays), widened by one detector bin on each
            side so that it covers it (IoU 0.92-0.98 with it on generated 416 px masks).

    Raises:
        ValueError: for an unknown ``model``.
    """
    from scipy.ndimage import binary_dilation

    from eqmar.ct.metal import metal_trace

    if model not in TRACE_MODELS:
        raise ValueError(f"metal trace model must be one of {TRACE_MODELS}, got {model!r}")
    mask = np.asarray(metal_mask, dtype=np.float32)
    if model == "interpolating":
        return metal_trace(projector.forward_interpolating(mask))
    return binary_dilation(metal_trace(projector.forward(mask)), structure=np.ones((1, 3), dtype=bool))


def image_domain_li(
    mu: np.ndarray, metal_mask: np.ndarray, projector: Any, trace_model: str = "interpolating"
) -> np.ndarray:
    """LI image from a reconstructed µ image: re-project, interpolate across the metal trace, FBP.

    Args:
        mu: (N, N) attenuation image (1/cm) on the projector's grid.
        metal_mask: (N, N) boolean metal mask on the same grid.
        projector: a :class:`~eqmar.ct.projector.Projector` for that grid.
        trace_model: see :func:`metal_trace_of`.

    Returns:
        (N, N) float32 LI image in µ.
    """
    from eqmar.ct.metal import interpolate_trace

    trace = metal_trace_of(metal_mask, projector, trace_model)
    return projector.fbp(interpolate_trace(projector.forward(mu), trace))


def _check_slice(hu: np.ndarray) -> np.ndarray:
    array = np.asarray(hu)
    if array.ndim != 2 or min(array.shape) < 2:
        raise ValueError(f"MARInference: a slice must be a 2-D (H, W) array, got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"MARInference: a slice must be numeric HU, got dtype {array.dtype}.")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError("MARInference: the slice contains NaN or infinite values.")
    return array


def _check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(f"MARInference: metal mask shape {array.shape} differs from the slice shape {shape}.")
    return array > 0


def pad_to_square(image: np.ndarray, value: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Centre ``image`` in a square canvas filled with ``value``; also return the crop back.

    The networks work on square grids; MAR inference and the MONAI Label trainer pad alike (with air).
    """
    rows, cols = image.shape
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    crop = (slice(top, top + rows), slice(left, left + cols))
    if rows == cols:
        return image, crop
    canvas = np.full((side, side), value, dtype=image.dtype)
    canvas[crop] = image
    return canvas, crop


class MARInference:
    """Metal artifact reduction of HU slices and volumes with a saved MAR model.

    Args:
        model_path: a model file written by :func:`eqmar.apps.mar.model_file.save_mar_model`.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; the
            projector uses ASTRA's CUDA back-end only when the network runs on CUDA.
        metal_threshold_hu: threshold of the automatic metal mask (see module docstring).
        preserve_detail: add the resampled correction to the input (True) rather than resampling
            the network output itself (see module docstring); identical when no resampling occurs.
        trace_model: ray model of the metal trace, ``"interpolating"`` or ``"line"`` (faster on
            CPU); ``None``: the one the model was trained with on clinical-route inputs (its meta
            ``route_inputs.trace_model``, :mod:`eqmar.apps.mar.route`), else ``"interpolating"``
            (the simulator's, as in the protocol's training data).
        network: use this network instead of the file's (the file's meta still defines the
            geometry); mainly for tests and custom wrappers.

    Raises:
        FileNotFoundError: missing model file.
        ValueError: a file that is not an eqmar MAR model, or weights that do not fit its network.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str | torch.device = "auto",
        metal_threshold_hu: float = DEFAULT_METAL_THRESHOLD_HU,
        preserve_detail: bool = True,
        trace_model: str | None = None,
        network: torch.nn.Module | None = None,
    ) -> None:
        from eqmar.apps.mar.model_file import load_mar_model

        self.device = resolve_torch_device(device)
        self.model_path = Path(model_path)
        loaded, payload = load_mar_model(self.model_path, map_location="cpu")
        self.payload = payload
        self.meta: dict[str, Any] = dict(payload.get("meta") or {})
        self.network = (network if network is not None else loaded).to(self.device).eval()
        self.geometry = model_geometry(self.meta, source=self.model_path)
        self.metal_threshold_hu = float(metal_threshold_hu)
        self.preserve_detail = bool(preserve_detail)
        if trace_model is None:
            trace_model = str((self.meta.get("route_inputs") or {}).get("trace_model", "interpolating"))
        if trace_model not in TRACE_MODELS:
            raise ValueError(f"MARInference: trace_model must be one of {TRACE_MODELS}, got {trace_model!r}")
        self.trace_model = trace_model
        self._projectors: dict[Any, Any] = {}

    @property
    def image_size(self) -> int:
        """Working image size (pixels per side) of the model."""
        return int(self.geometry.image_size)

    def projector(self) -> Any:
        """The cached :class:`~eqmar.ct.projector.Projector` of the model's geometry."""
        from eqmar.ct.projector import Projector

        if self.geometry not in self._projectors:
            astra_device = "auto" if self.device.type == "cuda" else "cpu"
            self._projectors[self.geometry] = Projector(self.geometry, device=astra_device)
        return self._projectors[self.geometry]

    # ------------------------------------------------------------------------------ slices
    def metal_mask(self, hu: np.ndarray) -> np.ndarray:
        """The automatic metal mask of a slice: ``hu > metal_threshold_hu``."""
        return threshold_metal_mask(hu, self.metal_threshold_hu)

    def correct_slice(self, hu: np.ndarray, metal_mask: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """Correct one slice.

        Args:
            hu: (H, W) slice in HU (any size; non-square slices are padded with air).
            metal_mask: (H, W) metal mask (nonzero = metal); ``None`` thresholds the slice.

        Returns:
            ``(corrected (H, W) float32 HU, info)``; ``info`` has ``metal_pixels`` (input grid),
            ``metal_pixels_working``, ``working_size``, ``num_views``, ``mask_source``
            (``"given"``/``"threshold"``), ``mask_rule`` (``"protocol"``/``"coverage"``) and
            ``seconds``.

        Raises:
            ValueError: for a non-2-D, non-numeric or non-finite slice, or a mask of another shape.
        """
        corrected, info = self._correct(hu, metal_mask)
        if info["metal_pixels"] == 0:
            warnings.warn(info["warning"], stacklevel=2)
        return corrected, info

    def _correct(self, hu: np.ndarray, metal_mask: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
        start = time.perf_counter()
        image = _check_slice(hu)
        mask = self.metal_mask(image) if metal_mask is None else _check_mask(metal_mask, image.shape)
        info: dict[str, Any] = {
            "metal_pixels": int(mask.sum()),
            "mask_source": "threshold" if metal_mask is None else "given",
            "working_size": self.image_size,
            "num_views": int(self.geometry.num_views),
        }
        if info["metal_pixels"] == 0:
            info.update(metal_pixels_working=0, mask_rule=None, seconds=time.perf_counter() - start)
            info["warning"] = (
                f"no metal found (no pixel above {self.metal_threshold_hu:g} HU and no mask given): "
                "slice returned unchanged"
                if metal_mask is None
                else "the given metal mask is empty: slice returned unchanged"
            )
            return image.copy(), info
        square, crop = pad_to_square(image, AIR_HU)
        square_mask, _ = pad_to_square(mask, False)
        working_mask, info["mask_rule"] = self._working_mask(square_mask)
        info["metal_pixels_working"] = int(working_mask.sum())
        corrected = self._restore(square, square_mask, working_mask)
        info["seconds"] = time.perf_counter() - start
        return np.ascontiguousarray(corrected[crop], dtype=np.float32), info

    def _working_mask(self, mask: np.ndarray) -> tuple[np.ndarray, str]:
        from eqmar.ct.physics import resize_square
        from eqmar.data.masks import resize_mask

        working = resize_mask(mask.astype(np.uint8), self.image_size).astype(bool)
        if working.any():
            return working, "protocol"
        return resize_square(mask.astype(np.float32), self.image_size, "mask") > 0, "coverage"

    def _restore(self, hu: np.ndarray, mask: np.ndarray, working_mask: np.ndarray) -> np.ndarray:
        """Network correction of a square slice; returns HU on the slice's own grid."""
        from eqmar.apps.mar.sliding import inference_roi, mar_forward
        from eqmar.apps.mar.transforms import MARInputs
        from eqmar.ct.physics import hu_to_mu, mu_to_hu, prepare_hu, resize_square

        size = self.image_size
        working_hu = prepare_hu(hu, size)
        mu = hu_to_mu(working_hu)
        li = image_domain_li(mu, working_mask, self.projector(), self.trace_model)
        inputs = MARInputs()(mu, li, working_mask.astype(np.float32))[None].to(self.device)
        with torch.no_grad():
            output = mar_forward(self.network, inputs, inference_roi(self.meta))
        output_hu = mu_to_hu(output.detach().float().cpu().numpy().reshape(size, size))
        if self.preserve_detail:
            # what the network changed in what it was given: an identity network changes nothing
            correction = output_hu - working_hu
            if working_mask.any() and working_hu.shape != hu.shape:
                # On the working metal, and on the working pixels next to it that resampling blended
                # with metal, the correction is tissue minus (partly) stored metal: up to -3000 HU.
                # Resampled to the slice's grid it would bleed a dark ring into the tissue beside the
                # metal. Take the nearest clean pixel's correction there instead (the metal itself is
                # put back below).
                from scipy.ndimage import binary_dilation, distance_transform_edt

                blended = binary_dilation(working_mask, iterations=1)
                _, nearest = distance_transform_edt(blended, return_indices=True)
                correction = correction[nearest[0], nearest[1]]
            result = hu + resize_square(correction, hu.shape[0], "correction")
        else:
            result = np.array(resize_square(output_hu, hu.shape[0], "output"))  # Pillow arrays are read-only
        result[mask] = hu[mask]
        return result

    # ------------------------------------------------------------------------------ volumes
    def correct_volume(
        self,
        hu3d: np.ndarray,
        metal_mask: np.ndarray | None = None,
        progress: bool = False,
        description: str = "MAR",
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Correct a volume slice by slice.

        Args:
            hu3d: (Z, H, W) HU volume (axial slices along the first axis).
            metal_mask: optional (Z, H, W) metal mask.
            progress: show a tqdm progress bar.
            description: progress bar label.

        Returns:
            ``(corrected (Z, H, W) float32 HU, per-slice info)``. Slices without metal are copied;
            a single warning is issued when no slice of the volume contains metal.
        """
        volume = np.asarray(hu3d)
        if volume.ndim != 3:
            raise ValueError(f"MARInference.correct_volume: expected a (Z, H, W) volume, got shape {volume.shape}.")
        if metal_mask is not None and np.shape(metal_mask) != volume.shape:
            raise ValueError(
                f"MARInference.correct_volume: mask shape {np.shape(metal_mask)} differs from {volume.shape}."
            )
        corrected = np.empty(volume.shape, dtype=np.float32)
        infos: list[dict[str, Any]] = []
        for k in _progress(range(volume.shape[0]), progress, description):
            corrected[k], info = self._correct(volume[k], None if metal_mask is None else np.asarray(metal_mask)[k])
            infos.append(info)
        if volume.shape[0] and all(info["metal_pixels"] == 0 for info in infos):
            warnings.warn(
                f"no metal found in any of the {volume.shape[0]} slices: volume returned unchanged", stacklevel=2
            )
        return corrected, infos

    def close(self) -> None:
        """Free the cached projectors' ASTRA memory."""
        for projector in self._projectors.values():
            projector.close()
        self._projectors.clear()

    def __enter__(self) -> MARInference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backbone = (self.payload.get("network") or {}).get("backbone")
        return (
            f"MARInference({str(self.model_path)!r}, backbone={backbone!r}, size={self.image_size}, "
            f"views={self.geometry.num_views}, device={str(self.device)!r}, threshold={self.metal_threshold_hu:g} HU)"
        )


def _progress(items: Sequence[Any], enabled: bool, description: str, unit: str = "slice") -> Any:
    """``items`` behind a progress bar when ``enabled``."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit=unit)
