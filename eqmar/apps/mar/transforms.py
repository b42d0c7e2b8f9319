"""Assemble network inputs and targets from SynDeepLesion samples.

Every MAR backbone in :mod:`eqmar.networks` takes one tensor ``(3, H, W)`` = [ma_CT, LI_CT,
non-metal mask] in µ (1/cm) and the MAR loss takes the target ``(2, H, W)`` = [ground truth,
non-metal mask]. Keeping the mask inside both tensors lets MONAI's engines, inferers and bundles
work with plain ``image``/``label`` pairs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["MARInputs", "MARInputsd"]


def _as_channel_first(value: Any, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim != 3 or tensor.shape[0] != 1:
        raise ValueError(f"MARInputs: {name} must be (H, W) or (1, H, W), got shape {tuple(tensor.shape)}.")
    return tensor


class MARInputs(Transform):
    """``(ma_CT, LI_CT, metal_mask) -> (3, H, W)`` network input ``[ma_CT, LI_CT, 1 - metal_mask]``."""

    def __call__(self, ma_ct: Any, li_ct: Any, metal_mask: Any) -> torch.Tensor:
        ma = _as_channel_first(ma_ct, "ma_CT")
        li = _as_channel_first(li_ct, "LI_CT")
        mask = _as_channel_first(metal_mask, "metal mask")
        if not ma.shape == li.shape == mask.shape:
            raise ValueError(
                f"MARInputs: ma_CT {tuple(ma.shape)}, LI_CT {tuple(li.shape)} and mask {tuple(mask.shape)} "
                "differ in shape."
            )
        return torch.cat([ma, li, 1.0 - (mask > 0.5).float()], dim=0)


class MARInputsd(MapTransform):
    """Dictionary version: adds ``image`` (network input) and ``label`` ([gt, non-metal mask]).

    Args:
        keys: the ``(ma_CT, LI_CT, metal mask)`` keys, in this order.
        gt_key: ground-truth key; when absent from a sample (inference) no label is made.
        image_key: output key of the network input.
        label_key: output key of the target.
        allow_missing_keys: skip samples without the input keys.
    """

    def __init__(
        self,
        keys: KeysCollection = ("ma_CT", "LI_CT", "mask"),
        gt_key: str = "gt",
        image_key: str = "image",
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 3:
            raise ValueError(f"MARInputsd: keys must name (ma_CT, LI_CT, metal mask), got {self.keys}.")
        self.gt_key = gt_key
        self.image_key = image_key
        self.label_key = label_key
        self.inputs = MARInputs()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        missing = [k for k in self.keys if k not in d]
        if missing:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"MARInputsd: sample lacks {missing}; available keys: {sorted(map(str, d))}.")
        ma_key, li_key, mask_key = self.keys
        d[self.image_key] = self.inputs(d[ma_key], d[li_key], d[mask_key])
        if self.gt_key in d:
            gt = _as_channel_first(d[self.gt_key], self.gt_key)
            d[self.label_key] = torch.cat([gt, d[self.image_key][2:3]], dim=0)
        return d
