"""Is this a CT image in HU? One check and one loader for every door of MAR inference.

``python -m eqmar.infer``, the MONAI bundle and the MONAI Label app all take a user's file, and all
must refuse the same things with the same one-line message: a file that is not there or cannot be
read, an MR or colour image, data that is not in HU. :func:`check_ct_hu` is the check on the array;
:class:`LoadCT` / :class:`LoadCTd` pick exactly one of eqmar's CT readers by the kind of input (no
fall-back to MONAI's other readers, which would read an RGB PNG or an MR series as "HU"), read it
channel-first and apply the check. Every failure is a :class:`CTInputError` naming the input.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = [
    "AIR_MAX_HU", "NIFTI_SUFFIXES", "CTInputError", "LoadCT", "LoadCTd", "check_ct_hu", "ct_input_kind",
    "exit_on_input_error", "holds_dicom", "is_dicom_file",
]

#: A CT slice in HU shows air (about -1000 HU) or the scanner's padding (-1024 HU and below) somewhere;
#: an image whose lowest value is above this is not one (an MR, a photograph, stored values without
#: their rescale).
AIR_MAX_HU = -500.0
#: Highest value a CT image in HU can hold (16-bit signed storage).
MAX_HU = 32767.0
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class CTInputError(ValueError):
    """An input that is not a readable CT image in HU; the message is one line naming the input."""


def _one_line(error: BaseException) -> str:
    """The innermost message of an exception chain, on one line (MONAI wraps reader errors)."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split())
    return text or type(error).__name__


def check_ct_hu(image: Any, name: str) -> np.ndarray:
    """Check that ``image`` is a CT slice or volume in HU; return it as a NumPy array.

    Args:
        image: array-like, 2-D or 3-D (a leading or trailing singleton axis is allowed).
        name: how to name the input in a message (the user's file, an image id).

    Raises:
        CTInputError: not numeric, not 2-D/3-D, NaN or infinite values, no air (lowest value above
            :data:`AIR_MAX_HU`) or values beyond 16-bit HU.
    """
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise CTInputError(f"{name}: expected a CT image in HU, got values of type {array.dtype}")
    squeezed = array.reshape([s for s in array.shape if s != 1]) if array.ndim > 2 else array
    if squeezed.ndim not in (2, 3) or min(squeezed.shape) < 1:
        raise CTInputError(f"{name}: expected a 2-D slice or 3-D volume, got an array of shape {array.shape}")
    if not np.isfinite(array).all():
        raise CTInputError(f"{name}: holds NaN or infinite values")
    low, high = float(array.min()), float(array.max())
    if low > AIR_MAX_HU:
        raise CTInputError(
            f"{name}: not a CT image in HU: its values span [{low:g}, {high:g}] without any air "
            f"(nothing below {AIR_MAX_HU:g} HU); an MR or other image, or CT stored without its rescale?"
        )
    if high > MAX_HU or low < -MAX_HU - 1:
        raise CTInputError(f"{name}: values span [{low:g}, {high:g}], beyond the range of CT in HU")
    return array


def _has_dicom_marker(path: Path) -> bool:
    from pydicom.misc import is_dicom

    try:
        return is_dicom(path)
    except OSError:
        return False


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A ``.dcm``/``.dicom`` file name, or a file with DICOM's preamble and ``DICM`` marker."""
    path = Path(path)
    return path.suffix.lower() in (".dcm", ".dicom") or _has_dicom_marker(path)


def holds_dicom(folder: str | os.PathLike) -> bool:
    """Whether any file directly in ``folder`` carries DICOM's marker (then the folder is read as a series).

    The marker, not the name: an empty or foreign ``.dcm`` among other images does not make a series.
    """
    return any(f.is_file() and _has_dicom_marker(f) for f in Path(folder).iterdir())


def exit_on_input_error(error: BaseException) -> NoReturn:
    """For command-line runs: print ``error: <message>`` on one line to stderr and exit with status 2.

    Raised from inside a framework (a MONAI bundle's config expressions, an Ignite engine) the
    original exception would come out wrapped in several tracebacks; ``SystemExit`` passes them.
    """
    import sys

    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def ct_input_kind(path: str | os.PathLike, name: str | None = None) -> str:
    """``"nifti"``, ``"dicom"`` (file or series folder) or ``"png"`` (DeepLesion 16-bit PNG).

    Raises:
        CTInputError: a missing input, an empty folder or a file of another kind.
    """
    path = Path(path)
    name = name or str(path)
    if not path.exists():
        raise CTInputError(f"{name}: not found")
    if path.is_dir():
        if holds_dicom(path):
            return "dicom"
        raise CTInputError(f"{name}: folder holds no DICOM files (a NIfTI or PNG image must be given as a file)")
    lower = path.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(".png"):
        return "png"
    if is_dicom_file(path):
        return "dicom"
    raise CTInputError(f"{name}: unsupported input; expected a NIfTI (.nii, .nii.gz), DICOM file or series folder, "
                       "or DeepLesion 16-bit PNG")


def _reader(kind: str) -> Any:
    from eqmar.data.readers import CTDicomReader, CTNiftiReader, DeepLesionPNGReader

    return {"nifti": CTNiftiReader, "dicom": CTDicomReader, "png": DeepLesionPNGReader}[kind]()


class LoadCT(Transform):
    """Read a CT image in HU with the one eqmar reader for its kind, channel-first, and check it.

    Returns a MONAI ``MetaTensor`` of shape ``(1, X, Y[, Z])`` (as ``LoadImage`` followed by
    ``EnsureChannelFirst(channel_dim="no_channel")``) with the reader's metadata (affine, spacing,
    file name).

    Args:
        dtype: data type of the returned tensor.
    """

    def __init__(self, dtype: Any = np.float32) -> None:
        self.dtype = dtype

    def __call__(self, path: str | os.PathLike, name: str | None = None) -> Any:
        """Load ``path``; ``name`` is how messages name it (default: the path).

        Raises:
            CTInputError: see :func:`ct_input_kind` and :func:`check_ct_hu`; unreadable files too.
        """
        from monai.data import MetaTensor
        from monai.transforms import EnsureChannelFirst

        name = name or str(path)
        kind = ct_input_kind(path, name)
        # the reader itself, not LoadImage: LoadImage would construct every default reader of MONAI
        # (whose start-up warnings are noise here) and fall back to them when eqmar's refuses a file
        reader = _reader(kind)
        try:
            array, meta = reader.get_data(reader.read(str(path)))
        except Exception as error:  # readers raise many types; all mean "cannot read this as CT"
            message = " ".join(_one_line(error).replace(str(path), "").split()).lstrip(": ")
            raise CTInputError(f"{name}: cannot read it as a CT image ({kind}): {message}") from error
        check_ct_hu(array, name)
        meta["filename_or_obj"] = str(path)
        image = MetaTensor.ensure_torch_and_prune_meta(np.asarray(array, dtype=self.dtype), meta)
        return EnsureChannelFirst(channel_dim="no_channel")(image)


class LoadCTd(MapTransform):
    """Dictionary version of :class:`LoadCT`.

    Args:
        keys: keys holding input paths; each is replaced by the loaded image.
        name_key: optional key of a display name for messages (e.g. the user's file name when the
            path is a temporary upload); default: the path.
        exit_on_error: for command-line runs (the MONAI bundle): print ``error: <message>`` on one
            line to stderr and exit with status 2 instead of raising :class:`CTInputError`, so that
            the user sees that line first rather than the framework's wrapped tracebacks.
        dtype: data type of the loaded tensors.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        name_key: str | None = None,
        exit_on_error: bool = False,
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.name_key = name_key
        self.exit_on_error = exit_on_error
        self.loader = LoadCT(dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = str(d.get(self.name_key) or d[key]) if self.name_key else str(d[key])
            try:
                d[key] = self.loader(d[key], name)
            except CTInputError as error:
                if not self.exit_on_error:
                    raise
                exit_on_input_error(error)
        return d
