"""Torch datasets over a SynDeepLesion-style root, yielding MONAI dictionary samples.

Each sample is one (image, metal mask) pair::

    {"ma_CT", "LI_CT", "gt", "mask": (1, H, W) float32 tensors,
     "ma_sinogram", "LI_sinogram", "metal_trace": (1, V, B) float32 tensors (with_sinograms=True),
     "mask_index": int (k of k.h5; for the test split the test-mask index the metric groups by),
     "image_id": "000376_16_02/299"}

The samples work with :class:`monai.data.DataLoader` and any MONAI dictionary transform given
as ``transform``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import apply_transform
from torch.utils.data import Dataset

from eqmar.data.syndeeplesion import DEFAULT_GEOMETRY, SynDeepLesionLayout, read_clean, read_pair

__all__ = ["SynDeepLesionDataset", "SynDeepLesionTestDataset", "SynDeepLesionTrainDataset"]

_IMAGE_KEYS = ("ma_CT", "LI_CT")
_SINOGRAM_KEYS = ("ma_sinogram", "LI_sinogram", "metal_trace")


class SynDeepLesionDataset(Dataset):
    """All (listed image, mask index) pairs of one split of a SynDeepLesion root.

    Sample ``i`` is image ``i // len(mask_indices)`` with mask ``mask_indices[i % len(mask_indices)]``.

    Args:
        root: data root with ``<split>_<geometry>_dir.txt``, ``<split>_<geometry>/`` and
            ``<split>mask.npy``.
        split: ``"train"`` or ``"test"``.
        mask_indices: which ``k.h5`` files to pair with every image.
        transform: optional callable (e.g. MONAI ``Compose`` of dict transforms) applied to each sample.
        with_sinograms: also load ``ma_sinogram``, ``LI_sinogram`` and ``metal_trace``.
        geometry: geometry tag of the folder and list-file names.
        masks: optional (H0, W0, N) 0/1 mask stack to use instead of ``<split>mask.npy``.

    Raises:
        FileNotFoundError: the root lacks the list file or the mask file.
        ValueError: a mask index outside the mask stack, or an empty list file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        mask_indices: Iterable[int],
        transform: Callable | None = None,
        with_sinograms: bool = False,
        geometry: str = DEFAULT_GEOMETRY,
        masks: np.ndarray | None = None,
    ) -> None:
        from eqmar.data.masks import load_masks

        self.layout = SynDeepLesionLayout(root, split, geometry)
        self.image_ids: list[str] = self.layout.read_list()
        if not self.image_ids:
            raise ValueError(f"{self.layout.list_file} lists no images.")
        mask_source = "the given mask stack" if masks is not None else str(self.layout.mask_file)
        if masks is None:
            if not self.layout.mask_file.is_file():
                raise FileNotFoundError(
                    f"metal mask file not found: {self.layout.mask_file} (expected (512, 512, N) uint8; "
                    "see eqmar.data.masks.generate_mask_set to make one)."
                )
            masks = load_masks(self.layout.mask_file)
        self.masks = np.asarray(masks)
        if self.masks.ndim != 3:
            raise ValueError(f"masks from {mask_source} must be (H, W, N), got shape {self.masks.shape}.")
        self.mask_indices: tuple[int, ...] = tuple(int(k) for k in mask_indices)
        if not self.mask_indices:
            raise ValueError("mask_indices is empty.")
        out_of_range = [k for k in self.mask_indices if not 0 <= k < self.masks.shape[-1]]
        if out_of_range:
            raise ValueError(
                f"mask_indices {out_of_range} outside the {self.masks.shape[-1]} masks of {mask_source}."
            )
        self.transform = transform
        self.with_sinograms = with_sinograms
        self._resized_masks: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.image_ids) * len(self.mask_indices)

    def pair(self, index: int) -> tuple[str, int]:
        """(image id, mask index) of sample ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples.")
        image, mask = divmod(index % len(self), len(self.mask_indices))
        return self.image_ids[image], self.mask_indices[mask]

    def metal_mask(self, mask_index: int, size: int) -> np.ndarray:
        """Mask ``mask_index`` resized to (size, size) by the protocol's rule; cached."""
        from eqmar.data.masks import resize_mask

        key = (mask_index, size)
        if key not in self._resized_masks:
            self._resized_masks[key] = resize_mask(self.masks[:, :, mask_index], size)
        return self._resized_masks[key]

    def inputs(self, image_id: str, mask_index: int, size: int) -> dict[str, np.ndarray]:
        """The network-side arrays of a pair: ``ma_CT``, ``LI_CT`` (and the sinograms) and the metal ``mask``.

        Subclasses that read another kind of input override this (e.g.
        :class:`eqmar.apps.mar.route.RouteInputsDataset`); ``size`` is the ground truth's side length.
        """
        keys = _IMAGE_KEYS + (_SINOGRAM_KEYS if self.with_sinograms else ())
        pair = read_pair(self.layout.pair_path(image_id, mask_index), keys=keys)
        return {**{k: pair[k] for k in keys}, "mask": self.metal_mask(mask_index, size)}

    def __getitem__(self, index: int) -> Any:
        image_id, mask_index = self.pair(index)
        gt = read_clean(self.layout.gt_path(image_id), keys=("image",))["image"]
        if gt.shape[0] != gt.shape[1]:
            raise ValueError(f"{self.layout.gt_path(image_id)}: image must be square, got {gt.shape}.")
        sample: dict[str, Any] = {
            k: _channel_first(v) for k, v in self.inputs(image_id, mask_index, gt.shape[0]).items()
        }
        sample["gt"] = _channel_first(gt)
        sample["mask_index"] = mask_index
        sample["image_id"] = image_id
        return apply_transform(self.transform, sample) if self.transform is not None else sample


def _channel_first(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)[None])


class SynDeepLesionTrainDataset(SynDeepLesionDataset):
    """Training pairs: every listed training image with every mask in ``mask_indices``.

    The OSCNet/DICDNet code trains on masks 0–79 and validates on 80–89, hence the default.
    See :class:`SynDeepLesionDataset` for the arguments and sample keys.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        mask_indices: Sequence[int] | range = range(80),
        transform: Callable | None = None,
        with_sinograms: bool = False,
        geometry: str = DEFAULT_GEOMETRY,
        masks: np.ndarray | None = None,
    ) -> None:
        super().__init__(root, "train", mask_indices, transform, with_sinograms, geometry, masks)


class SynDeepLesionTestDataset(SynDeepLesionDataset):
    """Test pairs: every listed test image with each of the 10 test masks (2,000 pairs for 200 images).

    ``mask_index`` of a sample is the test-mask index the SynDeepLesion metric groups by.
    See :class:`SynDeepLesionDataset` for the arguments and sample keys.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        mask_indices: Sequence[int] | range = range(10),
        transform: Callable | None = None,
        with_sinograms: bool = False,
        geometry: str = DEFAULT_GEOMETRY,
        masks: np.ndarray | None = None,
    ) -> None:
        super().__init__(root, "test", mask_indices, transform, with_sinograms, geometry, masks)
