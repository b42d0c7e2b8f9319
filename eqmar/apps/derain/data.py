"""Rain100L-layout paired deraining data as a MONAI dataset.

Layout (the one of the RCDNet release; 200 training and 100 test pairs for Rain100L)::

    ROOT/train/small/rain/rain-1.png    ROOT/train/small/norain/norain-1.png
    ROOT/test/small/rain/...            ROOT/test/small/norain/...

``small/`` may be absent (``ROOT/train/rain``); a folder that itself holds ``rain/`` and
``norain/`` is read with ``split=None``. A rainy file matches the
clean file with the same name, or with the prefix ``rain`` replaced by ``norain``
(``rain-001.png`` ↔ ``norain-001.png``); numbers match regardless of zero padding
(``rain-1.png`` ↔ ``norain-001.png``). Folders whose names do not all pair up are rejected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import Dataset
from monai.transforms import Compose, EnsureTyped, LoadImaged, ScaleIntensityRanged

from eqmar.utils import require_extra

require_extra(__name__, "PIL", extra="apps")

__all__ = [
    "RAIN_DIR",
    "CLEAN_DIR",
    "IMAGE_SUFFIXES",
    "pair_key",
    "find_rain_folder",
    "rain_pairs",
    "load_pair_transform",
    "Rain100LDataset",
    "write_rain_pairs",
]

RAIN_DIR = "rain"
CLEAN_DIR = "norain"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_PREFIX = re.compile(r"^(?:no)?rain(?:[-_ ]+|(?=\d))", re.IGNORECASE)
_SHOWN = 5


def pair_key(path: str | Path) -> str:
    """Name under which a rainy and a clean file pair up (prefix ``rain``/``norain`` and zero padding dropped)."""
    stem = _PREFIX.sub("", Path(path).stem, count=1).lower()
    return str(int(stem)) if stem.isdigit() else stem


def find_rain_folder(root: str | Path, split: str | None = "train") -> Path:
    """The folder holding ``rain/`` and ``norain/`` for ``split`` under ``root``.

    Looks in ``root/split/small`` and ``root/split`` (an absolute ``split`` is used as is);
    ``split=None`` means ``root`` itself. ``root`` is never used for a named split, so a folder
    without splits cannot silently serve as both training and test data.

    Raises:
        FileNotFoundError: with the places searched when none holds both folders.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Rain100L root {root} is not a folder.")
    candidates = [root / split / "small", root / split] if split else [root]
    for folder in candidates:
        if (folder / RAIN_DIR).is_dir() and (folder / CLEAN_DIR).is_dir():
            return folder
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no Rain100L '{RAIN_DIR}/' + '{CLEAN_DIR}/' folder pair for split {split!r}: searched {searched}. "
        f"Expected e.g. {root}/train/small/{RAIN_DIR}/rain-1.png and {root}/train/small/{CLEAN_DIR}/norain-1.png."
    )


def _images(folder: Path) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    keyed: dict[str, Path] = {}
    for path in files:
        key = pair_key(path)
        if key in keyed:
            raise ValueError(f"{folder}: {keyed[key].name} and {path.name} both pair as {key!r}; remove one.")
        keyed[key] = path
    return keyed


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_SHOWN])
    return shown + (f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def rain_pairs(folder: str | Path) -> list[dict[str, str]]:
    """``[{"image": rainy path, "label": clean path, "name": key}, ...]`` for a folder with ``rain/`` and ``norain/``.

    Raises:
        FileNotFoundError: when a sub-folder is missing or holds no images.
        ValueError: when some names do not pair up (a few of them and the folder are listed).
    """
    folder = Path(folder)
    rain_dir, clean_dir = folder / RAIN_DIR, folder / CLEAN_DIR
    for sub in (rain_dir, clean_dir):
        if not sub.is_dir():
            raise FileNotFoundError(f"{sub} is not a folder (a Rain100L split holds '{RAIN_DIR}/' and '{CLEAN_DIR}/').")
    rainy, clean = _images(rain_dir), _images(clean_dir)
    if not rainy or not clean:
        empty = rain_dir if not rainy else clean_dir
        raise FileNotFoundError(f"{empty} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    lonely_rain = [rainy[k].name for k in rainy.keys() - clean.keys()]
    lonely_clean = [clean[k].name for k in clean.keys() - rainy.keys()]
    if lonely_rain or lonely_clean:
        problems = []
        if lonely_rain:
            problems.append(f"{len(lonely_rain)} in {RAIN_DIR}/ without a clean match ({_examples(lonely_rain)})")
        if lonely_clean:
            problems.append(f"{len(lonely_clean)} in {CLEAN_DIR}/ without a rainy match ({_examples(lonely_clean)})")
        raise ValueError(
            f"unmatched file names in {folder}: {'; '.join(problems)}. Rainy and clean files must have identical "
            f"names or differ only in the prefix (rain-001.png <-> norain-001.png)."
        )
    keys = sorted(rainy, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return [{"image": str(rainy[k]), "label": str(clean[k]), "name": k} for k in keys]


def load_pair_transform(keys: Sequence[str] = ("image", "label"), channels: int = 3) -> Compose:
    """Load 8-bit images as channel-first float32 ``(C, H, W)`` tensors in [0, 1] (rows first, as stored).

    Args:
        keys: keys holding file paths.
        channels: 3 (RGB; grey files are expanded) or 1 (grey; colour files are converted to luminance).
    """
    from functools import partial

    from monai.data import PILReader
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    # a partial (not a lambda) keeps the transform picklable for spawned data-loader workers
    convert = partial(Image.Image.convert, mode="RGB" if channels == 3 else "L")
    # reverse_indexing=False keeps (H, W) as stored: MONAI's default would transpose natural images
    reader = PILReader(converter=convert, reverse_indexing=False)
    return Compose([
        LoadImaged(keys=list(keys), reader=reader, image_only=True, ensure_channel_first=True),
        ScaleIntensityRanged(keys=list(keys), a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
        EnsureTyped(keys=list(keys), track_meta=False),
    ])


class Rain100LDataset(Dataset):
    """Paired rainy/clean images of a Rain100L-layout folder, loaded as ``(C, H, W)`` tensors in [0, 1].

    Each item is ``{"image": rainy, "label": clean, "name": pair key}`` after ``transform``.

    Args:
        root: the Rain100L root (with ``train/`` and ``test/``) or a folder holding ``rain/`` and ``norain/``.
        split: "train", "test" (or any sub-folder name), or ``None`` to use ``root`` as the split folder.
        transform: transforms applied after loading (e.g. random crops).
        channels: 3 (RGB) or 1 (grey).
        limit: keep only the first ``limit`` pairs (in name order).

    Raises:
        FileNotFoundError: no ``rain/`` + ``norain/`` folders for the split.
        ValueError: names that do not pair up (listed with the folder).
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        transform: Callable | Sequence[Callable] | None = None,
        channels: int = 3,
        limit: int | None = None,
    ) -> None:
        self.folder = find_rain_folder(root, split)
        pairs = rain_pairs(self.folder)
        if limit is not None:
            pairs = pairs[: max(int(limit), 0)]
        load = load_pair_transform(("image", "label"), channels)
        if transform is not None:
            extra = transform if isinstance(transform, Callable) else Compose(list(transform))  # type: ignore[arg-type]
            load = Compose([load, extra])
        super().__init__(pairs, transform=load)

    @property
    def names(self) -> list[str]:
        """Pair keys in dataset order."""
        return [d["name"] for d in self.data]

    def describe(self) -> dict[str, Any]:
        """Folder and pair count, for logs and results files."""
        return {"folder": str(self.folder), "pairs": len(self.data)}


def _to_uint8(image: Any) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] -> ``(H, W, C)`` (or ``(H, W)``) uint8, as stored in PNG files."""
    array = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image, dtype=np.float64)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"images must be channel-first (1|3, H, W) in [0, 1], got shape {array.shape}.")
    array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)


def write_rain_pairs(
    folder: str | Path,
    images: Sequence[Any],
    draws: int = 1,
    seed: int = 0,
    start: int = 1,
    **rain_kwargs: Any,
) -> list[dict[str, Any]]:
    """Write synthetic rainy/clean pairs in the Rain100L layout (``rain/rain-N.png``, ``norain/norain-N.png``).

    Each clean image gets ``draws`` independent rain layers from
    :class:`~eqmar.apps.derain.transforms.RandRainStreaks` seeded with ``seed``; images are quantised
    to 8 bits like the published data.

    Args:
        folder: split folder to write into (created).
        images: clean channel-first images in [0, 1].
        draws: rainy versions per clean image.
        seed: seed of the rain.
        start: number of the first pair.
        rain_kwargs: :class:`~eqmar.apps.derain.transforms.RandRainStreaks` arguments.

    Returns:
        the rain parameters of every pair, with its number.
    """
    from PIL import Image

    from eqmar.apps.derain.transforms import RandRainStreaks

    folder = Path(folder)
    for sub in (RAIN_DIR, CLEAN_DIR):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rain = RandRainStreaks(**rain_kwargs)
    rain.set_random_state(seed)
    written = []
    number = start
    for image in images:
        clean = _to_uint8(image)
        clean_float = np.asarray(clean, dtype=np.float32) / 255.0
        clean_float = clean_float[None] if clean_float.ndim == 2 else np.moveaxis(clean_float, -1, 0)
        for _ in range(draws):
            rainy = _to_uint8(rain(clean_float))
            Image.fromarray(rainy).save(folder / RAIN_DIR / f"rain-{number}.png")
            Image.fromarray(clean).save(folder / CLEAN_DIR / f"norain-{number}.png")
            written.append({"pair": number, **(rain.params or {})})
            number += 1
    return written

