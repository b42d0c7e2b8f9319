"""The SynDeepLesion on-disk layout: gzip HDF5 files, folders and list files.

The published data (InDuDoNet, DICDNet, ACDNet, OSCNet, ...) is organised as::

    <root>/train_640geo_dir.txt           lines like "000376_16_02/299/gt.h5"
    <root>/train_640geo/<PPPPPP_SS_RR>/<slice>/gt.h5   image, poly_sinogram, poly_CT
    <root>/train_640geo/<PPPPPP_SS_RR>/<slice>/<k>.h5  ma_CT, LI_CT, ma_sinogram, LI_sinogram, metal_trace
    <root>/trainmask.npy                  (512, 512, N) uint8
    (and the same with "test")

Files written here have the same keys, shapes, dtypes, chunking and gzip level (h5py's defaults for
``compression="gzip"``) as the published ones. Writes are atomic: data go to a temporary file in
the target folder which is then renamed over the target, so an interrupted generator never leaves
a truncated ``.h5`` behind (a half-written HDF5 file would otherwise fail only when read).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqmar.utils import atomic_write, require_extra

require_extra(__name__, "h5py")

__all__ = [
    "CLEAN_KEYS",
    "DEFAULT_GEOMETRY",
    "PAIR_KEYS",
    "SAMPLE_IMAGE_ID",
    "SynDeepLesionLayout",
    "sample_files",
    "deeplesion_image_id",
    "link_sample",
    "read_clean",
    "read_pair",
    "write_clean",
    "write_pair",
]

DEFAULT_GEOMETRY = "640geo"
CLEAN_KEYS: tuple[str, ...] = ("image", "poly_sinogram", "poly_CT")
PAIR_KEYS: tuple[str, ...] = ("ma_CT", "LI_CT", "ma_sinogram", "LI_sinogram", "metal_trace")
_GT_FILENAME = "gt.h5"
#: Image id under which :func:`link_sample` files a single-slice folder (that of the published sample).
SAMPLE_IMAGE_ID = "000376_16_02/299"
_SAMPLE_TEST_MASKS = 10
# gzip level 4 is h5py's default for compression="gzip" and the level of the published files.
_GZIP_LEVEL = 4


def _as_2d(name: str, value: Any, dtype: type) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]  # accept channel-first (1, H, W) arrays from MONAI pipelines
    if array.ndim != 2:
        raise ValueError(f"'{name}' must be a 2-D array (or (1, H, W)), got shape {array.shape}.")
    if np.issubdtype(dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"'{name}' contains NaN or infinite values.")
    return np.ascontiguousarray(array, dtype=dtype)


def _check_same_shape(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    shapes = {name: arrays[name].shape for name in names}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"arrays {list(names)} must have the same shape, got {shapes}.")


def _write_h5(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    import h5py

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value, compression="gzip", compression_opts=_GZIP_LEVEL)

    return atomic_write(path, write)


def write_clean(
    path: str | os.PathLike, image: Any, poly_sinogram: Any, poly_CT: Any  # noqa: N803 (published key name)
) -> Path:
    """Write a ``gt.h5`` file (clean reference) in the published layout.

    Args:
        path: target file, usually ``<split>_640geo/<series>/<slice>/gt.h5``.
        image: clean attenuation map µ (H, W) in 1/cm, stored as float32.
        poly_sinogram: noisy polychromatic sinogram of the clean image (views, bins), float32.
        poly_CT: FBP of ``poly_sinogram`` (H, W), float32.

    Returns:
        The path written.
    """
    arrays = {
        "image": _as_2d("image", image, np.float32),
        "poly_sinogram": _as_2d("poly_sinogram", poly_sinogram, np.float32),
        "poly_CT": _as_2d("poly_CT", poly_CT, np.float32),
    }
    _check_same_shape(arrays, ("image", "poly_CT"))
    return _write_h5(path, arrays)


def write_pair(
    path: str | os.PathLike,
    ma_sinogram: Any,
    LI_sinogram: Any,  # noqa: N803 (published key names)
    ma_CT: Any,  # noqa: N803
    LI_CT: Any,  # noqa: N803
    metal_trace: Any,
) -> Path:
    """Write a ``<k>.h5`` file (metal-corrupted pair for mask ``k``) in the published layout.

    Args:
        path: target file, usually ``<split>_640geo/<series>/<slice>/<k>.h5``.
        ma_sinogram: metal-affected sinogram (views, bins), float32.
        LI_sinogram: linear-interpolation corrected sinogram (views, bins), float32.
        ma_CT: FBP of ``ma_sinogram`` (H, W), float32.
        LI_CT: FBP of ``LI_sinogram`` (H, W), float32.
        metal_trace: 0/1 metal trace in the sinogram (views, bins), stored as uint8.

    Returns:
        The path written.
    """
    trace = np.asarray(metal_trace)
    if trace.dtype != np.uint8 and not np.isin(trace, (0, 1)).all():
        raise ValueError("'metal_trace' must contain only 0 and 1.")
    arrays = {
        "ma_CT": _as_2d("ma_CT", ma_CT, np.float32),
        "LI_CT": _as_2d("LI_CT", LI_CT, np.float32),
        "ma_sinogram": _as_2d("ma_sinogram", ma_sinogram, np.float32),
        "LI_sinogram": _as_2d("LI_sinogram", LI_sinogram, np.float32),
        "metal_trace": _as_2d("metal_trace", trace, np.uint8),
    }
    _check_same_shape(arrays, ("ma_CT", "LI_CT"))
    _check_same_shape(arrays, ("ma_sinogram", "LI_sinogram", "metal_trace"))
    return _write_h5(path, arrays)


def _read_h5(path: str | os.PathLike, expected: Sequence[str], keys: Iterable[str] | None) -> dict[str, np.ndarray]:
    import h5py

    wanted = tuple(expected if keys is None else keys)
    unknown = [k for k in wanted if k not in expected]
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for {path}; valid keys are {list(expected)}.")
    if not Path(path).is_file():
        raise FileNotFoundError(f"SynDeepLesion file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise OSError(f"cannot open {path} as HDF5 (corrupt or truncated file?): {e}") from e
    with f:
        missing = [k for k in wanted if k not in f]
        if missing:
            raise KeyError(f"{path} lacks dataset(s) {missing}; it has {sorted(f.keys())}.")
        return {k: f[k][()] for k in wanted}


def read_clean(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read a ``gt.h5`` file.

    Args:
        path: the file.
        keys: subset of :data:`CLEAN_KEYS` to read (default all); reading only ``image`` skips
            decompressing the sinogram.

    Returns:
        dict key -> array, as stored (float32).
    """
    return _read_h5(path, CLEAN_KEYS, keys)


def read_pair(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read a ``<k>.h5`` file.

    Args:
        path: the file.
        keys: subset of :data:`PAIR_KEYS` to read (default all).

    Returns:
        dict key -> array, as stored (float32; ``metal_trace`` uint8).
    """
    return _read_h5(path, PAIR_KEYS, keys)


@dataclass(frozen=True)
class SynDeepLesionLayout:
    """Paths and list files of one split of a SynDeepLesion-style data root.

    An *image id* is ``"<PPPPPP_SS_RR>/<slice>"`` (e.g. ``"000376_16_02/299"``), the part of a list
    file line before ``/gt.h5``.

    Args:
        root: data root holding the split folder, the list file and the mask file.
        split: ``"train"`` or ``"test"``.
        geometry: geometry tag in folder and list-file names (``"640geo"`` for the published data).
    """

    root: Path
    split: str = "train"
    geometry: str = DEFAULT_GEOMETRY

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}.")
        if not self.geometry or "/" in self.geometry or os.sep in self.geometry:
            raise ValueError(f"geometry tag must be a plain non-empty name, got {self.geometry!r}.")

    @property
    def split_dir(self) -> Path:
        """``<root>/<split>_<geometry>``."""
        return self.root / f"{self.split}_{self.geometry}"

    @property
    def list_file(self) -> Path:
        """``<root>/<split>_<geometry>_dir.txt``."""
        return self.root / f"{self.split}_{self.geometry}_dir.txt"

    @property
    def settings_file(self) -> Path:
        """``<root>/<split>_<geometry>_settings.json``: what the split's files were simulated with."""
        return self.root / f"{self.split}_{self.geometry}_settings.json"

    @property
    def mask_file(self) -> Path:
        """``<root>/<split>mask.npy``."""
        return self.root / f"{self.split}mask.npy"

    def slice_dir(self, image_id: str) -> Path:
        """Folder of one image: ``<split_dir>/<series>/<slice>``."""
        return self.split_dir / _check_image_id(image_id)

    def gt_path(self, image_id: str) -> Path:
        """Path of the clean reference ``gt.h5`` of ``image_id``."""
        return self.slice_dir(image_id) / _GT_FILENAME

    def pair_path(self, image_id: str, mask_index: int) -> Path:
        """Path of ``<mask_index>.h5`` of ``image_id``."""
        if int(mask_index) < 0:
            raise ValueError(f"mask_index must be >= 0, got {mask_index}.")
        return self.slice_dir(image_id) / f"{int(mask_index)}.h5"

    def read_list(self) -> list[str]:
        """Image ids listed in :attr:`list_file`, in file order.

        Raises:
            FileNotFoundError: when the list file is missing.
            ValueError: for a line that is not ``<series>/<slice>/gt.h5``.
        """
        if not self.list_file.is_file():
            raise FileNotFoundError(
                f"SynDeepLesion list file not found: {self.list_file} (root {self.root} must hold "
                f"'{self.list_file.name}' with lines like '000376_16_02/299/gt.h5')."
            )
        ids = []
        for number, line in enumerate(self.list_file.read_text().splitlines(), start=1):
            entry = line.strip()
            if not entry:
                continue
            if not entry.endswith("/" + _GT_FILENAME):
                raise ValueError(f"{self.list_file}:{number}: expected '<series>/<slice>/gt.h5', got {entry!r}.")
            ids.append(_check_image_id(entry[: -len(_GT_FILENAME) - 1]))
        return ids

    def write_list(self, image_ids: Iterable[str]) -> Path:
        """Write :attr:`list_file` atomically, one ``<image_id>/gt.h5`` line per id."""
        lines = "".join(f"{_check_image_id(i)}/{_GT_FILENAME}\n" for i in image_ids)
        return atomic_write(self.list_file, lambda tmp: tmp.write_text(lines))


def deeplesion_image_id(png_path: str | os.PathLike) -> str:
    """SynDeepLesion image id of a DeepLesion slice: ``.../000376_16_02/299.png`` -> ``000376_16_02/299``."""
    p = Path(png_path)
    return _check_image_id(f"{p.parent.name}/{p.stem}")


def _check_image_id(image_id: str) -> str:
    parts = str(image_id).strip("/").split("/")
    if len(parts) != 2 or not all(parts) or ".." in parts:
        raise ValueError(f"image id must look like '000376_16_02/299', got {image_id!r}.")
    return "/".join(parts)


def sample_files(folder: str | os.PathLike, check_files: bool = True) -> dict[str, Path]:
    """The files of a single-slice SynDeepLesion folder, such as the sample the SynDeepLesion authors publish.

    Such a folder holds ``gt.h5`` (the clean slice), ``0.h5`` … ``9.h5`` (``ma_CT``, ``LI_CT``, … of
    each test mask) and ``testmask.npy`` (the ten test masks).

    Args:
        folder: the folder.
        check_files: check that every file exists (False: only the folder; a reader then names a
            missing or unreadable file when it gets to it).

    Returns:
        ``{"gt": path, "0": path, ..., "9": path, "masks": path}``.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (the message names it).
    """
    folder = Path(folder)
    expected = "gt.h5, 0.h5 ... 9.h5 and testmask.npy"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: sample folder not found (expected {expected})")
    files = {"gt": folder / _GT_FILENAME, **{str(k): folder / f"{k}.h5" for k in range(_SAMPLE_TEST_MASKS)},
             "masks": folder / "testmask.npy"}
    for path in files.values() if check_files else ():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; a sample folder holds {expected}")
    return files


def link_sample(
    folder: str | os.PathLike,
    root: str | os.PathLike,
    image_id: str = SAMPLE_IMAGE_ID,
    geometry: str = DEFAULT_GEOMETRY,
) -> tuple[Path, str]:
    """File a single-slice folder (:func:`sample_files`) as the test split of a SynDeepLesion root, by symbolic links.

    The datasets of :mod:`eqmar.data.datasets` then read it like any test set.

    Returns:
        ``(root, geometry)``, as the datasets take them.
    """
    files = sample_files(folder)
    layout = SynDeepLesionLayout(root, "test", geometry)
    target = layout.slice_dir(image_id)
    target.mkdir(parents=True)
    for key, path in files.items():
        if key != "masks":
            (target / path.name).symlink_to(path.resolve())
    (Path(root) / "testmask.npy").symlink_to(files["masks"].resolve())
    layout.write_list([image_id])
    return Path(root), geometry
