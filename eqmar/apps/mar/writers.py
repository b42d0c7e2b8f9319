"""Write MAR results back in the input's own format: DeepLesion PNG, NIfTI, DICOM series.

Also home of the NIfTI orientation mapping (:func:`nifti_to_axial`) whose inverse the NIfTI
writer's caller applies, so that both directions live next to each other.

Each writer keeps what a viewer or a downstream pipeline relies on:

* DeepLesion PNG: 16-bit grayscale, stored value = HU + 32768 (rounded, clipped to uint16).
* NIfTI: float32 HU with the reference image's affine and header geometry (qform/sform, zooms,
  units); the intensity scaling is reset so the stored floats are the HU.
* DICOM: a new series (new SeriesInstanceUID, one new SOPInstanceUID per image, SeriesDescription
  + " MAR (eqmar)", SeriesNumber + :data:`MAR_SERIES_NUMBER_OFFSET`, ImageType ``DERIVED\\SECONDARY``
  followed by the input's further values, a DerivationDescription, as DICOM asks of derived images
  so that a viewer tells them from the original) with every other element of the input preserved and
  pixel data stored in the
  input's representation: same integer type, bits stored, RescaleSlope/RescaleIntercept, values
  clipped to the representable range, and the input's transfer syntax where pydicom can encode it
  losslessly in this environment (:func:`output_transfer_syntax`): uncompressed and deflated syntaxes
  and RLE Lossless always, JPEG-LS and JPEG 2000 lossless with pydicom's optional encoder plugins.
  Anything else (lossy JPEG, or a lossless one without an encoder) is written as Explicit VR Little
  Endian, and a log line says so once per series.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqmar.data.ct_input import NIFTI_SUFFIXES
from eqmar.utils import require_extra

require_extra(__name__, "nibabel", "pydicom", "PIL")

logger = logging.getLogger(__name__)

__all__ = [
    "MAR_SERIES_SUFFIX",
    "MAR_SERIES_NUMBER_OFFSET",
    "NIFTI_SUFFIXES",
    "deeplesion_png_values",
    "write_deeplesion_png",
    "write_nifti_like",
    "write_hu_nifti",
    "SaveHUNiftid",
    "dicom_stored_values",
    "mar_dicom_dataset",
    "write_dicom_series",
    "nifti_to_axial",
    "axial_to_nifti",
]

#: Appended to the SeriesDescription of corrected DICOM series.
MAR_SERIES_SUFFIX = " MAR (eqmar)"

#: Added to the input's SeriesNumber for the corrected series (a series without a number gets this one).
MAR_SERIES_NUMBER_OFFSET = 1000
_LO_MAX_CHARS = 64  # DICOM VR LO (SeriesDescription) holds at most 64 characters


def deeplesion_png_values(hu: np.ndarray) -> np.ndarray:
    """HU to DeepLesion's stored uint16 (HU + 32768, rounded, clipped to [0, 65535])."""
    from eqmar.data.readers import DEEPLESION_HU_OFFSET

    stored = np.rint(np.asarray(hu, dtype=np.float64) + DEEPLESION_HU_OFFSET)
    return np.clip(stored, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def write_deeplesion_png(path: str | os.PathLike, hu: np.ndarray) -> Path:
    """Write a (H, W) HU slice as a DeepLesion 16-bit PNG."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(deeplesion_png_values(hu)).save(path, format="PNG")
    return path


def write_nifti_like(path: str | os.PathLike, data: np.ndarray, reference: Any) -> Path:
    """Write ``data`` (voxel order of ``reference``) as float32 NIfTI with ``reference``'s geometry.

    Args:
        path: output ``.nii`` or ``.nii.gz``.
        data: array of the reference's shape, in its voxel order.
        reference: the input ``nibabel`` image whose affine/header are copied.
    """
    import nibabel as nib

    array = np.asarray(data, dtype=np.float32)
    if array.shape != tuple(reference.shape):
        raise ValueError(
            f"write_nifti_like: data shape {array.shape} differs from the reference {tuple(reference.shape)}."
        )
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    image = type(reference)(array, reference.affine, header)  # Nifti1Image or Nifti2Image, as read
    image.header.set_slope_inter(1.0, 0.0)  # the stored floats are the HU: no rescaling on read
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def write_hu_nifti(
    path: str | os.PathLike, volume: np.ndarray, affine: Any = None, source: str | os.PathLike | None = None
) -> Path:
    """Write a corrected volume as float32 NIfTI in HU, keeping the input's header where there is one.

    Args:
        path: output ``.nii`` or ``.nii.gz``.
        volume: the volume in the voxel order it was read in.
        affine: its RAS affine (4x4), used when ``source`` is not a NIfTI file of the same shape.
        source: the input file: a NIfTI input's own header (qform/sform codes, units, zooms) is kept.
    """
    import nibabel as nib

    array = np.asarray(volume, dtype=np.float32)
    if source is not None and str(source).lower().endswith(NIFTI_SUFFIXES) and os.path.isfile(source):
        reference = nib.load(str(source))
        if int(np.prod(reference.shape)) == array.size:  # e.g. a 4-D input with one volume, read squeezed
            return write_nifti_like(path, array.reshape(reference.shape), reference)
    matrix = np.asarray(affine if affine is not None else np.eye(4), dtype=np.float64)
    image = nib.Nifti1Image(array, matrix if matrix.shape == (4, 4) else np.eye(4))
    # a DICOM input: scanner coordinates in mm, as DICOM defines them
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_slope_inter(1.0, 0.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def _display_transform(affine: np.ndarray) -> Any:
    """nibabel orientation transform from the file's voxel axes to canonical RAS."""
    from nibabel import orientations

    return orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt("RAS"))


def nifti_to_axial(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(X, Y, Z) voxel data to (Z, rows, cols) axial slices in display orientation.

    Display orientation is DICOM's and DeepLesion's: rows anterior→posterior, columns patient
    right→left, the orientation the MAR networks were trained in. :func:`axial_to_nifti` inverts it.
    """
    from nibabel import orientations

    ras = orientations.apply_orientation(np.asarray(data), _display_transform(affine))
    # RAS voxel x runs towards the patient's right and y towards anterior; display rows run anterior to
    # posterior and columns patient right to left: flip both, then rows = y, columns = x.
    return np.ascontiguousarray(np.flip(ras, axis=(0, 1)).transpose(2, 1, 0))


def axial_to_nifti(slices: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`nifti_to_axial`: (Z, rows, cols) back to the file's voxel order."""
    from nibabel import orientations

    ras = np.flip(np.asarray(slices).transpose(2, 1, 0), axis=(0, 1))
    back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), orientations.io_orientation(affine))
    return np.ascontiguousarray(orientations.apply_orientation(ras, back))


# ---------------------------------------------------------------------------------------- DICOM
def _rescale(ds: Any) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0)


def _stored_range(ds: Any) -> tuple[int, int, np.dtype]:
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored", bits_allocated))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits_allocated // 8}")
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1, dtype
    return 0, (1 << bits_stored) - 1, dtype


def dicom_stored_values(hu: np.ndarray, ds: Any) -> np.ndarray:
    """HU to the dataset's stored pixel values: ``(HU - intercept) / slope``, rounded, clipped.

    The dtype follows BitsAllocated and PixelRepresentation; the clip range follows BitsStored.
    """
    slope, intercept = _rescale(ds)
    low, high, dtype = _stored_range(ds)
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    return np.clip(stored, low, high).astype(dtype)


def mar_dicom_dataset(ds: Any, hu: np.ndarray, series_uid: str, derivation: str = "") -> Any:
    """A copy of ``ds`` holding ``hu`` as a member of the MAR series ``series_uid``.

    Only the pixel data (and the Image Pixel elements that describe it), the SeriesInstanceUID,
    the SOPInstanceUID, the SeriesDescription, the SeriesNumber, the ImageType (``DERIVED``,
    ``SECONDARY``, then the input's values from the third on) and the Smallest/Largest Image Pixel
    Value change; a DerivationDescription is added.
    """
    import copy

    from pydicom.uid import generate_uid

    out = copy.deepcopy(ds)
    stored = dicom_stored_values(hu, ds)
    bits_stored = int(ds.get("BitsStored", ds.BitsAllocated))
    try:
        out.set_pixel_data(stored, str(ds.PhotometricInterpretation), bits_stored, generate_instance_uid=False)
    except NotImplementedError as error:  # big-endian transfer syntaxes
        name = getattr(ds, "filename", None) or "DICOM dataset"
        raise ValueError(f"{name}: cannot store the corrected pixels: {error}") from error
    for keyword, value in (("SmallestImagePixelValue", stored.min()), ("LargestImagePixelValue", stored.max())):
        if keyword in out:
            setattr(out, keyword, int(value))
    out.SeriesInstanceUID = series_uid
    out.SOPInstanceUID = generate_uid()
    if getattr(out, "file_meta", None) is not None:
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    description = str(ds.get("SeriesDescription", "") or "")
    out.SeriesDescription = (description[: _LO_MAX_CHARS - len(MAR_SERIES_SUFFIX)] + MAR_SERIES_SUFFIX).strip()
    try:
        number = int(ds.get("SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    out.SeriesNumber = number + MAR_SERIES_NUMBER_OFFSET
    image_type = list(ds.get("ImageType", []) or [])
    out.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    if derivation:
        out.DerivationDescription = derivation[:1024]  # VR ST holds at most 1024 characters
    syntax, _ = output_transfer_syntax(ds)
    if syntax is not None and getattr(out, "file_meta", None) is not None:
        current = out.file_meta.get("TransferSyntaxUID")
        if syntax != current:
            if syntax.is_compressed:
                out.compress(syntax, generate_instance_uid=False)
            else:  # deflated or an uncompressed syntax: pydicom writes it on save
                out.file_meta.TransferSyntaxUID = syntax
    return out


def output_transfer_syntax(ds: Any) -> tuple[Any, str]:
    """The transfer syntax a corrected copy of ``ds`` is written with, and why.

    Returns:
        ``(uid, reason)``: the input's syntax when pydicom can write it losslessly here, else
        Explicit VR Little Endian (``reason`` then says why: a lossy input syntax, which eqmar does
        not re-encode, or no encoder for it in this environment); ``uid`` is None for a dataset
        without file meta information.
    """
    from pydicom.uid import UID, ExplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return None, "no file meta information"
    syntax = UID(meta.TransferSyntaxUID)
    if not syntax.is_compressed:
        if syntax.is_little_endian:
            return syntax, "kept"
        return ExplicitVRLittleEndian, (f"{syntax.name} (big endian) is retired; "
                                        f"written as {ExplicitVRLittleEndian.name}")
    if not _is_lossless(syntax):
        return ExplicitVRLittleEndian, (f"{syntax.name} is lossy and eqmar does not compress lossily again; "
                                        f"written as {ExplicitVRLittleEndian.name}")
    from pydicom.pixels import get_encoder

    try:
        available = get_encoder(syntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        return ExplicitVRLittleEndian, (f"pydicom has no encoder for {syntax.name} in this environment; "
                                        f"written as {ExplicitVRLittleEndian.name}")
    return syntax, "kept"


def _is_lossless(syntax: Any) -> bool:
    from pydicom import uid

    lossless = {uid.RLELossless, uid.JPEGLosslessSV1, uid.JPEGLossless, uid.JPEGLSLossless, uid.JPEG2000Lossless,
                getattr(uid, "HTJ2KLossless", None), getattr(uid, "HTJ2KLosslessRPCL", None)}
    return syntax in lossless


def write_dicom_series(
    datasets: list[Any], hu_slices: list[np.ndarray], paths: list[str | os.PathLike], derivation: str = ""
) -> list[Path]:
    """Write corrected slices as one new DICOM series.

    Args:
        datasets: the input datasets of one series.
        hu_slices: corrected HU per dataset.
        paths: output file per dataset.
        derivation: text for DerivationDescription.

    Returns:
        The written paths.
    """
    from pydicom.uid import generate_uid

    if not len(datasets) == len(hu_slices) == len(paths):
        raise ValueError("write_dicom_series: datasets, slices and paths must have the same length.")
    series_uid = generate_uid()
    syntax, reason = output_transfer_syntax(datasets[0]) if datasets else (None, "")
    if syntax is not None and reason != "kept":
        logger.warning("%s: %s", Path(paths[0]).parent if len(paths) > 1 else paths[0], reason)
    written = []
    for ds, hu, path in zip(datasets, hu_slices, paths, strict=True):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        mar_dicom_dataset(ds, hu, series_uid, derivation).save_as(path, enforce_file_format=True)
        written.append(path)
    return written


class SaveHUNiftid:
    """Dictionary transform: write each ``keys`` volume as ``<output_dir>/<input name>_<postfix>.nii.gz``.

    The MONAI bundle's saver. Unlike MONAI's ``SaveImaged`` it keeps a NIfTI input's own header
    (qform/sform codes, units), as ``python -m eqmar.infer`` does (:func:`write_hu_nifti`); a DICOM
    input gets its RAS affine in scanner millimetres.

    Args:
        keys: keys of ``(1, X, Y[, Z])`` HU tensors whose metadata name the input file
            (``filename_or_obj``, as :class:`~eqmar.data.ct_input.LoadCTd` records it).
        output_dir: output folder (created).
        output_postfix: appended to the input's name.
    """

    def __init__(self, keys: str | Sequence[str], output_dir: str | os.PathLike, output_postfix: str = "mar") -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.keys:
            value = d[key]
            meta = getattr(value, "meta", {}) or {}
            source = str(meta.get("filename_or_obj", "") or "image")
            name = Path(source.rstrip("/")).name
            for suffix in (*NIFTI_SUFFIXES, ".dcm"):
                if name.lower().endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
            affine = getattr(value, "affine", None)
            affine = (
                None if affine is None else np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine)
            )
            target = self.output_dir / f"{name}_{self.output_postfix}.nii.gz"
            write_hu_nifti(target, array[0], affine, source)
            logger.info("wrote %s", target)
        return d
