"""eqmar.data: CT readers, slice loading, generated phantoms and metal masks, the SynDeepLesion layout and datasets.

- :mod:`eqmar.data.readers`: MONAI ``ImageReader`` s for DeepLesion PNG, DICOM CT and NIfTI.
- :mod:`eqmar.data.slices`: :func:`load_ct_slices`, 2-D HU slices from any supported input.
- :mod:`eqmar.data.phantoms`: procedural CT phantoms and the demo slices.
- :mod:`eqmar.data.masks`: metal-mask sets: loading, checking, resizing and generating them.
- :mod:`eqmar.data.synthesis`: metal-artifact data sets made with :mod:`eqmar.ct`'s simulator.
- :mod:`eqmar.data.syndeeplesion`: gzip-HDF5 files, folders and list files of SynDeepLesion.
- :mod:`eqmar.data.datasets`: torch datasets yielding MONAI dictionary samples.
- :mod:`eqmar.data.ct_input`: the HU check and loaders that every CT entry point shares.

Names are resolved lazily so that ``import eqmar.data`` does not import MONAI or h5py.
"""

from __future__ import annotations

from eqmar.utils import lazy_exports

_EXPORTS = {
    "CTDicomReader": "readers",
    "CTNiftiReader": "readers",
    "DeepLesionPNGReader": "readers",
    "load_ct_slices": "slices",
    "phantom_slice": "phantoms",
    "demo_ct_slices": "phantoms",
    "generate_mask_set": "masks",
    "load_masks": "masks",
    "resize_mask": "masks",
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
