"""Reliability of the readers and loaders: a fuzz table of bad inputs.

Every bad input must end in a clear exception (FileNotFoundError or ValueError) whose message names
the file and the problem, or in a documented fallback; never an IndexError, KeyError or a NumPy,
Pillow, pydicom, nibabel or SciPy error from deep inside. docs/reliability.md lists the outcomes.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eqmar.data.masks import generate_masks, load_masks
from eqmar.data.readers import DEEPLESION_HU_OFFSET, CTDicomReader, CTNiftiReader, DeepLesionPNGReader
from eqmar.data.slices import load_ct_slices
from eqmar.data.synthesis import ImageSource, SynthesisConfig, synthesize_dataset

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from PIL import Image  # noqa: E402

CONFIG = SynthesisConfig(image_size=64, num_views=60, device="cpu")


# ------------------------------------------------------------------------------- bad files


def _ct_small() -> Any:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's CT_small.dcm is not installed")
    return pydicom.dcmread(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_16bit_rgb(path: Path, size: int = 16) -> Path:
    """A valid 16-bit-per-channel RGB PNG, which Pillow cannot write (it opens it as 8-bit RGB)."""
    rows = b"".join(b"\x00" + bytes(6 * size) for _ in range(size))  # filter byte + RGB16 pixels
    header = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def _png8(path: Path, image_format: str = "PNG") -> Path:
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(path, image_format)
    return path


def _png16(path: Path, hu: np.ndarray) -> Path:
    Image.fromarray((hu + DEEPLESION_HU_OFFSET).astype(np.uint16)).save(path)
    return path


def _truncated(path: Path, write: Callable[[Path], Path], keep: float = 0.5) -> Path:
    full = write(path.with_name("full_" + path.name))
    data = full.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    full.unlink()
    return path


def _dicom(path: Path, edit: Callable[[Any], None] = lambda ds: None) -> Path:
    ds = _ct_small()
    edit(ds)
    ds.save_as(path)
    return path


def _delete(*keywords: str) -> Callable[[Any], None]:
    def edit(ds: Any) -> None:
        for keyword in keywords:
            delattr(ds, keyword)

    return edit


def _non_square_dicom(ds: Any) -> None:
    ds.PixelData = ds.pixel_array[:, :96].copy().tobytes()
    ds.Columns = 96


def _corrupt_dicom(path: Path) -> Path:
    """The DICOM preamble and prefix (so it is recognised as DICOM) followed by random bytes."""
    path.write_bytes(b"\x00" * 128 + b"DICM" + np.random.default_rng(0).bytes(400))
    return path


def _mixed_series(path: Path) -> Path:
    """A series folder whose slices have different sizes, which cannot be stacked into a volume."""
    path.mkdir()
    for number, edit in enumerate([lambda ds: None, _non_square_dicom], start=1):
        def numbered(ds: Any, edit: Callable[[Any], None] = edit, number: int = number) -> None:
            edit(ds)
            ds.InstanceNumber = number
            ds.ImagePositionPatient = [0.0, 0.0, 5.0 * number]

        _dicom(path / f"{number}.dcm", numbered)
    return path


def _nifti(path: Path, volume: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), path)
    return path


def _body_volume(shape: tuple[int, ...] = (32, 32, 4)) -> np.ndarray:
    volume = np.full(shape, -1000.0, np.float32)
    volume[8:24, 8:24] = 40.0
    return volume


def _body_volume_with_slice_of(value: float) -> np.ndarray:
    volume = _body_volume()
    volume[:, :, 1] = value
    return volume


def _write(data: bytes) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return make


def _npy(array: np.ndarray, allow_pickle: bool = False) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        np.save(path, array, allow_pickle=allow_pickle)
        return path

    return make


def _mat(variables: dict[str, np.ndarray]) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        from scipy.io import savemat

        savemat(path, variables)
        return path

    return make


def _fake_mat73(path: Path) -> Path:
    """A MATLAB 7.3 header (so SciPy hands over to HDF5) followed by bytes that are not HDF5."""
    path.write_bytes(b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * 300)
    return path


# --------------------------------------------------------------------------- the loaders


def read_png(path: Path) -> Any:
    reader = DeepLesionPNGReader()
    return reader.get_data(reader.read(path))


def read_dicom(path: Path) -> Any:
    reader = CTDicomReader()
    return reader.get_data(reader.read(path))


def read_nifti(path: Path) -> Any:
    reader = CTNiftiReader()
    return reader.get_data(reader.read(path))


@dataclass(frozen=True)
class BadFile:
    """One fuzz case: a file maker, the loaders it is fed to, and the error each must raise."""

    name: str
    file_name: str
    make: Callable[[Path], Path] | None  # None: the file does not exist
    loaders: tuple[Callable[[Path], Any], ...]
    error: type[Exception]
    problem: str  # regex the message must match besides the file name


_ZERO = b""
# The loaders each kind of bad file is fed to: its own reader and the dispatcher the synthesis uses.
_PNG = (read_png, load_ct_slices)
_DICOM = (read_dicom, load_ct_slices)
_NIFTI = (read_nifti, load_ct_slices)
_SLICES = (load_ct_slices,)
_MASKS = (load_masks,)
BAD_FILES = [
    # DeepLesion PNG
    BadFile("truncated PNG", "1.png", lambda p: _truncated(p, lambda q: _png16(q, np.zeros((32, 32)))),
            _PNG, ValueError, "corrupt or truncated"),
    BadFile("8-bit PNG", "1.png", _png8, _PNG, ValueError, "16-bit grayscale.*8-bit"),
    BadFile("16-bit RGB PNG", "1.png", _png_16bit_rgb, _PNG, ValueError, "16-bit grayscale.*colour"),
    BadFile("zero-byte PNG", "1.png", _write(_ZERO), _PNG, ValueError, "corrupt or truncated"),
    BadFile("non-square PNG", "1.png", lambda p: _png16(p, np.zeros((32, 40))), _PNG, ValueError, "square"),
    BadFile("JPEG named .png", "1.png", lambda p: _png8(p, "JPEG"), _PNG, ValueError, "expected a PNG"),
    BadFile("missing PNG", "1.png", None, _PNG, FileNotFoundError, "not found"),
    # DICOM
    BadFile("MR DICOM", "mr.dcm", lambda p: _dicom(p, lambda ds: setattr(ds, "Modality", "MR")),
            _DICOM, ValueError, "Modality is 'MR'"),
    BadFile("DICOM without pixel data", "nopix.dcm", lambda p: _dicom(p, _delete("PixelData")),
            _DICOM, ValueError, "no pixel data"),
    BadFile("DICOM without rescale tags", "norescale.dcm",
            lambda p: _dicom(p, _delete("RescaleSlope", "RescaleIntercept")),
            _DICOM, ValueError, "RescaleIntercept.*HU"),
    BadFile("DICOM without RescaleIntercept", "noicpt.dcm", lambda p: _dicom(p, _delete("RescaleIntercept")),
            _DICOM, ValueError, "RescaleIntercept.*HU"),
    BadFile("corrupt DICOM bytes", "corrupt.dcm", _corrupt_dicom, _DICOM, ValueError, "not a readable DICOM"),
    BadFile("zero-byte DICOM", "empty.dcm", _write(_ZERO), _DICOM, ValueError,
            r"empty.dcm: empty file \(0 bytes\), not a DICOM file$"),
    BadFile("truncated DICOM", "trunc.dcm", lambda p: _truncated(p, _dicom, keep=0.6),
            _DICOM, ValueError, "pixel data"),
    BadFile("non-square DICOM", "rect.dcm", lambda p: _dicom(p, _non_square_dicom), _SLICES, ValueError, "square"),
    BadFile("series of mixed sizes", "series", _mixed_series,
            _DICOM, ValueError, "slices of this series differ in size"),
    BadFile("missing DICOM", "gone.dcm", None, _DICOM, FileNotFoundError, "not found"),
    # NIfTI
    BadFile("NaN-filled NIfTI", "nan.nii.gz", lambda p: _nifti(p, np.full((32, 32, 4), np.nan)),
            _NIFTI, ValueError, "NaN or infinite"),
    BadFile("Inf in NIfTI", "inf.nii.gz", lambda p: _nifti(p, _body_volume_with_slice_of(np.inf)),
            _NIFTI, ValueError, "NaN or infinite"),
    BadFile("4-D NIfTI", "4d.nii.gz", lambda p: _nifti(p, _body_volume((32, 32, 4, 2))),
            _SLICES, ValueError, "2-D or 3-D"),
    BadFile("text named .nii.gz", "text.nii.gz", _write(b"patient notes, not an image\n"),
            _NIFTI, ValueError, "not a readable NIfTI"),
    BadFile("zero-byte NIfTI", "empty.nii", _write(_ZERO), _NIFTI, ValueError, "not a readable NIfTI"),
    BadFile("truncated NIfTI", "trunc.nii.gz", lambda p: _truncated(p, lambda q: _nifti(q, _body_volume()), keep=0.3),
            _NIFTI, ValueError, "NIfTI"),
    BadFile("non-square NIfTI", "rect.nii.gz", lambda p: _nifti(p, _body_volume((32, 40, 4))),
            _SLICES, ValueError, "square"),
    BadFile("NIfTI without body", "air.nii.gz", lambda p: _nifti(p, np.full((32, 32, 4), -1000.0)),
            _SLICES, ValueError, "no axial slice"),
    BadFile("missing NIfTI", "gone.nii.gz", None, _NIFTI, FileNotFoundError, "not found"),
    BadFile("unsupported file type", "scan.txt", _write(b"hello"), _SLICES, ValueError, "unsupported file type"),
    # mask files
    BadFile(".npy masks with 1 dimension", "m.npy", _npy(np.zeros(16, np.uint8)), _MASKS, ValueError, r"\(H, W, N\)"),
    BadFile(".npy masks with 4 dimensions", "m.npy", _npy(np.zeros((8, 8, 2, 2), np.uint8)),
            _MASKS, ValueError, r"\(H, W, N\)"),
    BadFile("non-binary .npy masks", "m.npy", _npy(np.full((8, 8, 2), 7, np.uint8)), _MASKS, ValueError, "binary"),
    BadFile("non-square .npy masks", "m.npy", _npy(np.zeros((8, 6, 2), np.uint8)), _MASKS, ValueError, "square"),
    BadFile("float 0.5 .npy masks", "m.npy", _npy(np.full((8, 8, 2), 0.5)), _MASKS, ValueError, "binary"),
    BadFile("pickled .npy masks", "m.npy", _npy(np.array([{"mask": 1}], dtype=object), allow_pickle=True),
            _MASKS, ValueError, "holds pickled Python objects, not a mask array; not loaded$"),
    BadFile("corrupt .npy bytes", "m.npy", _write(b"\x93NUMPY garbage" * 4), _MASKS, ValueError, "not a readable .npy"),
    BadFile("zero-byte .npy", "m.npy", _write(_ZERO), _MASKS, ValueError, "not a readable .npy"),
    BadFile("corrupt .mat", "SampleMasks.mat", _write(np.random.default_rng(1).bytes(600)),
            _MASKS, ValueError, "not a readable .mat"),
    BadFile("zero-byte .mat", "SampleMasks.mat", _write(_ZERO), _MASKS, ValueError, "not a readable .mat"),
    BadFile("truncated .mat", "SampleMasks.mat",
            lambda p: _truncated(p, _mat({"CT_samples_bwMetal": np.ones((64, 64, 3), np.uint8)}), keep=0.5),
            _MASKS, ValueError, "not a readable .mat"),
    BadFile("fake MATLAB 7.3 .mat", "SampleMasks.mat", _fake_mat73, _MASKS, ValueError, "not a readable .mat"),
    BadFile(".mat without the mask variable", "SampleMasks.mat", _mat({"other": np.zeros((8, 8))}),
            _MASKS, ValueError, "variable 'CT_samples_bwMetal' not found"),
    BadFile(".mat masks with 4 dimensions", "SampleMasks.mat", _mat({"CT_samples_bwMetal": np.zeros((8, 8, 2, 2))}),
            _MASKS, ValueError, r"\(H, W, N\)"),
    BadFile("missing mask file", "SampleMasks.mat", None, _MASKS, FileNotFoundError, "not found"),
    BadFile("mask file of unknown type", "masks.png", _write(b"png?"), _MASKS, ValueError, "unsupported"),
]
FILE_CASES = [
    pytest.param(case, loader, id=f"{case.name} -> {loader.__name__}") for case in BAD_FILES for loader in case.loaders
]


@pytest.mark.parametrize(("case", "loader"), FILE_CASES)
def test_bad_file_raises_a_clear_error(tmp_path: Path, case: BadFile, loader: Callable[[Path], Any]) -> None:
    path = tmp_path / case.file_name
    if case.make is not None:
        path = case.make(path)
    with pytest.raises(case.error, match=case.problem) as info:
        loader(path)
    assert type(info.value) in (case.error, FileNotFoundError, ValueError), "a library error subclass leaked"
    assert path.name in str(info.value), f"the message does not name the file: {info.value}"


# ------------------------------------------------------------------------- bad mask arrays


def _masks(k: int = 2) -> np.ndarray:
    return generate_masks(k, size=128, seed=0)


def _empty_second(masks: np.ndarray) -> np.ndarray:
    masks = masks.copy()
    masks[:, :, 1] = 0
    return masks


BAD_MASK_STACKS = [
    pytest.param(lambda: _empty_second(_masks()), r"masks \[1\] .*empty", id="empty mask (all zeros)"),
    pytest.param(lambda: _masks()[..., None], r"\(H, W, N\)", id="4-D mask stack"),
    pytest.param(lambda: _masks()[:, :100], "square", id="non-square masks"),
    pytest.param(lambda: _masks() * 0.5, "binary", id="float 0.5 masks"),
    pytest.param(lambda: _masks().astype(np.int16) * 3, "binary", id="0/3 int16 masks"),
    pytest.param(lambda: np.zeros((128, 128, 0), np.uint8), "no masks", id="stack of zero masks"),
]


@pytest.mark.parametrize(("make_masks", "problem"), BAD_MASK_STACKS)
def test_bad_mask_stack_is_rejected_before_any_simulation(tmp_path: Path, make_masks: Callable, problem: str) -> None:
    source = ImageSource("phantom_abdomen/000", kind="phantom", index=0, variant="abdomen")
    with pytest.raises(ValueError, match=problem) as info:
        synthesize_dataset([source], make_masks(), tmp_path, "train", CONFIG, progress=False)
    assert "train" in str(info.value)  # names the split whose masks are bad
    assert not list(tmp_path.rglob("*.h5")) and not (tmp_path / "trainmask.npy").exists()


def test_documented_mask_fallbacks(tmp_path: Path) -> None:
    """A single (H, W) mask is a stack of one, 0/255 values are binary, and a mask larger than the body is simulated.

    With every pixel metal, the trace covers all detector bins that see the image square; linear
    interpolation bridges it from the outer bins (interpolate_trace leaves a view that is entirely
    in the trace unchanged), so the pair is written with finite values.
    """
    import h5py

    source = ImageSource("phantom_abdomen/000", kind="phantom", index=0, variant="abdomen")
    everywhere = np.full((128, 128), 255, np.uint8)
    report = synthesize_dataset([source], everywhere, tmp_path, "train", CONFIG, progress=False)
    assert report.images_complete == 1 and not report.failures
    stored = np.load(tmp_path / "trainmask.npy")
    assert stored.shape == (128, 128, 1) and set(np.unique(stored)) == {1}  # stored 0/1, as the loaders need
    with h5py.File(next(tmp_path.rglob("0.h5")), "r") as f:
        assert f["metal_trace"][()].mean() > 0.5 and all(np.isfinite(f[k][()]).all() for k in f)


def test_dicom_without_rescale_reads_stored_values_when_asked(tmp_path: Path) -> None:
    """``require_rescale=False`` is the documented way to read stored values as HU."""
    path = _dicom(tmp_path / "norescale.dcm", _delete("RescaleSlope", "RescaleIntercept"))
    reader = CTDicomReader(require_rescale=False, swap_ij=False)
    hu, _ = reader.get_data(reader.read(path))
    np.testing.assert_array_equal(hu, _ct_small().pixel_array.astype(np.float32))


# -------------------------------------------------------------------------- mixed scan folder


def test_cli_on_a_folder_mixing_good_and_bad_scans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--scans: bad scans are listed in the report and skipped; the good ones produce pairs."""
    scans = tmp_path / "scans"
    scans.mkdir()
    # DICOM files named by their UIDs, with or without .dcm, as PACS exports do: the series ids
    # must not collapse to "1", and the file without a suffix must not be ignored.
    uid = "1.2.826.0.1.3680043.2.1125"
    for name in (f"{uid}.1.dcm", f"{uid}.2.dcm", f"{uid}.3"):
        _dicom(scans / name)
    _nifti(scans / "patient1.nii.gz", _body_volume((32, 32, 3)))
    bad = {
        "mr.dcm": lambda p: _dicom(p, lambda ds: setattr(ds, "Modality", "MR")),
        "nan.nii.gz": lambda p: _nifti(p, np.full((32, 32, 3), np.nan)),
        "notes.nii.gz": _write(b"not an image"),
        "air.nii.gz": lambda p: _nifti(p, np.full((32, 32, 3), -1000.0)),
        "half.dcm": lambda p: _truncated(p, _dicom, keep=0.6),
    }
    for name, make in bad.items():
        make(scans / name)
    out = tmp_path / "out"
    from eqmar.data import cli as synthesize_mar
    argv = ["--scans", str(scans), "--out", str(out), "--split", "test", "--mask-indices", "0", "--image-size", "64",
            "--views", "60", "--device", "cpu", "--no-progress"]
    assert synthesize_mar.main(argv) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "synthesis_report_test.json").read_text())
    rejected = {Path(entry["source"]).name: entry["error"] for entry in report["rejected_inputs"]}
    assert set(rejected) == set(bad), report
    assert "Modality is 'MR'" in rejected["mr.dcm"] and "NaN or infinite" in rejected["nan.nii.gz"]
    assert "no axial slice" in rejected["air.nii.gz"]
    assert all(name in rejected[name] for name in bad)  # every reason names its file
    assert not report["failures"] and report["images_complete"] == report["images_total"] == 3 + 3
    assert len(list(out.rglob("0.h5"))) == 6
    for name in bad:
        assert f"rejected {scans / name}" in stdout
