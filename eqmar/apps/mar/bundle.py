"""Pieces of MAR inference and training that the MONAI bundle and the MONAI Label app share.

Both deployments read CT volumes in HU with MONAI readers, so what they need from eqmar is:

- :class:`MARVolumeInferer`: a MONAI :class:`~monai.inferers.Inferer` that takes a ``(B, 1, ...)``
  HU volume (a :class:`~monai.data.MetaTensor` whose affine gives the orientation) and a MAR
  network, and returns the corrected HU volume with the same shape and metadata. It runs
  :class:`~eqmar.apps.mar.inference.MARInference` slice by slice in display orientation (metal
  mask by HU threshold, image-domain LI, network, correction added back, metal restored).
- :class:`PortableMARInference`: :class:`~eqmar.apps.mar.inference.MARInference` that also works
  where the simulation stack (ASTRA/ODL) is not installed, as in the MONAI Label environment whose
  numpy < 2 pin excludes ODL. The LI input is then computed by :class:`ParallelBeamProjector`, a
  small PyTorch parallel-beam projector: the slice is re-projected, the sinogram is linearly
  interpolated across the metal trace (:func:`eqmar.ct.metal.interpolate_trace`) and
  reconstructed by filtered back-projection. It is the same image-domain LI as with eqmar's
  physics except for the ray geometry (parallel instead of the model's fan beam), so the LI image
  is close to, but not identical with, the one the network was trained on.
- :func:`load_mar_weights` and :class:`MARModelSaver`: strict loading of a model file into a
  network built from a bundle's ``network_def``, and writing the self-describing model file
  (:mod:`eqmar.apps.mar.model_file`) at the end of bundle or MONAI Label training.
- :func:`bundle_datalist`: the inference data list of a bundle run from one input path.

Nothing here imports ASTRA or ODL at module level.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from eqmar.apps.mar.inference import DEFAULT_METAL_THRESHOLD_HU, MARInference

__all__ = [
    "LI_PROJECTORS",
    "MARModelSaver",
    "MARVolumeInferer",
    "ExitOnInputError",
    "ParallelBeamProjector",
    "PortableMARInference",
    "bundle_datalist",
    "fanbeam_physics_available",
    "load_mar_weights",
    "masked_pred_label",
]

logger = logging.getLogger("eqmar.mar.bundle")

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
        self.num_views = int(num_views) if num_views is not None else max(int(math.ceil(math.pi / 2 * self.image_size)), 8)
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
            raise ValueError(f"PortableMARInference: li_projector must be one of {LI_PROJECTORS}, got {li_projector!r}.")
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
        """The cached LI projector: eqmar's fan-beam :class:`~eqmar.ct.projector.Projector` or the parallel-beam fallback."""
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
                with_metal, len(infos), self.metal_threshold_hu, sum(i["metal_pixels"] for i in infos), engine.li_projector,
            )
        return output


def load_mar_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights of a MAR model file into ``network`` strictly and return it.

    Accepts the self-describing files of :func:`~eqmar.apps.mar.model_file.save_mar_model`, the
    training checkpoints of :func:`eqmar.engines.build_trainer` (the network under ``"network"``),
    ``{"model": state_dict}`` checkpoints (MONAI's ``CheckpointSaver`` with that key) and plain
    state dicts. ``network`` supplies the architecture that a checkpoint does not describe.

    Raises:
        FileNotFoundError: missing file (with how to make one).
        ValueError: a folder or an empty file, a file that holds no state dict, or weights that do not
            fit ``network`` (naming the missing, unexpected and reshaped keys).
    """
    from eqmar.apps.mar.model_file import (
        MODEL_FORMAT, checkpoint_network_weights, describe_weight_mismatch, is_state_dict, read_model_payload,
    )

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"MAR model file not found: {path}. Train one with recipes/mar_deeplesion.py (see the bundle's "
            "docs/README.md) or the bundle's configs/train.yaml."
        )
    payload = read_model_payload(path)
    if isinstance(payload, Mapping) and payload.get("format") == MODEL_FORMAT:
        state = payload["state_dict"]
    elif (trained := checkpoint_network_weights(payload)) is not None:
        state = trained
    elif isinstance(payload, Mapping) and isinstance(payload.get("model"), Mapping):
        state = payload["model"]
    elif is_state_dict(payload):
        state = payload
    else:
        raise ValueError(f"{path}: holds no MAR network weights (expected an eqmar model file or a state dict).")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: weights do not match the bundle's network_def ({type(network).__name__}): "
            f"{describe_weight_mismatch(network, state)} (check network_spec against the model file)"
        ) from error
    return network


class MARModelSaver:
    """Ignite handler writing an eqmar MAR model file when training completes.

    The file (:func:`~eqmar.apps.mar.model_file.save_mar_model`) carries the network spec and the
    geometry meta that :class:`MARVolumeInferer` and ``python -m eqmar.infer`` need.

    Args:
        path: output model file.
        network: the trained network (a DDP wrapper is unwrapped).
        spec: the network's :func:`~eqmar.apps.mar.model_file.network_spec`; checked on save by
            rebuilding the network from it and loading the weights strictly.
        geometry_tag: geometry of the training data (e.g. ``"640geo"`` or ``"640geo_128px160v"``).
        image_size: working image size; default from ``geometry_tag``.
        meta: more meta entries (e.g. EQ-Reg group and weight).
        epoch_level: also save after every epoch.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        network: nn.Module,
        spec: Mapping[str, Any],
        geometry_tag: str,
        image_size: int | None = None,
        meta: Mapping[str, Any] | None = None,
        epoch_level: bool = False,
    ) -> None:
        self.path = Path(path)
        self.network = network
        self.spec = {"backbone": spec["backbone"], "kwargs": dict(spec.get("kwargs", {}))}
        self.meta: dict[str, Any] = {"geometry_tag": str(geometry_tag), **dict(meta or {})}
        if image_size is not None:
            self.meta["image_size"] = int(image_size)
        self.epoch_level = bool(epoch_level)
        self._saved_at: int | None = None

    def attach(self, engine: Any) -> None:
        """Save at ``COMPLETED`` (and ``EPOCH_COMPLETED`` when ``epoch_level``)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any = None) -> Path:
        from eqmar.apps.mar.model_file import build_from_spec, save_mar_model
        from eqmar.equivariance import unwrap_network

        iteration = None if engine is None else int(engine.state.iteration)
        if iteration is not None and iteration == self._saved_at:  # the last epoch's file is the final one
            return self.path
        network = unwrap_network(self.network)
        try:
            build_from_spec(self.spec).load_state_dict(network.state_dict(), strict=True)
        except RuntimeError as error:
            raise ValueError(f"MARModelSaver: the network does not match spec {self.spec}: {str(error).splitlines()[0]}") from error
        meta = dict(self.meta)
        if iteration is not None:
            meta["iterations"] = iteration
        path = save_mar_model(self.path, network, self.spec, meta)
        self._saved_at = iteration
        logger.info("MAR model written to %s", path)
        return path


def masked_pred_label(output: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(predictions, targets)`` outside metal from a (decollated) MAR trainer output.

    For metrics during training: the prediction is the final image (``pred[0]`` of a decollated
    training-mode :class:`~eqmar.networks.blocks.MAROutput`, or ``pred`` itself) and the target
    the ground truth, both multiplied by the non-metal mask (label channel 1).
    """
    items = output if isinstance(output, (list, tuple)) else [output]
    preds, targets = [], []
    for item in items:
        pred = item["pred"]
        image = pred if isinstance(pred, torch.Tensor) else pred[0]
        label = item["label"]
        mask = label[1:2]
        preds.append(image * mask)
        targets.append(label[0:1] * mask)
    return preds, targets


class ExitOnInputError:
    """Ignite handler: let a run that a bad input ended with ``SystemExit`` exit at once.

    :class:`~eqmar.data.ct_input.LoadCTd` (``exit_on_error=True``) prints the one-line reason and
    raises ``SystemExit(2)``; attached before MONAI's ``StatsHandler`` this handler re-raises it, so
    that the stats handler does not log it again with a traceback.
    """

    def attach(self, engine: Any) -> None:
        """Register on ``Events.EXCEPTION_RAISED`` (call before the other handlers are attached)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EXCEPTION_RAISED, self)

    def __call__(self, engine: Any, error: BaseException) -> None:
        if isinstance(error, SystemExit):
            raise error


def bundle_datalist(
    source: str | os.PathLike | Sequence[str | os.PathLike], key: str = "image", exit_on_error: bool = False
) -> list[dict[str, str]]:
    """Inference data list of a bundle run: ``[{key: path}, ...]``.

    Args:
        source: a NIfTI file, a DICOM file, a DICOM series folder, a folder of NIfTI files (each
            one volume), or a list of these.
        key: data key of the image.
        exit_on_error: print ``error: <message>`` on one line to stderr and exit with status 2
            instead of raising (for ``monai.bundle run``, which would bury the message in the
            tracebacks of its config evaluation).

    Raises:
        ValueError: no input given, or a folder holding neither DICOM nor NIfTI files.
        FileNotFoundError: a missing path.
    """
    try:
        return _datalist(source, key)
    except (ValueError, FileNotFoundError) as error:
        if not exit_on_error:
            raise
        from eqmar.data.ct_input import exit_on_input_error

        exit_on_input_error(error)


def _datalist(source: str | os.PathLike | Sequence[str | os.PathLike], key: str) -> list[dict[str, str]]:
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources or any(not str(s).strip() for s in sources):
        raise ValueError(
            "no input: pass --input with a NIfTI file, a DICOM file, a DICOM series folder or a folder of NIfTI files."
        )
    items: list[dict[str, str]] = []
    for entry in sources:
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.is_dir():
            from eqmar.data.ct_input import NIFTI_SUFFIXES, holds_dicom

            if holds_dicom(path):
                items.append({key: str(path)})  # one series
                continue
            volumes = sorted(f for f in path.iterdir() if f.is_file() and f.name.lower().endswith(NIFTI_SUFFIXES))
            if not volumes:
                raise ValueError(f"{path}: folder holds neither DICOM nor NIfTI (.nii, .nii.gz) files.")
            items.extend({key: str(f)} for f in volumes)
        else:
            items.append({key: str(path)})
    return items
