"""MAR in MONAI pipelines: an inferer for HU volumes and the correction engine it runs.

- :class:`MARVolumeInferer`: a MONAI :class:`~monai.inferers.Inferer` that takes a ``(B, 1, ...)``
  HU volume (a :class:`~monai.data.MetaTensor` whose affine gives the orientation) and a MAR
  network, and returns the corrected HU volume with the same shape and metadata. It runs
  :class:`PortableMARInference` slice by slice in display orientation (metal mask by HU threshold,
  image-domain LI, network, correction added back, metal restored). The MONAI bundle and the MONAI
  Label app both use it.
- :class:`PortableMARInference`: :class:`~eqmar.apps.mar.inference.MARInference` that also works
  where the simulation stack (ASTRA/ODL) is not installed, as in the MONAI Label environment whose
  numpy < 2 pin excludes ODL. The LI input is then computed by
  :class:`~eqmar.ct.parallel.ParallelBeamProjector`: the slice is re-projected, the sinogram is
  linearly interpolated across the metal trace (:func:`eqmar.ct.metal.interpolate_trace`) and
  reconstructed by filtered back-projection. It is the same image-domain LI as with eqmar's physics
  except for the ray geometry (parallel instead of the model's fan beam), so the LI image is close
  to, but not identical with, the one the network was trained on.

Nothing here imports ASTRA or ODL at module level.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from eqmar.apps.mar.inference import DEFAULT_METAL_THRESHOLD_HU, MARInference
from eqmar.ct.parallel import ParallelBeamProjector

__all__ = ["LI_PROJECTORS", "MARVolumeInferer", "PortableMARInference", "fanbeam_physics_available"]

logger = logging.getLogger("eqmar.mar.inferer")

#: LI projector choices: eqmar's fan-beam physics, the PyTorch parallel-beam fallback, or the
#: first when importable.
LI_PROJECTORS = ("auto", "fanbeam", "parallel")


@lru_cache(maxsize=1)
def fanbeam_physics_available() -> bool:
    """True when eqmar's fan-beam projector (ASTRA) can be imported in this environment."""
    try:
        importlib.import_module("astra")
        importlib.import_module("eqmar.ct.projector")
    except Exception:  # ImportError, but also a broken binary raising OSError/RuntimeError at import
        return False
    return True


class PortableMARInference(MARInference):
    """:class:`~eqmar.apps.mar.inference.MARInference` with a choice of LI projector.

    Args:
        model_path: model file written by :func:`~eqmar.apps.mar.model_file.save_mar_model`.
        device: see :class:`~eqmar.apps.mar.inference.MARInference`.
        metal_threshold_hu: HU above which a pixel is metal.
        preserve_detail: see :class:`~eqmar.apps.mar.inference.MARInference`.
        trace_model: ``"interpolating"`` or ``"line"`` (see :func:`~eqmar.apps.mar.inference.metal_trace_of`).
        network: use this network instead of the file's (the file still defines the geometry).
        li_projector: ``"fanbeam"``: eqmar's fan-beam physics in the model's geometry (needs
            ASTRA); ``"parallel"``: :class:`ParallelBeamProjector` on the model's working grid;
            ``"auto"`` (default): fan beam when importable, else parallel beam.

    Raises:
        ValueError: unknown ``li_projector`` or ``trace_model``.
        ImportError: ``li_projector="fanbeam"`` where ASTRA cannot be imported.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device = "auto",
        metal_threshold_hu: float = DEFAULT_METAL_THRESHOLD_HU,
        preserve_detail: bool = True,
        trace_model: str | None = None,
        network: nn.Module | None = None,
        li_projector: str = "auto",
    ) -> None:
        if li_projector not in LI_PROJECTORS:
            raise ValueError(
                f"PortableMARInference: li_projector must be one of {LI_PROJECTORS}, got {li_projector!r}."
            )
        if li_projector == "fanbeam" and not fanbeam_physics_available():
            raise ImportError(
                "PortableMARInference: li_projector='fanbeam' needs eqmar's simulation stack (astra-toolbox), "
                "which cannot be imported here; use li_projector='parallel' or 'auto'."
            )
        super().__init__(
            model_path,
            device=device,
            metal_threshold_hu=metal_threshold_hu,
            preserve_detail=preserve_detail,
            trace_model=trace_model,
            network=network,
        )
        if li_projector == "auto":
            li_projector = "fanbeam" if fanbeam_physics_available() else "parallel"
        self.li_projector = li_projector

    def projector(self) -> Any:
        """The cached LI projector: eqmar's fan-beam :class:`~eqmar.ct.projector.Projector` or the
        parallel-beam fallback.
        """
        if self.li_projector == "fanbeam":
            return super().projector()
        key = ("parallel", self.image_size)
        if key not in self._projectors:
            self._projectors[key] = ParallelBeamProjector(self.image_size, device=self.device)
        return self._projectors[key]

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, li_projector={self.li_projector!r})"


def _as_4x4(affine: Any) -> np.ndarray:
    """A (4, 4) affine from a 3-D (4x4) or 2-D (3x3) one; identity when absent."""
    if affine is None:
        return np.eye(4)
    array = np.asarray(affine, dtype=np.float64)
    if array.shape == (4, 4):
        return array
    if array.shape == (3, 3):  # 2-D image: keep x and y, add a unit z axis
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = array[:2, :2], array[:2, 2]
        return full
    raise ValueError(f"MARVolumeInferer: expected a (4, 4) or (3, 3) affine, got shape {array.shape}.")


class MARVolumeInferer(Inferer):
    """MONAI inferer that corrects metal artifacts in HU volumes, slice by slice.

    ``inferer(inputs, network)`` takes ``inputs`` of shape ``(B, 1, X, Y, Z)`` or ``(B, 1, X, Y)``
    in HU, voxel axes as read by MONAI's readers with a RAS affine in the
    :class:`~monai.data.MetaTensor` (a plain tensor counts as having the identity affine), and
    returns a float32 tensor of the same shape and metadata with the corrected HU. Axial slices
    are taken in display orientation (:func:`eqmar.apps.mar.writers.nifti_to_axial`), the
    orientation the networks were trained in, and corrected by :class:`PortableMARInference`
    with ``network`` (which must be the network of ``model_path``'s architecture, in any state
    of training; its device is used). Slices without metal are returned unchanged.

    Args:
        model_path: model file; its meta gives the working size and the LI geometry.
        metal_threshold_hu: HU above which a pixel is metal (default 2500).
        trace_model: ``"interpolating"`` or ``"line"`` (faster on CPU); ``None``: the model's
            (see :class:`~eqmar.apps.mar.inference.MARInference`).
        li_projector: ``"auto"``, ``"fanbeam"`` or ``"parallel"`` (see :class:`PortableMARInference`).
        preserve_detail: add the resampled correction to the input (see
            :class:`~eqmar.apps.mar.inference.MARInference`).

    Attributes:
        last_infos: per input volume of the last call, the per-slice ``info`` dicts of
            :meth:`~eqmar.apps.mar.inference.MARInference.correct_volume`.
        last_li_projector: the LI projector of the last call (``"fanbeam"`` or ``"parallel"``).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        metal_threshold_hu: float = DEFAULT_METAL_THRESHOLD_HU,
        trace_model: str | None = None,
        li_projector: str = "auto",
        preserve_detail: bool = True,
    ) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        self.metal_threshold_hu = float(metal_threshold_hu)
        self.trace_model = trace_model
        self.li_projector = li_projector
        self.preserve_detail = bool(preserve_detail)
        self.last_infos: list[list[dict[str, Any]]] = []
        self.last_li_projector: str | None = None
        self._engine: PortableMARInference | None = None

    def engine(self, network: nn.Module) -> PortableMARInference:
        """The correction engine for ``network`` (built once, network swapped in when it changes)."""
        device = next((p.device for p in network.parameters()), torch.device("cpu"))
        if self._engine is None or self._engine.device != device:
            if self._engine is not None:
                self._engine.close()
            self._engine = PortableMARInference(
                self.model_path,
                device=device,
                metal_threshold_hu=self.metal_threshold_hu,
                preserve_detail=self.preserve_detail,
                trace_model=self.trace_model,
                network=network,
                li_projector=self.li_projector,
            )
        self._engine.network = network.eval()
        return self._engine

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Correct every volume of the batch; see the class docstring."""
        import warnings

        from eqmar.apps.mar.writers import axial_to_nifti, nifti_to_axial

        if not isinstance(network, nn.Module):
            raise TypeError(f"MARVolumeInferer: network must be a torch.nn.Module, got {type(network).__name__}.")
        if inputs.ndim not in (4, 5) or inputs.shape[1] != 1:
            raise ValueError(
                f"MARVolumeInferer: expected a (B, 1, X, Y[, Z]) HU batch, got shape {tuple(inputs.shape)}."
            )
        engine = self.engine(network)
        affines = getattr(inputs, "affine", None)
        batch_affine = affines is not None and affines.ndim == 3
        data = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        output = inputs.detach().clone().to(torch.float32)
        target = output.as_tensor() if hasattr(output, "as_tensor") else output
        self.last_infos = []
        self.last_li_projector = engine.li_projector
        for b in range(inputs.shape[0]):
            affine = _as_4x4(None if affines is None else (affines[b] if batch_affine else affines).cpu().numpy())
            volume = data[b, 0].detach().cpu().numpy().astype(np.float32)
            flat = volume.ndim == 2
            if flat:
                volume = volume[..., None]
            axial = nifti_to_axial(volume, affine)
            with warnings.catch_warnings():
                # slices without metal are the normal case in a volume; the count is logged below
                warnings.simplefilter("ignore", UserWarning)
                corrected, infos = engine.correct_volume(axial)
            back = axial_to_nifti(corrected, affine)
            target[b, 0] = torch.from_numpy(back[..., 0] if flat else back).to(target.device)
            self.last_infos.append(infos)
            with_metal = sum(info["metal_pixels"] > 0 for info in infos)
            logger.info(
                "MAR: %d of %d slice(s) with metal (> %g HU), %d metal pixels, LI by %s projector",
                with_metal, len(infos), self.metal_threshold_hu, sum(i["metal_pixels"] for i in infos),
                engine.li_projector,
            )
        return output
