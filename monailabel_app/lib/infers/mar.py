"""MONAI Label inference task: metal artifact reduction of a CT volume, slice by slice.

The request's image (a datastore image id, or an uploaded file) is read in HU with eqmar's CT
loader (:class:`eqmar.data.ct_input.LoadCTd`: NIfTI, DICOM file or DICOM series folder, DeepLesion
PNG), which refuses anything that is not CT in HU (an MR series, a colour PNG) with a 422 naming the
image id or the uploaded file, the same check as ``python -m eqmar.infer`` and the bundle.
Every axial slice with metal (HU above
``metal_threshold_hu``) is corrected by :class:`eqmar.apps.mar.inferer.MARVolumeInferer`:

- metal mask: ``HU > metal_threshold_hu`` (default 2500 HU);
- LI input: eqmar's fan-beam physics when ASTRA is importable in the app's environment; else (the
  normal case, since the MONAI Label environment pins numpy < 2 and cannot hold ODL) the
  documented fallback, a PyTorch parallel-beam re-projection of the slice on the model's working
  grid, linear interpolation across the metal trace and filtered back-projection
  (:class:`eqmar.ct.parallel.ParallelBeamProjector`). ``li_projector`` in the request's
  params forces ``"fanbeam"`` or ``"parallel"``;
- network: the self-describing eqmar model file at ``path``, loaded strictly and reloaded when
  the file changes (e.g. after training).

The result is a float32 NIfTI in HU with the input's geometry (the input's own header for a NIfTI
input). The result JSON reports the slices and pixels with metal and the LI projector used.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from eqmar.apps.mar.inference import DEFAULT_METAL_THRESHOLD_HU, TRACE_MODELS
from eqmar.apps.mar.inferer import LI_PROJECTORS, MARVolumeInferer
from eqmar.data.ct_input import CTInputError, LoadCTd

__all__ = ["MARInfer", "MARInputError", "ct_load_transforms"]

logger = logging.getLogger(__name__)

#: Request key with the name messages give the input (the image id, or "uploaded file <name>").
INPUT_NAME_KEY = "eqmar_input_name"


class MARInputError(ValueError):
    """A request the task cannot serve because of its input (HTTP ``status_code``, 4xx)."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = int(status_code)


def ct_load_transforms(keys: Sequence[str] = ("image",)) -> list[Callable]:
    """Load CT images in HU (NIfTI, DICOM file or series folder) channel-first: ``(1, X, Y[, Z])``, checked."""
    return [LoadCTd(keys=list(keys), name_key=INPUT_NAME_KEY)]


def _root_cause(error: BaseException) -> str:
    """The innermost message of an exception chain (MONAI wraps reader errors in RuntimeErrors)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


class MARInfer(BasicInferTask):
    """Image-to-image MAR task (``InferType.OTHERS``) returning the corrected volume in HU.

    Args:
        path: eqmar model file (:func:`eqmar.apps.mar.model_file.save_mar_model`).
        metal_threshold_hu: default metal threshold; a request may pass ``metal_threshold_hu``.
        trace_model: default metal trace model (``"line"``: fast on CPU, or ``"interpolating"``).
        li_projector: default LI projector (``"auto"``, ``"fanbeam"`` or ``"parallel"``).
        description: shown by ``/info/``.
        kwargs: passed to :class:`~monailabel.tasks.infer.basic_infer.BasicInferTask`.
    """

    def __init__(
        self,
        path: str,
        metal_threshold_hu: float = DEFAULT_METAL_THRESHOLD_HU,
        trace_model: str = "line",
        li_projector: str = "auto",
        description: str = ("CT metal artifact reduction (eqmar LI-residual UNet + EQ-Reg); returns the corrected "
                            "volume in HU"),
        **kwargs: Any,
    ) -> None:
        config = {"metal_threshold_hu": float(metal_threshold_hu), "trace_model": trace_model,
                  "li_projector": li_projector}
        super().__init__(
            path=path,
            network=None,
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description=description,
            config=config,
            load_strict=True,
            **kwargs,
        )
        self._inferers: dict[tuple[Any, ...], MARVolumeInferer] = {}

    # --------------------------------------------------------------------------- pipeline
    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return ct_load_transforms(("image",))

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return []

    def inferer(self, data: Any = None) -> MARVolumeInferer:
        """The MAR inferer for the request's threshold, trace model and LI projector (cached)."""
        data = data or {}
        try:
            threshold = float(data.get("metal_threshold_hu", DEFAULT_METAL_THRESHOLD_HU))
        except (TypeError, ValueError) as error:
            raise MARInputError(f"metal_threshold_hu must be a number, got {data.get('metal_threshold_hu')!r}",
                                400) from error
        trace_model = str(data.get("trace_model", "line"))
        li_projector = str(data.get("li_projector", "auto"))
        if trace_model not in TRACE_MODELS:
            raise MARInputError(f"trace_model must be one of {TRACE_MODELS}, got {trace_model!r}", 400)
        if li_projector not in LI_PROJECTORS:
            raise MARInputError(f"li_projector must be one of {LI_PROJECTORS}, got {li_projector!r}", 400)
        path = self.get_path()
        # a retrained model file may change the working size and geometry: key on its time stamp
        key = (path, os.stat(path).st_mtime if path else None, threshold, trace_model, li_projector)
        data["mar_inferer"] = key  # the writer reports what this inferer found
        if key not in self._inferers:
            if len(self._inferers) >= 8:  # each holds a network reference and projector caches
                self._inferers.clear()
            self._inferers[key] = MARVolumeInferer(
                path, metal_threshold_hu=threshold, trace_model=trace_model, li_projector=li_projector
            )
        return self._inferers[key]

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        """The model file's network (strict load), cached per device and reloaded when the file changes."""
        from eqmar.apps.mar.model_file import load_mar_model

        path = self.get_path()
        if not path:
            raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, f"MAR model file not found: {self.path}")
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached is not None and cached[1] == mtime:
            return cached[0]
        network, _ = load_mar_model(path, map_location="cpu")
        network = network.to(torch.device(device)).eval()
        self._networks[device] = (network, mtime)
        return network

    def run_pre_transforms(self, data: dict[str, Any], transforms: Any) -> dict[str, Any]:
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as error:
            cause = error
            while cause.__cause__ is not None and not isinstance(cause, CTInputError):
                cause = cause.__cause__
            if isinstance(cause, CTInputError):  # the loader's message already names the input
                raise MARInputError(str(cause)) from error
            name = data.get(INPUT_NAME_KEY) or os.path.basename(str(data.get("image_path") or data.get("image")
                                                                     or "input"))
            raise MARInputError(f"{name}: cannot read the image as a CT volume: {_root_cause(error)}") from error

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        image = data.get(self.input_key)
        if image is None or image.ndim not in (3, 4):
            shape = None if image is None else tuple(image.shape)
            raise MARInputError(f"expected a 2-D or 3-D CT image, got an array of shape {shape}")
        try:
            return super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
        except MARInputError:
            raise
        except ValueError as error:  # slice checks of eqmar (non-finite values, bad masks)
            raise MARInputError(str(error)) from error

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> tuple[str, dict[str, Any]]:
        """Write ``pred`` as a float32 NIfTI in HU; return its path and the result JSON."""
        from eqmar.apps.mar.writers import write_hu_nifti

        pred = data[self.output_label_key]
        volume = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float32)[0]
        affine = np.asarray(getattr(pred, "affine", np.eye(4)), dtype=np.float64)
        handle, path = tempfile.mkstemp(suffix=".nii.gz", prefix="mar_")
        os.close(handle)
        write_hu_nifti(path, volume, affine, str(data.get("image_path") or "") or None)
        inferer = self._inferers.get(data.get("mar_inferer"))
        infos = [info for per_volume in inferer.last_infos for info in per_volume] if inferer is not None else []
        result = {
            "shape": list(volume.shape),
            "dtype": "float32",
            "units": "HU",
            "slices": len(infos),
            "metal_slices": sum(info["metal_pixels"] > 0 for info in infos),
            "metal_pixels": int(sum(info["metal_pixels"] for info in infos)),
            "li_projector": inferer.last_li_projector if inferer is not None else None,
        }
        return path, result

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict[str, Any]]:
        image = request.get("image")
        if not image or (isinstance(image, str) and not os.path.exists(image)):
            raise MARInputError(f"image not found: {image!r}", 404)
        return super().__call__(request, callbacks)
