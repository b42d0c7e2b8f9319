"""Command line metal artifact reduction with a saved eqmar MAR model (``eqmar-infer``, ``python -m eqmar.infer``).

Usage::

    eqmar-infer --checkpoint model.pt --input INPUT --output OUTDIR
        [--device auto|cpu|cuda] [--metal-threshold 2500] [--mask MASK]
        [--trace-model interpolating|line] [--quiet]

Inputs and what is written to ``OUTDIR``:

* DeepLesion 16-bit PNG (HU + 32768): a PNG of the same name and encoding.
* a folder of PNG and/or NIfTI files: each file as above; unreadable files are reported on stderr
  and skipped.
* NIfTI volume (``.nii``/``.nii.gz``): float32 HU NIfTI of the same name, affine and header
  geometry; axial slices are corrected in display orientation (see
  :func:`eqmar.apps.mar.writers.nifti_to_axial`).
* DICOM file: a DICOM file of the same name in a new series.
* DICOM series folder: a new series per SeriesInstanceUID in ``OUTDIR/<folder>_MAR`` (with the
  series number appended when the folder holds several), file names kept; see
  :mod:`eqmar.apps.mar.writers` for what changes in the datasets.

``--mask`` (a single file or DICOM series only) gives the metal mask instead of the HU threshold:
a ``.npy``, ``.png`` or NIfTI file, nonzero = metal, shaped like the input: (H, W) for a PNG or
DICOM file, the voxel array of a NIfTI volume, (Z, H, W) in InstanceNumber order for a DICOM series.

Exit status: 0 when everything was corrected, 1 when some files of a folder were skipped, 2 for a
bad checkpoint, a missing or unreadable input, or a folder in which nothing could be processed.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eqmar.utils import require_extra

require_extra(__name__, "nibabel", "pydicom", "PIL", "scipy", "tqdm", extra="infer")

__all__ = ["build_parser", "main", "InferenceInputError"]

_PROG = "python -m eqmar.infer"


def _prog() -> str:
    """The name the user typed: the console script ``eqmar-infer``, else ``python -m eqmar.infer``."""
    return "eqmar-infer" if Path(sys.argv[0]).name == "eqmar-infer" else _PROG
# mirrors of eqmar.apps.mar.inference constants, kept here so that --help stays instant (tests check them)
_DEFAULT_THRESHOLD_TEXT = "2500"
_TRACE_MODELS = ("interpolating", "line")


class InferenceInputError(Exception):
    """A problem with an input, mask or checkpoint, reported as one line with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m eqmar.infer`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Reduce metal artifacts in CT images (DeepLesion PNG, NIfTI, DICOM) with a trained eqmar model.",
        epilog="Exit status: 0 all corrected, 1 some folder files skipped, 2 bad checkpoint or input.",
    )
    parser.add_argument("--checkpoint", required=True, help="model file written by eqmar (save_mar_model)")
    parser.add_argument(
        "--input", required=True, help="DeepLesion PNG, NIfTI, DICOM file, DICOM series folder or folder of PNG/NIfTI"
    )
    parser.add_argument("--output", required=True, help="output folder (created if needed)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--metal-threshold",
        type=float,
        default=None,
        help=f"HU above which pixels are metal when no --mask is given (default {_DEFAULT_THRESHOLD_TEXT} HU)",
    )
    parser.add_argument(
        "--mask", help="metal mask file (.npy, .png, .nii, .nii.gz; nonzero = metal) for a single input file or series"
    )
    parser.add_argument(
        "--trace-model",
        choices=_TRACE_MODELS,
        default=None,
        help="ray model of the metal trace: interpolating or line (faster on CPU); default: the one the model "
        "was trained with (line for the shipped model, whose training saw the clinical route's inputs)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-file lines")
    return parser


# ------------------------------------------------------------------------------------- helpers
def _is_nifti(path: Path) -> bool:
    from eqmar.data.ct_input import NIFTI_SUFFIXES

    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _load_mask(path: str | os.PathLike) -> np.ndarray:
    """A boolean mask from .npy, any PNG or NIfTI (voxel order)."""
    p = Path(path)
    if not p.is_file():
        raise InferenceInputError(f"mask file not found: {p}")
    try:
        if p.suffix.lower() == ".npy":
            array = np.load(p, allow_pickle=False)
        elif p.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(p) as image:
                array = np.asarray(image)
        elif _is_nifti(p):
            import nibabel as nib

            array = np.asanyarray(nib.load(str(p)).dataobj)
        else:
            raise InferenceInputError(f"{p}: unsupported mask type; use .npy, .png, .nii or .nii.gz")
    except InferenceInputError:
        raise
    except Exception as error:  # numpy, Pillow and nibabel raise many types for bad files
        raise InferenceInputError(f"{p}: cannot read the mask: {error}") from error
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise InferenceInputError(f"{p}: mask must be numeric, got dtype {array.dtype}")
    return np.asarray(array) > 0


def _check_mask_shape(mask: np.ndarray | None, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    if mask is not None and mask.shape != shape:
        raise InferenceInputError(f"--mask has shape {mask.shape}, but {what} has shape {shape}")
    return mask


def _output_path(out_dir: Path, source: Path) -> Path:
    target = out_dir / source.name
    if target.resolve() == source.resolve():
        raise InferenceInputError(f"{source}: output would overwrite the input; choose another --output folder")
    return target


class _Runner:
    """Processes inputs with one :class:`MARInference` engine and reports what it wrote."""

    def __init__(self, engine: Any, out_dir: Path, quiet: bool) -> None:
        self.engine = engine
        self.out_dir = out_dir
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message)

    def _correct(
        self, volume: np.ndarray, mask: np.ndarray | None, name: str
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        from eqmar.data.ct_input import check_ct_hu

        check_ct_hu(volume, name)  # the check of the bundle and the MONAI Label app: CT in HU, or a one-line error
        # the "no metal" warning is reported in the per-file line instead of as a Python warning
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            progress = not self.quiet and volume.shape[0] > 1
            return self.engine.correct_volume(volume, mask, progress=progress, description=name)

    def _report(self, target: Path, infos: Sequence[dict[str, Any]]) -> None:
        metal = sum(info["metal_pixels"] for info in infos)
        with_metal = sum(info["metal_pixels"] > 0 for info in infos)
        note = "" if with_metal else "; no metal found, written unchanged"
        self.say(f"wrote {target} ({with_metal}/{len(infos)} slice(s) with metal, {metal} metal pixels{note})")

    def derivation(self) -> str:
        from eqmar import __version__

        backbone = (self.engine.payload.get("network") or {}).get("backbone", "?")
        return f"Metal artifact reduction by eqmar {__version__} ({backbone} model {self.engine.model_path.name})"

    # --------------------------------------------------------------------------- file kinds
    def png(self, path: Path, mask: np.ndarray | None = None) -> None:
        from eqmar.apps.mar.writers import write_deeplesion_png
        from eqmar.data.readers import DeepLesionPNGReader

        reader = DeepLesionPNGReader(reverse_indexing=False)
        hu, _ = reader.get_data(reader.read(path))
        mask = _check_mask_shape(mask, hu.shape, str(path))
        target = _output_path(self.out_dir, path)
        corrected, infos = self._correct(hu[None], None if mask is None else mask[None], path.name)
        write_deeplesion_png(target, corrected[0])
        self._report(target, infos)

    def nifti(self, path: Path, mask: np.ndarray | None = None) -> None:
        from eqmar.apps.mar.writers import axial_to_nifti, nifti_to_axial, write_nifti_like
        from eqmar.data.readers import CTNiftiReader

        reader = CTNiftiReader()
        image = reader.read(path)
        data, _ = reader.get_data(image)
        data = np.asarray(data).reshape(image.shape)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim not in (2, 3):
            raise InferenceInputError(f"{path}: expected a 2-D or 3-D NIfTI image, got shape {data.shape}")
        mask = _check_mask_shape(mask, data.shape, str(path))
        volume = data if data.ndim == 3 else data[:, :, None]
        affine = image.affine
        axial = nifti_to_axial(volume, affine)
        axial_mask = None if mask is None else nifti_to_axial(mask.reshape(volume.shape), affine)
        corrected, infos = self._correct(axial, axial_mask, path.name)
        target = _output_path(self.out_dir, path)
        write_nifti_like(target, axial_to_nifti(corrected, affine).reshape(image.shape), image)
        self._report(target, infos)

    def dicom(self, path: Path, mask: np.ndarray | None = None) -> int:
        """A DICOM file or series folder (one output series per SeriesInstanceUID).

        Returns the number of files of a folder skipped because they could not be read.
        """
        from eqmar.apps.mar.writers import write_dicom_series

        images, skipped = self._read_dicom(path)
        series = _group_series(images)
        if mask is not None and len(series) > 1:
            raise InferenceInputError(f"{path}: --mask needs a single series, found {len(series)}")
        for number, (key, members) in enumerate(series.items()):
            shapes = {hu.shape for _, _, hu in members}
            if len(shapes) > 1:
                raise InferenceInputError(f"{path}: series {key} mixes image sizes {sorted(shapes)}")
            volume = np.stack([hu for _, _, hu in members])
            volume_mask = None
            if mask is not None:
                stacked = mask if mask.ndim == 3 else mask[None]
                volume_mask = _check_mask_shape(stacked, volume.shape, f"{path} (Z, H, W)")
            corrected, infos = self._correct(volume, volume_mask, path.name)
            if path.is_dir():
                series_number = members[0][0].get("SeriesNumber", number)
                folder = f"{path.name}_MAR" if len(series) == 1 else f"{path.name}_{series_number}_MAR"
                targets = [self.out_dir / folder / name.name for _, name, _ in members]
            else:
                targets = [_output_path(self.out_dir, path)]
            write_dicom_series([ds for ds, _, _ in members], list(corrected), targets, self.derivation())
            self._report(targets[0].parent if path.is_dir() else targets[0], infos)
        return skipped

    def _read_dicom(self, path: Path) -> tuple[list[tuple[Any, Path, np.ndarray]], int]:
        """(dataset, file, HU) of a DICOM file, or of every readable CT image of a folder.

        Files are read one by one so that a bad file of a folder is reported and skipped; a bad
        single file is an error.
        """
        from pydicom.misc import is_dicom

        from eqmar.data.readers import CTDicomReader

        files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file() and is_dicom(f))
        images, skipped = [], 0
        for file in files:
            try:
                reader = CTDicomReader(swap_ij=False)  # (row, column): the stored display order
                ds = reader.read(file)
                frames = int(ds.get("NumberOfFrames", 1) or 1)
                if frames > 1:
                    raise ValueError(f"{file}: multi-frame DICOM ({frames} frames) is not supported yet")
                images.append((ds, file, reader.get_data(ds)[0]))
            except (ValueError, OSError) as error:
                if path.is_file():
                    raise
                skipped += 1
                _report_skipped(file, error)
        if not images:
            raise InferenceInputError(f"{path}: none of the {len(files)} DICOM file(s) could be read")
        return images, skipped

    def folder(self, path: Path) -> int:
        """Every PNG and NIfTI file of a folder; returns the number of failed files."""
        files = sorted(f for f in path.iterdir() if f.is_file())
        candidates = [f for f in files if f.suffix.lower() == ".png" or _is_nifti(f)]
        if not candidates:
            raise InferenceInputError(f"{path}: folder holds no DICOM, PNG or NIfTI files")
        failed = 0
        for file in candidates:
            try:
                self.png(file) if file.suffix.lower() == ".png" else self.nifti(file)
            except (InferenceInputError, ValueError, OSError) as error:
                failed += 1
                _report_skipped(file, error)
        if failed == len(candidates):
            raise InferenceInputError(f"{path}: none of the {failed} image file(s) could be processed")
        return failed


def _report_skipped(file: Path, error: Exception) -> None:
    message = str(error)
    prefix = "" if message.startswith(str(file)) else f"{file}: "  # readers already name the file
    print(f"{_prog()}: skipped {prefix}{message}", file=sys.stderr)


def _group_series(images: list[tuple[Any, Path, np.ndarray]]) -> dict[str, list[tuple[Any, Path, np.ndarray]]]:
    """Images grouped by SeriesInstanceUID, each group sorted by InstanceNumber."""
    groups: dict[str, list[tuple[Any, Path, np.ndarray]]] = {}
    for image in images:
        groups.setdefault(str(image[0].get("SeriesInstanceUID", "")), []).append(image)
    for members in groups.values():
        members.sort(key=lambda image: (int(image[0].get("InstanceNumber", 0) or 0), image[1].name))
    return groups


def _input_kind(source: Path) -> str:
    """``"dicom"`` (file or series folder), ``"folder"`` (PNG/NIfTI files), ``"png"`` or ``"nifti"``."""
    from eqmar.data.ct_input import holds_dicom, is_dicom_file

    if not source.exists():
        raise InferenceInputError(f"input not found: {source}")
    if source.is_dir():
        if not holds_dicom(source):
            return "folder"
        others = [f.name for f in sorted(source.iterdir())
                  if f.is_file() and (f.suffix.lower() == ".png" or _is_nifti(f))]
        if others:
            raise InferenceInputError(
                f"{source}: folder mixes DICOM files with {len(others)} PNG/NIfTI file(s) ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}); put the DICOM series and the other images in separate folders"
            )
        return "dicom"
    if source.suffix.lower() == ".png":
        return "png"
    if _is_nifti(source):
        return "nifti"
    if is_dicom_file(source):
        return "dicom"
    raise InferenceInputError(f"{source}: unsupported input; expected a DeepLesion .png, NIfTI, DICOM file or folder")


def _load_engine(args: argparse.Namespace) -> Any:
    from eqmar.apps.mar.inference import DEFAULT_METAL_THRESHOLD_HU, MARInference
    from eqmar.utils import resolve_torch_device

    threshold = DEFAULT_METAL_THRESHOLD_HU if args.metal_threshold is None else args.metal_threshold
    try:
        device = resolve_torch_device(args.device)
    except ValueError as error:
        raise InferenceInputError(f"--device: {error}") from error
    try:
        return MARInference(args.checkpoint, device=device, metal_threshold_hu=threshold, trace_model=args.trace_model)
    except (FileNotFoundError, ValueError) as error:
        # torch's unpickling errors run over many lines; the first one names the problem
        message = (str(error).splitlines() or [type(error).__name__])[0]
        name = "" if str(args.checkpoint) in message else f" {args.checkpoint}"  # most messages name the file
        raise InferenceInputError(f"--checkpoint{name}: {message}") from error


def _run(args: argparse.Namespace) -> int:
    source = Path(args.input)
    kind = _input_kind(source)
    if args.mask is not None and kind == "folder":
        raise InferenceInputError("--mask applies to a single input file or DICOM series, not a folder of images")
    mask = None if args.mask is None else _load_mask(args.mask)
    engine = _load_engine(args)
    out_dir = Path(args.output)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = _Runner(engine, out_dir, args.quiet)
    try:
        if kind == "folder":
            return 1 if runner.folder(source) else 0
        if kind == "dicom":
            return 1 if runner.dicom(source, mask) else 0
        runner.png(source, mask) if kind == "png" else runner.nifti(source, mask)
    finally:
        engine.close()
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a run that wrote nothing leaves no empty output folder behind
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (InferenceInputError, ValueError, FileNotFoundError, OSError) as error:
        print(f"{_prog()}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
