"""MONAI image readers for CT inputs of the MAR pipeline: DeepLesion PNG, DICOM CT, NIfTI.

All three are :class:`monai.data.ImageReader` subclasses, so they plug into
``LoadImage(reader=...)`` / ``LoadImaged(keys, reader=...)``, and add the validation a training
set generator needs: every failure names the file and the problem instead of surfacing deep
from Pillow, pydicom or NumPy.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import NibabelReader, PILReader, PydicomReader
from monai.utils import ensure_tuple

from eqmar.utils import require_extra

require_extra(__name__, "PIL", "pydicom", "nibabel")

__all__ = [
    "DEEPLESION_HU_OFFSET",
    "CTDicomReader",
    "CTNiftiReader",
    "DeepLesionPNGReader",
    "deeplesion_file_name",
    "read_deeplesion_spacing",
]

# DeepLesion PNGs store HU + 32768 as uint16.
DEEPLESION_HU_OFFSET = 32768
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
_DL_FILE_NAME = re.compile(r"^(\d{6}_\d{2}_\d{2})_(\d+)\.png$")


def deeplesion_file_name(path: str | os.PathLike) -> str:
    """DL_info.csv ``File_name`` of an image path: ``.../000001_01_01/109.png`` -> ``000001_01_01_109.png``."""
    p = Path(path)
    return f"{p.parent.name}_{p.name}"


@lru_cache(maxsize=8)
def _spacing_table(csv_path: str, mtime: float) -> tuple[dict[str, tuple[float, ...]], dict[str, tuple[float, ...]]]:
    """(File_name -> spacing, series folder -> spacing) from DL_info.csv; cached per file version."""
    by_file: dict[str, tuple[float, ...]] = {}
    by_series: dict[str, tuple[float, ...]] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"File_name", "Spacing_mm_px_"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path}: DL_info.csv lacks column(s) {sorted(missing)}.")
        for number, row in enumerate(reader, start=2):
            name = row["File_name"].strip()
            try:
                spacing = tuple(float(v) for v in row["Spacing_mm_px_"].split(","))
            except ValueError as e:
                raise ValueError(f"{csv_path}:{number}: bad Spacing_mm_px_ {row['Spacing_mm_px_']!r}.") from e
            by_file[name] = spacing
            match = _DL_FILE_NAME.match(name)
            if match:
                by_series.setdefault(match.group(1), spacing)
    return by_file, by_series


def read_deeplesion_spacing(image_path: str | os.PathLike, dl_info_csv: str | os.PathLike) -> tuple[float, ...] | None:
    """Spacing (x mm, y mm, slice interval mm) of a DeepLesion PNG from ``DL_info.csv``.

    ``DL_info.csv`` lists key slices only; spacing is constant within a series, so a slice that
    is not listed takes the spacing of any listed slice of the same series folder.

    Returns:
        The spacing tuple, or None when neither the file nor its series is listed.
    """
    csv_path = Path(dl_info_csv)
    if not csv_path.is_file():
        raise FileNotFoundError(f"DL_info.csv not found: {csv_path}")
    by_file, by_series = _spacing_table(str(csv_path.resolve()), csv_path.stat().st_mtime)
    name = deeplesion_file_name(image_path)
    return by_file.get(name, by_series.get(Path(image_path).parent.name))


class DeepLesionPNGReader(PILReader):
    """Reader for DeepLesion 16-bit PNG slices; data in HU (stored value − 32768), float32.

    Args:
        dl_info_csv: optional path of ``DL_info.csv``; when given, in-plane spacing (mm) goes to
            the metadata (``spacing`` and the ``affine``).
        reverse_indexing: as in :class:`monai.data.PILReader` (True: array axes (x, y), like the
            other MONAI readers; False: (row, column)).
        kwargs: passed to :class:`monai.data.PILReader`.

    Raises (from ``read``/``get_data``):
        ValueError: for corrupt or truncated files, 8-bit or colour PNGs, and non-square images,
            with the file name in the message.
    """

    def __init__(self, dl_info_csv: str | os.PathLike | None = None, reverse_indexing: bool = True, **kwargs: Any):
        super().__init__(reverse_indexing=reverse_indexing, **kwargs)
        self.dl_info_csv = dl_info_csv

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Only ``.png`` files."""
        return all(str(f).lower().endswith(".png") for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any):
        """Open and fully decode each PNG so truncation is detected here, with the file name."""
        from PIL import Image, UnidentifiedImageError

        images = []
        self.filenames = [str(name) for name in ensure_tuple(data)]
        for name in self.filenames:
            try:
                img = Image.open(name, **{**self.kwargs, **kwargs})
                img.load()  # PIL decodes lazily; force it so corrupt data fails now
            except FileNotFoundError:
                raise FileNotFoundError(f"DeepLesion PNG not found: {name}") from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise ValueError(f"{name}: not a readable PNG (corrupt or truncated file): {e}") from e
            _check_deeplesion_image(img, name)
            if callable(self.converter):
                img = self.converter(img)
            images.append(img)
        return images if len(images) > 1 else images[0]

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """HU array (float32) and metadata; ``spacing``/``affine`` from DL_info.csv when known."""
        data, meta = super().get_data(img)
        hu = data.astype(np.float32) - DEEPLESION_HU_OFFSET
        meta["filename_or_obj"] = self.filenames[0] if len(self.filenames) == 1 else self.filenames
        if self.dl_info_csv is not None:
            spacing = read_deeplesion_spacing(self.filenames[0], self.dl_info_csv)
            if spacing is not None:
                # DeepLesion pixels are square, so (x, y) vs (row, column) order does not matter.
                meta["spacing"] = np.asarray(spacing[:2], dtype=np.float64)
                meta["slice_interval"] = float(spacing[2]) if len(spacing) > 2 else float("nan")
                meta["affine"] = np.diag([spacing[0], spacing[1], 1.0, 1.0])
                meta["original_affine"] = meta["affine"].copy()
        return hu, meta


def _describe_mode(mode: str) -> str:
    """Plain words for a Pillow mode; Pillow opens 16-bit colour PNGs as 8-bit "RGB", so colour
    modes are named by their channels rather than a bit depth."""
    if mode in ("1", "L", "P"):
        return "8-bit"
    if mode in ("LA", "La", "PA"):
        return "with an alpha channel"
    if mode.startswith(("RGB", "CMYK", "YCbCr", "LAB", "HSV")):
        return "colour"
    return "unsupported"


def _check_deeplesion_image(img: Any, name: str) -> None:
    if img.format != "PNG":
        raise ValueError(f"{name}: expected a PNG file, found format {img.format!r}.")
    if img.mode not in _SIXTEEN_BIT_MODES:
        raise ValueError(
            f"{name}: DeepLesion slices are 16-bit grayscale PNGs (HU + 32768); found mode {img.mode!r} "
            f"({_describe_mode(img.mode)}), which cannot hold HU values."
        )
    if img.width != img.height:
        raise ValueError(f"{name}: image must be square, got {img.width}x{img.height} (width x height).")


class CTDicomReader(PydicomReader):
    """:class:`monai.data.PydicomReader` restricted to CT, with clear errors.

    HU come from ``RescaleSlope``/``RescaleIntercept`` (applied by the parent). A folder is read
    as one series (files recognised by :func:`pydicom.misc.is_dicom`, sorted by InstanceNumber).

    Args:
        require_ct: reject datasets whose ``Modality`` is not ``CT``.
        require_rescale: reject CT datasets that lack ``RescaleSlope`` or ``RescaleIntercept``
            (both mandatory in the CT Image module; enhanced multi-frame CT keeps them in
            functional groups, which the parent does not read), because their stored values
            cannot be mapped to HU. False falls back to the parent's behaviour: a missing slope
            counts as 1 and a missing intercept as 0, i.e. stored values are taken as HU.
        kwargs: passed to :class:`monai.data.PydicomReader` (e.g. ``swap_ij``); ``fname_regex``
            defaults to None so that non-DICOM files in a series folder are skipped.

    Raises (from ``read``/``get_data``):
        FileNotFoundError: missing file or folder.
        ValueError: unreadable or non-image DICOM, non-CT modality, missing pixel data or rescale
            tags, undecodable pixel data, or a series whose slices cannot be stacked; the message
            names the file.
    """

    def __init__(self, require_ct: bool = True, require_rescale: bool = True, **kwargs: Any):
        kwargs.setdefault("fname_regex", None)
        super().__init__(**kwargs)
        self.require_ct = require_ct
        self.require_rescale = require_rescale

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Folders, ``.dcm`` files, and any file with a DICOM preamble."""
        from pydicom.misc import is_dicom

        def ok(name: str | os.PathLike) -> bool:
            p = Path(name)
            return p.is_dir() or p.suffix.lower() in (".dcm", ".dicom") or (p.is_file() and is_dicom(p))

        return all(ok(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any):
        """Read file(s) or series folder(s); check existence, DICOM format, modality, pixel data."""
        from pydicom.errors import InvalidDicomError
        from pydicom.misc import is_dicom

        for name in ensure_tuple(data):
            p = Path(name)
            if p.is_dir():
                if not any(is_dicom(f) for f in p.iterdir() if f.is_file()):
                    raise ValueError(f"{p}: folder holds no DICOM files.")
            elif not p.is_file():
                raise FileNotFoundError(f"DICOM file or folder not found: {p}")
        try:
            datasets = super().read(data, **kwargs)
        except InvalidDicomError as e:
            # pydicom suggests force=True, which would read any bytes as a dataset: not advice for CT input
            files = [f for f in ensure_tuple(data) if Path(f).is_file()]
            if files and all(Path(f).stat().st_size == 0 for f in files):
                raise ValueError(f"{data}: empty file (0 bytes), not a DICOM file") from None
            raise ValueError(f"{data}: not a DICOM file (no DICM preamble or file meta header)") from e
        except Exception as e:  # a damaged header fails in pydicom with EOFError, struct.error, ...
            raise ValueError(f"{data}: not a readable DICOM file (corrupt or truncated): {e}") from e
        for ds, filename in zip(_flatten(datasets), _flatten(self.filenames), strict=False):
            self._check_dataset(ds, filename)
        inputs = ensure_tuple(data)
        for name, group in zip(inputs, [datasets] if len(inputs) == 1 else datasets, strict=False):
            sizes = {(getattr(ds, "Rows", None), getattr(ds, "Columns", None)) for ds in _flatten(group)}
            if len(sizes) > 1:
                # Found here, the stacking in the parent would fail with a bare NumPy message.
                raise ValueError(
                    f"{name}: the slices of this series differ in size (rows, columns) {sorted(sizes, key=str)}."
                )
        return datasets

    def _check_dataset(self, ds: Any, filename: str | os.PathLike) -> None:
        # pydicom parses random bytes after a valid "DICM" prefix into private elements, so a
        # corrupt file shows up as a dataset without any of the basic image attributes.
        if not any(keyword in ds for keyword in ("Modality", "Rows", "Columns", "SOPClassUID")):
            raise ValueError(
                f"{filename}: not a readable DICOM image (corrupt file?): no Modality, Rows, Columns or SOPClassUID."
            )
        modality = str(getattr(ds, "Modality", ""))
        if self.require_ct and modality != "CT":
            raise ValueError(f"{filename}: expected a CT image, DICOM Modality is {modality or 'missing'!r}.")
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise ValueError(f"{filename}: DICOM dataset has no pixel data.")
        missing = [tag for tag in ("RescaleSlope", "RescaleIntercept") if tag not in ds]
        if self.require_rescale and modality == "CT" and missing:
            raise ValueError(
                f"{filename}: CT dataset without {' and '.join(missing)}, so its stored values cannot be "
                "converted to HU; add the tags, or pass require_rescale=False to read stored values as HU."
            )

    def get_data(self, data) -> tuple[np.ndarray, dict]:
        """HU array (float32) and metadata; pixel decoding errors name the file."""
        try:
            array, meta = super().get_data(data)
        except Exception as e:  # pydicom raises many types for undecodable pixel data
            raise ValueError(f"{_names(self.filenames)}: cannot decode DICOM pixel data: {e}") from e
        return np.asarray(array, dtype=np.float32), meta


def _flatten(items: Any) -> list:
    out = []
    for item in items if isinstance(items, (list, tuple)) else [items]:
        out.extend(_flatten(item) if isinstance(item, (list, tuple)) else [item])
    return out


def _names(filenames: Any) -> str:
    """The file name(s) a reader holds, for error messages: ``a.dcm`` or ``a.dcm, b.dcm``."""
    return ", ".join(str(name) for name in _flatten(filenames))


class CTNiftiReader(NibabelReader):
    """:class:`monai.data.NibabelReader` that rejects unreadable files and non-finite data.

    Args:
        kwargs: passed to :class:`monai.data.NibabelReader` (e.g. ``as_closest_canonical``).
    """

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any):
        """Load NIfTI file(s); missing or corrupt files raise with the file name."""
        for name in ensure_tuple(data):
            if not Path(name).is_file():
                raise FileNotFoundError(f"NIfTI file not found: {name}")
        try:
            return super().read(data, **kwargs)
        except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, ...
            raise ValueError(f"{data}: not a readable NIfTI file: {e}") from e

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        """Array (float32) and metadata; NaN or infinite voxels raise naming the file."""
        try:
            array, meta = super().get_data(img)
        except Exception as e:  # truncated .nii.gz fails only when the data are decoded
            raise ValueError(f"{_names(self.filenames)}: cannot read NIfTI voxel data: {e}") from e
        array = np.asarray(array, dtype=np.float32)
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(
                f"{_names(self.filenames)}: {bad} of {array.size} voxels are NaN or infinite; "
                "a CT volume must be finite HU."
            )
        return array, meta
