"""Digit images for the rotated-classification experiment: scikit-learn's digits or an image folder.

Every image is placed on a square canvas the way MNIST places its digits (a ``digit_size`` box in the
middle of an ``image_size`` canvas, zero background), so that rotating it by any angle about the
centre loses (almost) nothing at the corners. Intensities are scaled to [0, 1].

- :func:`load_digits_images`: scikit-learn's bundled 8×8 digits (1797 images, 10 classes; no
  download), upsampled bilinearly.
- :func:`load_image_folder`: a folder with one sub-folder of images per class (``root/<class>/*.png``),
  or with ``train/`` and ``test/`` folders of that layout. Background must be dark (rotations pad with
  zeros).
- :func:`split_indices`: deterministic stratified splits, independent of the training seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqmar.utils import require_extra

require_extra(__name__, "sklearn")

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageSet",
    "ClassificationData",
    "default_digit_size",
    "canvas_transform",
    "load_digits_images",
    "load_image_folder",
    "split_indices",
    "load_classification_data",
    "make_loader",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class ImageSet:
    """Images ``(N, 1, S, S)`` float32 in [0, 1] and integer labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(self.images[index], self.labels[index])


@dataclass
class ClassificationData:
    """The training images, the evaluation images and the class names.

    Attributes:
        train: training images (upright).
        evaluation: the held-out images that are scored (test split, or validation split).
        split: "test" or "val": which held-out split ``evaluation`` is.
        class_names: class names in label order.
    """

    train: ImageSet
    evaluation: ImageSet
    split: str
    class_names: list[str]


def default_digit_size(image_size: int) -> int:
    """The MNIST proportion (a 20-pixel box on a 28-pixel canvas), rounded to an even size."""
    return max(2, 2 * round(image_size * 10 / 28))


def canvas_transform(image_size: int, digit_size: int | None = None, max_value: float | None = None) -> Any:
    """MONAI transform: resize a channel-first image to fit a ``digit_size`` box, pad to ``image_size``.

    Args:
        image_size: side of the square output canvas.
        digit_size: side of the box the image is resized into (default :func:`default_digit_size`).
        max_value: intensity mapped to 1 (e.g. 16 for scikit-learn's digits); None scales each image's
            own range to [0, 1].
    """
    from monai.transforms import Compose, EnsureType, Resize, ScaleIntensity, ScaleIntensityRange, SpatialPad

    digit_size = digit_size or default_digit_size(image_size)
    if not 0 < digit_size <= image_size:
        raise ValueError(f"digit_size must be in [1, image_size={image_size}], got {digit_size}.")
    scale = (
        ScaleIntensity(minv=0.0, maxv=1.0) if max_value is None
        else ScaleIntensityRange(a_min=0.0, a_max=max_value, b_min=0.0, b_max=1.0, clip=True)
    )
    return Compose([
        # "longest" keeps the aspect ratio of non-square folder images; the digits are square anyway.
        Resize(spatial_size=digit_size, size_mode="longest", mode="bilinear"),
        SpatialPad(spatial_size=(image_size, image_size)),
        scale,
        EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False),
    ])


def load_digits_images(image_size: int = 28, digit_size: int | None = None) -> tuple[ImageSet, list[str]]:
    """scikit-learn's 8×8 digits on an ``image_size`` canvas (bundled with scikit-learn: no download).

    Returns:
        The 1797 images ``(1797, 1, S, S)`` with labels 0–9, and the class names "0".."9".
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    stacked = torch.as_tensor(digits.images, dtype=torch.float32)  # (N, 8, 8): values 0..16
    # One call for all images: the transform sees the N images as the channels of one image.
    images = canvas_transform(image_size, digit_size, max_value=16.0)(stacked).unsqueeze(1)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return ImageSet(images.contiguous(), labels), [str(c) for c in digits.target_names]


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FileNotFoundError(f"{root}: no class sub-folders (expected {root}/<class>/<image>.png).")
    return folders


def _read_folder_set(root: Path, class_names: Sequence[str], transform: Any) -> ImageSet:
    from monai.data import PILReader
    from monai.transforms import LoadImage

    # reverse_indexing=False keeps PIL images (H, W); the converter makes every image grey.
    loader = LoadImage(
        reader=PILReader(reverse_indexing=False, converter=lambda image: image.convert("L")),
        image_only=True, ensure_channel_first=True,
    )
    images, labels = [], []
    for label, name in enumerate(class_names):
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}).")
        for path in files:
            images.append(transform(loader(str(path))))
            labels.append(label)
    return ImageSet(torch.stack(images), torch.as_tensor(labels, dtype=torch.int64))


def load_image_folder(
    root: str | Path, image_size: int = 28, digit_size: int | None = None
) -> tuple[ImageSet, ImageSet | None, list[str]]:
    """Read a class-per-folder image data set.

    Layouts: ``root/<class>/*.png`` (one pool, split later by :func:`split_indices`), or
    ``root/train/<class>/*`` and ``root/test/<class>/*`` (the given split is used). Images are read as
    grey, resized into the ``digit_size`` box (aspect kept), zero-padded to ``image_size`` and scaled
    to [0, 1] per image.

    Returns:
        ``(train_or_pool, test_or_None, class_names)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root} is not a folder.")
    transform = canvas_transform(image_size, digit_size)
    if (root / "train").is_dir() and (root / "test").is_dir():
        class_names = [p.name for p in _class_folders(root / "train")]
        return (
            _read_folder_set(root / "train", class_names, transform),
            _read_folder_set(root / "test", class_names, transform),
            class_names,
        )
    class_names = [p.name for p in _class_folders(root)]
    return _read_folder_set(root, class_names, transform), None, class_names


def split_indices(labels: torch.Tensor | np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of ``range(len(labels))`` into ``(kept, held_out)``, ``fraction`` held out.

    Deterministic for a given ``seed`` (the data seed, not the training seed, so every training seed
    sees the same split).
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}.")
    y = np.asarray(labels)
    kept, held_out = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
    return np.sort(kept), np.sort(held_out)


def load_classification_data(
    data: str | Path | None = None,
    image_size: int = 28,
    digit_size: int | None = None,
    test_fraction: float = 0.25,
    val_fraction: float = 0.2,
    evaluate_on: str = "test",
    seed: int = 0,
    max_train: int | None = None,
    max_eval: int | None = None,
) -> ClassificationData:
    """Load, split and (optionally) subsample the data of the experiment.

    Args:
        data: image-folder root, or None for scikit-learn's digits.
        image_size: canvas side (even, so 2×2 pooling windows map onto each other under rot90).
        digit_size: side of the box the digit is resized into.
        test_fraction: test share when the data has no given test split.
        val_fraction: validation share of the training split, used when ``evaluate_on == "val"``.
        evaluate_on: "test", or "val" to score a validation split carved from the training split
            (for choosing settings without looking at the test set; the test images are not used).
        seed: seed of the splits.
        max_train: keep only the first N training images (quick runs and tests).
        max_eval: keep only the first N evaluation images.
    """
    if evaluate_on not in ("test", "val"):
        raise ValueError(f"evaluate_on must be 'test' or 'val', got {evaluate_on!r}.")
    if data is None:
        pool, class_names = load_digits_images(image_size, digit_size)
        test = None
    else:
        pool, test, class_names = load_image_folder(data, image_size, digit_size)
    if test is None:
        kept, held_out = split_indices(pool.labels, test_fraction, seed)
        pool, test = pool.subset(kept), pool.subset(held_out)
    train, evaluation = pool, test
    if evaluate_on == "val":
        kept, held_out = split_indices(pool.labels, val_fraction, seed)
        train, evaluation = pool.subset(kept), pool.subset(held_out)
    if max_train is not None:
        train = train.subset(np.arange(min(max_train, len(train))))
    if max_eval is not None:
        evaluation = evaluation.subset(np.arange(min(max_eval, len(evaluation))))
    return ClassificationData(train, evaluation, evaluate_on, class_names)


def make_loader(
    images: ImageSet, batch_size: int, shuffle: bool = False, drop_last: bool = False, num_workers: int = 0
) -> Any:
    """A MONAI ``DataLoader`` of ``{"image": (1, S, S), "label": int}`` dicts.

    Training loaders drop the last incomplete batch: a batch of a few images gives BatchNorm noisy
    statistics.
    """
    from monai.data import DataLoader, Dataset

    items = [{"image": image, "label": int(label)} for image, label in zip(images.images, images.labels, strict=False)]
    return DataLoader(
        Dataset(items), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers
    )
