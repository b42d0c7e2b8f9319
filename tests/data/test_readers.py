"""Readers (DeepLesion PNG, DICOM CT, NIfTI) and load_ct_slices."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from eqmar.data.readers import (
    DEEPLESION_HU_OFFSET,
    CTDicomReader,
    CTNiftiReader,
    DeepLesionPNGReader,
    deeplesion_file_name,
    read_deeplesion_spacing,
)
from eqmar.data.slices import load_ct_slices, select_axial_slices

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from monai.transforms import LoadImage, LoadImaged  # noqa: E402
from PIL import Image  # noqa: E402


def _ct_small_path() -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's CT_small.dcm is not installed")
    return path


def _write_deeplesion_png(path: Path, hu: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((hu + DEEPLESION_HU_OFFSET).astype(np.uint16)).save(path)
    return path


@pytest.fixture()
def hu_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1024, 3000, size=(48, 48)).astype(np.int32)


@pytest.fixture()
def dl_info(tmp_path: Path) -> Path:
    csv_path = tmp_path / "DL_info.csv"
    csv_path.write_text(
        "File_name,Patient_index,Spacing_mm_px_,Image_size\n"
        '000001_01_01_109.png,1,"0.781250, 0.781250, 5.000000","512, 512"\n'
        '000002_02_01_048.png,2,"0.650000, 0.650000, 1.250000","512, 512"\n'
    )
    return csv_path


# ---------------------------------------------------------------------------------------- PNG


def test_png_reader_hu_offset_and_orientation(tmp_path, hu_image):
    path = _write_deeplesion_png(tmp_path / "000001_01_01" / "109.png", hu_image)
    # reverse_indexing=True (MONAI default): array axes are (x, y), i.e. the transpose.
    img = LoadImage(reader=DeepLesionPNGReader(), image_only=True)(str(path))
    assert img.dtype.is_floating_point
    np.testing.assert_array_equal(img.numpy().T, hu_image)
    reader = DeepLesionPNGReader(reverse_indexing=False)
    hu, meta = reader.get_data(reader.read(path))
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, hu_image)
    assert meta["filename_or_obj"] == str(path)


def test_png_reader_spacing_from_dl_info(tmp_path, hu_image, dl_info):
    listed = _write_deeplesion_png(tmp_path / "000001_01_01" / "109.png", hu_image)
    same_series = _write_deeplesion_png(tmp_path / "000001_01_01" / "110.png", hu_image)
    unknown = _write_deeplesion_png(tmp_path / "000009_01_01" / "001.png", hu_image)
    assert deeplesion_file_name(listed) == "000001_01_01_109.png"
    assert read_deeplesion_spacing(listed, dl_info) == (0.78125, 0.78125, 5.0)
    assert read_deeplesion_spacing(same_series, dl_info) == (0.78125, 0.78125, 5.0)
    assert read_deeplesion_spacing(unknown, dl_info) is None
    data = LoadImaged("image", reader=DeepLesionPNGReader(dl_info_csv=dl_info), image_only=True)(
        {"image": str(listed)}
    )
    np.testing.assert_allclose(data["image"].pixdim[:2].numpy(), [0.78125, 0.78125])
    assert data["image"].meta["slice_interval"] == 5.0


def test_png_reader_rejects_bad_files(tmp_path, hu_image):
    good = _write_deeplesion_png(tmp_path / "s" / "1.png", hu_image)
    truncated = tmp_path / "s" / "2.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    eight_bit = tmp_path / "s" / "3.png"
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(eight_bit)
    non_square = _write_deeplesion_png(tmp_path / "s" / "4.png", hu_image[:40])
    garbage = tmp_path / "s" / "5.png"
    garbage.write_bytes(b"not a png at all")
    reader = DeepLesionPNGReader()
    for path, message in [
        (truncated, "corrupt or truncated"),
        (eight_bit, "8-bit"),
        (non_square, "square"),
        (garbage, "corrupt or truncated"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            reader.read(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="6.png"):
        reader.read(tmp_path / "s" / "6.png")


# -------------------------------------------------------------------------------------- DICOM


def test_dicom_reader_hu_from_rescale():
    path = _ct_small_path()
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = LoadImage(reader=CTDicomReader(), image_only=True)(path)
    assert tuple(img.shape) == (128, 128)
    np.testing.assert_allclose(img.numpy().T, expected)  # MONAI default swap_ij
    np.testing.assert_allclose(img.pixdim[:2].numpy(), [0.661468, 0.661468], rtol=1e-6)
    assert expected.min() == -896.0  # real CT: air/lung around -900, bone > 1000
    assert expected.max() > 1000


def _write_series(folder: Path, instance_offsets: dict[int, float]) -> None:
    """Copies of CT_small with given InstanceNumber -> HU offset (added to the stored values)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(_ct_small_path())
    for i, (instance, offset) in enumerate(instance_offsets.items()):
        ds = copy.deepcopy(base)
        ds.InstanceNumber = instance
        ds.ImagePositionPatient = [-158.135803, -179.035797, -75.7 + 5.0 * instance]
        ds.PixelData = (base.pixel_array + int(offset)).astype(base.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"file{i}.dcm")
    (folder / "README.txt").write_text("not DICOM; must be skipped")


def test_dicom_series_sorted_by_instance(tmp_path):
    folder = tmp_path / "series"
    _write_series(folder, {3: 300, 1: 100, 2: 200})
    reader = CTDicomReader(swap_ij=False)
    volume, meta = reader.get_data(reader.read(folder))
    base = pydicom.dcmread(_ct_small_path())
    hu0 = base.pixel_array.astype(np.float32) - 1024
    assert volume.shape == (128, 128, 3)
    for k in range(3):
        np.testing.assert_allclose(volume[:, :, k], hu0 + 100 * (k + 1))
    assert float(meta["spacing"][2]) == pytest.approx(5.0)


def test_dicom_rescale_slope_and_multiframe(tmp_path):
    base = pydicom.dcmread(_ct_small_path())
    scaled = copy.deepcopy(base)
    scaled.RescaleSlope = 2
    scaled.save_as(tmp_path / "slope2.dcm")
    [(hu, _)] = load_ct_slices(tmp_path / "slope2.dcm")
    np.testing.assert_allclose(hu, base.pixel_array * 2.0 - 1024)
    multi = copy.deepcopy(base)
    frames = np.stack([base.pixel_array + 100 * i for i in range(4)]).astype(base.pixel_array.dtype)
    multi.NumberOfFrames = 4
    multi.PixelData = frames.tobytes()
    multi.save_as(tmp_path / "multi.dcm")
    slices = load_ct_slices(tmp_path / "multi.dcm", max_slices=10)
    assert [s for _, s in slices] == [f"{tmp_path / 'multi.dcm'}#slice={k}" for k in range(4)]
    for k, (hu, _) in enumerate(slices):
        np.testing.assert_allclose(hu, base.pixel_array + 100.0 * k - 1024)


def test_dicom_reader_rejects_non_ct_and_garbage(tmp_path):
    ds = pydicom.dcmread(_ct_small_path())
    ds.Modality = "MR"
    mr = tmp_path / "mr.dcm"
    ds.save_as(mr)
    with pytest.raises(ValueError, match=r"mr\.dcm.*Modality is 'MR'"):
        CTDicomReader().read(mr)
    CTDicomReader(require_ct=False).read(mr)  # allowed when asked
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 50)
    with pytest.raises(ValueError, match="junk.dcm"):
        CTDicomReader().read(junk)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no DICOM files"):
        CTDicomReader().read(empty)
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        CTDicomReader().read(tmp_path / "missing.dcm")


# -------------------------------------------------------------------------------------- NIfTI


def _body_volume(depth: int = 20) -> np.ndarray:
    """(x, y, z) volume: an elliptical body whose area ramps up then down; air at both ends."""
    n = 64
    yy, xx = np.meshgrid(np.arange(n) - n / 2, np.arange(n) - n / 2, indexing="ij")
    vol = np.full((n, n, depth), -1000.0, dtype=np.float32)
    for z in range(depth):
        scale = np.sin(np.pi * z / (depth - 1))  # 0 at the ends, 1 in the middle
        if scale > 0:
            body = (xx / (28 * scale + 1e-6)) ** 2 + (yy / (20 * scale + 1e-6)) ** 2 <= 1
            vol[:, :, z][body.T] = 40.0
    return vol


def test_nifti_reader_and_non_finite(tmp_path):
    vol = _body_volume()
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    img = LoadImage(reader=CTNiftiReader(), image_only=True)(str(path))
    np.testing.assert_allclose(img.numpy(), vol)
    bad = vol.copy()
    bad[3, 4, 5] = np.nan
    bad[0, 0, 0] = np.inf
    bad_path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(bad, np.eye(4)), bad_path)
    with pytest.raises(ValueError, match=r"nan\.nii\.gz.*2 of .* NaN or infinite"):
        LoadImage(reader=CTNiftiReader(), image_only=True)(str(bad_path))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt.nii.gz"):
        reader = CTNiftiReader()
        reader.get_data(reader.read(corrupt))


# ------------------------------------------------------------------------------ load_ct_slices


def test_select_axial_slices_rule():
    vol = _body_volume(depth=21)
    area = np.count_nonzero(vol > -500, axis=(0, 1))
    picks = select_axial_slices(vol, min_body_fraction=0.5, max_slices=4)
    candidates = np.flatnonzero(area >= 0.5 * area.max())
    assert len(picks) == 4
    assert picks[0] == candidates[0] and picks[-1] == candidates[-1]  # evenly spaced, ends included
    assert all(area[k] >= 0.5 * area.max() for k in picks)
    assert np.ptp(np.diff(picks)) <= 1
    assert select_axial_slices(vol, 0.5, max_slices=100) == candidates.tolist()
    assert select_axial_slices(np.full((8, 8, 3), -1000.0), 0.5, 4) == []


def test_load_ct_slices_all_inputs(tmp_path, hu_image):
    png = _write_deeplesion_png(tmp_path / "000001_01_01" / "109.png", hu_image)
    [(hu, source)] = load_ct_slices(png)
    np.testing.assert_array_equal(hu, hu_image)  # PNG rows/columns kept as displayed
    assert source == str(png) and hu.dtype == np.float32

    dcm = _ct_small_path()
    [(hu, _)] = load_ct_slices(dcm)
    np.testing.assert_allclose(hu, pydicom.dcmread(dcm).pixel_array - 1024.0)

    series = tmp_path / "series"
    _write_series(series, {1: 0, 2: 0, 3: 0, 4: 0, 5: 0})
    slices = load_ct_slices(series, max_slices=2)
    assert [s for _, s in slices] == [f"{series}#slice=0", f"{series}#slice=4"]

    vol = _body_volume(depth=20)
    vol[10, 40, :] = 500.0  # a marker at voxel x=10, y=40 to check the display orientation
    nii = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), nii)  # RAS already
    slices = load_ct_slices(nii, min_body_fraction=0.5, max_slices=3)
    expected_ids = select_axial_slices(vol, 0.5, 3)
    assert [s for _, s in slices] == [f"{nii}#slice={k}" for k in expected_ids]
    hu, _ = slices[0]
    assert hu.shape == (64, 64)
    # RAS x (left->right) runs right-to-left on screen, y (posterior->anterior) bottom-to-top.
    assert hu[63 - 40, 63 - 10] == 500.0


def test_load_ct_slices_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        load_ct_slices(tmp_path / "nothing.png")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_ct_slices(text)
    rect = tmp_path / "rect.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 40, 4), np.float32), np.eye(4)), rect)
    with pytest.raises(ValueError, match="square"):
        load_ct_slices(rect)


def test_load_ct_slices_reads_the_clean_slice_of_a_syndeeplesion_h5(tmp_path):
    import h5py

    from eqmar.ct.physics import hu_to_mu

    hu = np.linspace(-1000, 1500, 32 * 32, dtype=np.float32).reshape(32, 32)
    path = tmp_path / "gt.h5"
    with h5py.File(path, "w") as f:
        f["image"] = hu_to_mu(hu)
    (loaded, source), = load_ct_slices(path)
    np.testing.assert_allclose(loaded, hu, atol=0.05)
    assert source == str(path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["ma_CT"] = hu_to_mu(hu)
    with pytest.raises(ValueError, match="other.h5: no 'image' dataset"):
        load_ct_slices(tmp_path / "other.h5")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="broken.h5: not a readable HDF5 file"):
        load_ct_slices(tmp_path / "broken.h5")
