"""Training samples for the MONAI Label MAR trainer: one axial slice pair per volume pair.

MONAI Label's local datastore pairs an image with its final label. For MAR training the image is
the metal-affected CT volume and the label the artifact-free reference volume of the same scan
(same grid, HU), e.g. a simulated pair. :class:`RandMARSliced` draws one axial slice with metal
and builds what the MAR networks were trained on, at the model's working size: ``ma_CT``,
``LI_CT`` and ``gt`` in µ and the metal ``mask``, with the metal mask and LI made exactly as at
inference (HU threshold; LI by :class:`eqmar.apps.mar.inferer.PortableMARInference`'s projector).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from eqmar.apps.mar.inference import AIR_HU, DEFAULT_METAL_THRESHOLD_HU, image_domain_li, pad_to_square
from eqmar.apps.mar.inferer import PortableMARInference

__all__ = ["RandMARSliced"]


class RandMARSliced(RandomizableTransform, MapTransform):
    """``{image: metal-affected HU volume, label: clean HU volume}`` -> one MAR training slice.

    Adds ``ma_CT``, ``LI_CT``, ``gt`` (µ) and ``mask`` (metal), each ``(1, S, S)`` float32 at the
    model's working size ``S``, ready for :class:`eqmar.apps.mar.transforms.MARInputsd`.

    Args:
        keys: ``(metal-affected image key, clean reference key)``; channel-first ``(1, X, Y, Z)``
            volumes on the same grid, with the image's affine giving the orientation.
        model_path: the eqmar model file whose working size and geometry are used.
        metal_threshold_hu: HU above which a pixel is metal.
        li_projector: ``"auto"``, ``"fanbeam"`` or ``"parallel"``.
        trace_model: ``"line"`` or ``"interpolating"``.

    Raises:
        ValueError: volumes of different shapes, or not 3-D.
    """

    def __init__(
        self,
        keys: KeysCollection,
        model_path: str,
        metal_threshold_hu: float = DEFAULT_METAL_THRESHOLD_HU,
        li_projector: str = "auto",
        trace_model: str = "line",
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if len(self.keys) != 2:
            raise ValueError(f"RandMARSliced: keys must name (metal-affected image, clean reference), got {self.keys}.")
        self.model_path = str(model_path)
        self.metal_threshold_hu = float(metal_threshold_hu)
        self.li_projector = li_projector
        self.trace_model = trace_model
        self._engine: PortableMARInference | None = None

    def engine(self) -> PortableMARInference:
        """Working grid and LI projector of the model (built once)."""
        if self._engine is None:
            self._engine = PortableMARInference(
                self.model_path, device="cpu", metal_threshold_hu=self.metal_threshold_hu,
                trace_model=self.trace_model, li_projector=self.li_projector,
            )
        return self._engine

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from eqmar.apps.mar.writers import nifti_to_axial
        from eqmar.ct.physics import hu_to_mu, prepare_hu, resize_square
        from eqmar.data.masks import resize_mask

        d = dict(data)
        image_key, label_key = self.keys
        image, label = d[image_key], d[label_key]
        if tuple(image.shape) != tuple(label.shape) or image.ndim != 4:
            raise ValueError(
                f"RandMARSliced: image {tuple(image.shape)} and label {tuple(label.shape)} must be (1, X, Y, Z) "
                "volumes on the same grid."
            )
        affine = np.asarray(getattr(image, "affine", np.eye(4)), dtype=np.float64)
        ma = nifti_to_axial(np.asarray(image[0], dtype=np.float32), affine)
        clean = nifti_to_axial(np.asarray(label[0], dtype=np.float32), affine)
        with_metal = [k for k in range(ma.shape[0]) if (ma[k] > self.metal_threshold_hu).any()]
        self.randomize(None)
        k = int(self.R.choice(with_metal)) if with_metal else int(self.R.randint(ma.shape[0]))

        engine = self.engine()
        size = engine.image_size
        (ma_square, _), (clean_square, _) = pad_to_square(ma[k], AIR_HU), pad_to_square(clean[k], AIR_HU)
        metal = engine.metal_mask(ma_square)
        mask = resize_mask(metal.astype(np.uint8), size).astype(bool)
        if metal.any() and not mask.any():  # metal below half a working pixel: keep every touched pixel
            mask = resize_square(metal.astype(np.float32), size, "mask") > 0
        ma_mu = hu_to_mu(prepare_hu(ma_square, size))
        li_mu = image_domain_li(ma_mu, mask, engine.projector(), self.trace_model) if mask.any() else ma_mu
        for key, value in (("ma_CT", ma_mu), ("LI_CT", li_mu), ("gt", hu_to_mu(prepare_hu(clean_square, size))),
                           ("mask", mask)):
            d[key] = torch.as_tensor(np.asarray(value, dtype=np.float32))[None]
        return d
