"""eqmar.data: CT readers, slice loading, the SynDeepLesion on-disk layout and datasets.

- :mod:`eqmar.data.readers`: MONAI ``ImageReader`` s for DeepLesion PNG, DICOM CT and NIfTI.
- :mod:`eqmar.data.slices`: :func:`load_ct_slices`, 2-D HU slices from any supported input.
- :mod:`eqmar.data.syndeeplesion`: gzip-HDF5 files, folders and list files of SynDeepLesion.
- :mod:`eqmar.data.datasets`: torch datasets yielding MONAI dictionary samples.

Names are resolved lazily so that ``import eqmar.data`` does not import MONAI or h5py.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CTDicomReader": "readers",
    "CTNiftiReader": "readers",
    "DeepLesionPNGReader": "readers",
    "load_ct_slices": "slices",
    "select_axial_slices": "slices",
    "SynDeepLesionLayout": "syndeeplesion",
    "read_clean": "syndeeplesion",
    "read_pair": "syndeeplesion",
    "write_clean": "syndeeplesion",
    "write_pair": "syndeeplesion",
    "SynDeepLesionDataset": "datasets",
    "SynDeepLesionTestDataset": "datasets",
    "SynDeepLesionTrainDataset": "datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
