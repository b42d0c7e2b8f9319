"""Natural images for restoration recipes: scikit-image's bundled photographs, or a folder of PNG/JPEG.

Items follow one convention shared by the inpainting and deraining recipes: a dict with
``"label"`` — the clean image, a float32 tensor ``(C, H, W)`` in [0, 1] — and ``"name"``; paired data
sets may also carry the degraded ``"image"``. A degradation transform (e.g.
:class:`~eqmar.apps.inpaint.RandPixelMaskd`) turns ``"label"`` into the network input ``"image"``,
so MONAI's ``default_prepare_batch`` reads ``(image, label)`` unchanged.

The embedded default uses only images shipped inside the scikit-image wheel (no download: ``pooch``
is never involved). The split is fixed by name, so it never depends on a seed:

- RGB: train on astronaut, rocket, motorcycle (left view of the stereo pair) and the Hubble deep
  field; test on chelsea (cat) and coffee.
- grey: the same photographs converted with ``skimage.color.rgb2gray`` (ITU-R BT.709 weights) plus
  the grey photographs camera, moon, brick, grass (train) and coins, gravel (test).

:func:`image_folder_split` reads a user folder: ``DIR/train`` and ``DIR/test`` when both exist,
otherwise every 5th file in sorted name order (the 5th, 10th, …) is a test image.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqmar.utils import require_extra

require_extra(__name__, "skimage", "PIL", extra="apps")

__all__ = [
    "NATURAL_IMAGES",
    "DEFAULT_SPLIT",
    "IMAGE_SUFFIXES",
    "load_natural_image",
    "read_image",
    "natural_image_split",
    "image_folder_split",
    "square_crop_size",
]

#: Bundled scikit-image photographs usable as clean images, with their native colour ("rgb"/"grey").
NATURAL_IMAGES: Mapping[str, str] = {
    "astronaut": "rgb",
    "rocket": "rgb",
    "motorcycle": "rgb",
    "hubble_deep_field": "rgb",
    "chelsea": "rgb",
    "coffee": "rgb",
    "camera": "grey",
    "moon": "grey",
    "brick": "grey",
    "grass": "grey",
    "coins": "grey",
    "gravel": "grey",
}

#: The fixed train/test split of the bundled images per colour mode.
DEFAULT_SPLIT: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "rgb": {
        "train": ("astronaut", "rocket", "motorcycle", "hubble_deep_field"),
        "test": ("chelsea", "coffee"),
    },
    "grey": {
        "train": ("astronaut", "rocket", "motorcycle", "hubble_deep_field", "camera", "moon", "brick", "grass"),
        "test": ("chelsea", "coffee", "coins", "gravel"),
    },
}

#: File name endings :func:`image_folder_split` accepts (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_COLORS = ("rgb", "grey")


def _check_color(color: str) -> str:
    if color not in _COLORS:
        raise ValueError(f"color must be one of {_COLORS}, got {color!r}.")
    return color


def _to_chw(array: np.ndarray, color: str) -> torch.Tensor:
    """(H, W[, 3|4]) uint8/float array → float32 (C, H, W) tensor in [0, 1] in the requested colour."""
    from skimage.color import gray2rgb, rgb2gray, rgba2rgb
    from skimage.util import img_as_float32

    image = img_as_float32(array)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image).astype(np.float32)
    if color == "grey" and image.ndim == 3:
        image = rgb2gray(image).astype(np.float32)
    elif color == "rgb" and image.ndim == 2:
        image = gray2rgb(image)
    chw = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(chw, dtype=np.float32)).clamp_(0.0, 1.0)


def load_natural_image(name: str, color: str = "rgb") -> torch.Tensor:
    """One bundled scikit-image photograph as a float32 ``(C, H, W)`` tensor in [0, 1].

    Args:
        name: a key of :data:`NATURAL_IMAGES`.
        color: "rgb" (3 channels; grey-only photographs are refused) or "grey" (1 channel).

    Raises:
        ValueError: for an unknown name, or a grey photograph requested in RGB.
    """
    import skimage.data

    _check_color(color)
    if name not in NATURAL_IMAGES:
        raise ValueError(f"unknown bundled image {name!r}; choose from {sorted(NATURAL_IMAGES)}.")
    if color == "rgb" and NATURAL_IMAGES[name] == "grey":
        raise ValueError(f"bundled image {name!r} is greyscale; use color='grey'.")
    array = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return _to_chw(array, color)


def read_image(path: str | Path, color: str = "rgb") -> torch.Tensor:
    """Read a PNG/JPEG/… file as a float32 ``(C, H, W)`` tensor in [0, 1].

    8- and 16-bit files are scaled by their type's maximum; RGBA is composited on white.

    Raises:
        ValueError: naming the file when it cannot be decoded as an image.
    """
    from PIL import Image, UnidentifiedImageError

    _check_color(color)
    path = Path(path)
    try:
        with Image.open(path) as handle:
            handle.load()
            mode = handle.mode
            array = np.asarray(handle.convert("RGBA") if mode in ("P", "LA", "PA") else handle)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
    if array.dtype == np.int32:  # Pillow's 16-bit greyscale ('I;16' is promoted to 'I')
        array = array.astype(np.uint16)
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise ValueError(f"cannot read image {path}: unexpected shape {array.shape}.")
    return _to_chw(array, color)


def _items(names: Sequence[str], load: Callable[[str], torch.Tensor]) -> list[dict[str, Any]]:
    return [{"label": load(name), "name": name} for name in names]


def natural_image_split(
    color: str = "rgb",
    train: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The bundled photographs as ``{"train": [...], "test": [...]}`` lists of ``{"label", "name"}`` dicts.

    Args:
        color: "rgb" or "grey".
        train: image names for training (default :data:`DEFAULT_SPLIT`).
        test: image names for testing (default :data:`DEFAULT_SPLIT`).

    Raises:
        ValueError: when a name is unknown or appears in both lists.
    """
    split = DEFAULT_SPLIT[_check_color(color)]
    train = tuple(train) if train is not None else split["train"]
    test = tuple(test) if test is not None else split["test"]
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise ValueError(f"images in both train and test: {overlap}.")
    return {
        "train": _items(train, lambda n: load_natural_image(n, color)),
        "test": _items(test, lambda n: load_natural_image(n, color)),
    }


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_folder_split(root: str | Path, color: str = "rgb", test_every: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Clean images from a folder, split into train and test, as :func:`natural_image_split` returns them.

    Split rule: ``root/train`` and ``root/test`` when both exist; otherwise the files directly in
    ``root`` in sorted name order, every ``test_every``-th of them (1-based: the 5th, 10th, … by
    default) held out for testing. Every image is read up front, so a bad file fails before training.

    Args:
        root: the folder.
        color: "rgb" or "grey".
        test_every: hold out every this-many-th file when there is no train/test sub-folder.

    Raises:
        FileNotFoundError: when ``root`` is not a folder or holds no image file.
        ValueError: for an unreadable image (naming it) or too few images to split.
    """
    _check_color(color)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a folder.")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train_files, test_files = _image_files(root / "train"), _image_files(root / "test")
        for folder, files in ((root / "train", train_files), (root / "test", test_files)):
            if not files:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}.")
    else:
        files = _image_files(root)
        if not files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {root}.")
        if test_every < 2 or len(files) < 2:
            raise ValueError(f"{root}: need at least 2 images (and test_every >= 2) to split into train and test, "
                             f"found {len(files)}.")
        test_files = files[test_every - 1 :: test_every] or files[-1:]
        train_files = [f for f in files if f not in test_files]
    return {
        "train": [{"label": read_image(f, color), "name": f.name} for f in train_files],
        "test": [{"label": read_image(f, color), "name": f.name} for f in test_files],
    }


def square_crop_size(height: int, width: int, multiple: int = 16, limit: int | None = None) -> int:
    """Side of the largest centred square crop whose side is a multiple of ``multiple`` (≤ ``limit``).

    Test images are cropped to such squares: rot90 equivariance is only defined on square images,
    and a U-Net with four poolings needs sides divisible by 16.

    Raises:
        ValueError: when the image is smaller than ``multiple``.
    """
    side = min(height, width) if limit is None else min(height, width, limit)
    side -= side % multiple
    if side <= 0:
        raise ValueError(f"a {height}x{width} image is smaller than the {multiple}-pixel minimum crop.")
    return side
