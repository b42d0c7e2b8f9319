"""MAR inference library (eqmar.apps.mar.inference), writers and the ``python -m eqmar.infer`` CLI.

A tiny untrained DICDNet at a 64 px working size keeps this fast; stub networks (identity on
ma_CT, or returning LI_CT) check the pipeline around the network with exact expectations.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from eqmar.apps.mar.inference import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_METAL_THRESHOLD_HU,
    TRACE_MODELS,
    MARInference,
    metal_trace_of,
    model_geometry,
    threshold_metal_mask,
)
from eqmar.apps.mar.model_file import network_spec, save_mar_model
from eqmar.apps.mar.writers import (
    MAR_SERIES_NUMBER_OFFSET,
    MAR_SERIES_SUFFIX,
    axial_to_nifti,
    deeplesion_png_values,
    dicom_stored_values,
    nifti_to_axial,
    write_deeplesion_png,
)
from eqmar.data.phantoms import phantom_slice
from eqmar.infer import main

TINY = {"num_stages": 2, "features": 8, "num_filters": 8, "num_res_blocks": 1}
WORKING_SIZE = 64
VIEWS = 160
METAL_HU = 3000.0


pytestmark = pytest.mark.usefixtures("single_torch_thread")


class _Channel(nn.Module):
    """Stub network returning one input channel: 0 = ma_CT (identity), 1 = LI_CT."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.channel : self.channel + 1]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    from eqmar.networks import DICDNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny_dicdnet.pt"
    meta = {"group": "p4", "weight": 0.1, "geometry_tag": f"640geo_{WORKING_SIZE}px{VIEWS}v",
            "image_size": WORKING_SIZE}
    return save_mar_model(path, DICDNet(**TINY), network_spec("dicdnet", **TINY), meta)


@pytest.fixture(scope="module")
def engine(model_path) -> MARInference:
    with MARInference(model_path, device="cpu") as inference:
        yield inference


def _disc(size: int, row: int, col: int, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows - row) ** 2 + (cols - col) ** 2 <= radius**2


@pytest.fixture(scope="module")
def metal_slice() -> tuple[np.ndarray, np.ndarray]:
    """128 px pelvis phantom (HU) with a 3000 HU metal disc, and the disc mask."""
    hu = phantom_slice("pelvis", seed=0, size=128)
    disc = _disc(128, 64, 84, 4)
    hu[disc] = METAL_HU
    return hu, disc


# ------------------------------------------------------------------------------------- library
def test_model_geometry_from_meta():
    reduced = model_geometry({"geometry_tag": "640geo_128px160v"})
    assert (reduced.image_size, reduced.num_views) == (128, 160)
    sized = model_geometry({"geometry_tag": "640geo", "image_size": 64})
    assert (sized.image_size, sized.num_views) == (64, 640)
    with pytest.warns(UserWarning, match="no geometry_tag; assuming the published 640geo"):
        full = model_geometry({})
    assert (full.image_size, full.num_views) == (DEFAULT_IMAGE_SIZE, 640)
    for typo in ("604geo", "604geo_128px160v"):
        with pytest.raises(ValueError, match=f"unknown geometry_tag '{typo}'.*640geo"):
            model_geometry({"geometry_tag": typo})
    with pytest.warns(UserWarning, match=r"^m\.pt: the model file's meta names no geometry_tag"):
        model_geometry({"image_size": 64}, source="m.pt")
    assert full.field_of_view_radius_cm == pytest.approx(reduced.field_of_view_radius_cm)


def test_threshold_separates_metal_from_bone(metal_slice):
    hu, disc = metal_slice
    clean = phantom_slice("pelvis", seed=0, size=128)
    assert clean.max() < DEFAULT_METAL_THRESHOLD_HU  # cortical bone of the phantom stays below
    np.testing.assert_array_equal(threshold_metal_mask(hu), disc)


def test_correct_slice_with_tiny_model(engine, metal_slice):
    hu, disc = metal_slice
    corrected, info = engine.correct_slice(hu)
    assert corrected.shape == hu.shape and corrected.dtype == np.float32
    assert np.isfinite(corrected).all()
    assert info["metal_pixels"] == int(disc.sum()) and info["mask_source"] == "threshold"
    assert info["working_size"] == WORKING_SIZE and info["num_views"] == VIEWS
    assert info["mask_rule"] == "protocol" and 0 < info["metal_pixels_working"] < info["metal_pixels"]
    np.testing.assert_array_equal(corrected[disc], hu[disc])  # metal is put back untouched
    assert np.abs(corrected - hu)[~disc].mean() > 1.0  # the untrained network did change the image


def test_identity_network_round_trips_hu(model_path, metal_slice):
    """With an identity network the 128->64->128 resampling must not alter the image."""
    hu, disc = metal_slice
    with MARInference(model_path, device="cpu", network=_Channel(0)) as identity:
        corrected, _ = identity.correct_slice(hu)
    np.testing.assert_allclose(corrected, hu, atol=0.05)
    with MARInference(model_path, device="cpu", network=_Channel(0), preserve_detail=False) as resampled:
        blurred, _ = resampled.correct_slice(hu)
    # resampling the output itself loses detail: what preserve_detail avoids
    assert np.abs(blurred - hu)[~disc].mean() > 5.0


def test_resampled_correction_leaves_no_dark_ring_beside_the_metal(model_path, metal_slice):
    """The correction on the working metal (tissue minus ~3071 HU) must not bleed into the tissue when resampled."""
    from scipy.ndimage import distance_transform_edt

    hu, disc = metal_slice
    with MARInference(model_path, device="cpu", network=_Channel(1)) as li_only:
        corrected, info = li_only.correct_slice(hu)
    assert info["working_size"] < hu.shape[0]  # the slice is resampled to the model's grid and back
    distance = distance_transform_edt(~disc)
    edge = (distance > 0) & (distance <= 2)
    # measured: -85 HU (the LI of an artifact-free slice next to its metal); without taking the
    # correction from clean pixels, -850 HU: a dark ring hugging the metal
    assert (corrected - hu)[edge].mean() > -200
    assert abs((corrected - hu)[(distance > 3) & (distance <= 10)].mean()) < 30


def test_li_pipeline_reduces_streaks(model_path):
    """A network returning its LI input must reduce the streaks of a simulated metal artifact."""
    from scipy.ndimage import distance_transform_edt

    from eqmar.ct.physics import mu_to_hu
    from eqmar.ct.simulator import SynDeepLesionSimulator

    hu = phantom_slice("pelvis", seed=0, size=128)
    with SynDeepLesionSimulator(model_geometry({"geometry_tag": f"640geo_{WORKING_SIZE}px{VIEWS}v"}),
                                device="cpu") as sim:
        image = sim.prepare_image(hu)
        pair = sim.simulate_pair(image, sim.prepare_mask(_disc(128, 64, 84, 6).astype(np.uint8)),
                                 np.random.default_rng(0))
    artifact_hu, truth_hu = mu_to_hu(pair["ma_CT"]), mu_to_hu(image.mu)
    with MARInference(model_path, device="cpu", network=_Channel(1)) as li_only:
        corrected, info = li_only.correct_slice(artifact_hu)
    with MARInference(model_path, device="cpu", network=_Channel(1), trace_model="line") as fast_li:
        fast, _ = fast_li.correct_slice(artifact_hu)
    metal = threshold_metal_mask(artifact_hu)
    assert info["metal_pixels"] == int(metal.sum()) > 0
    distance = distance_transform_edt(~metal)
    ring = (distance > 2) & (distance <= 12)
    streaks_in, streaks_out = artifact_hu[ring].std(), corrected[ring].std()
    error_in = np.sqrt(np.mean((artifact_hu - truth_hu)[ring] ** 2))
    error_out = np.sqrt(np.mean((corrected - truth_hu)[ring] ** 2))
    assert streaks_out < 0.9 * streaks_in  # measured 355 vs 428 HU
    assert error_out < 0.8 * error_in  # measured 166 vs 233 HU
    assert fast[ring].std() < 0.9 * streaks_in and np.sqrt(np.mean((fast - truth_hu)[ring] ** 2)) < 0.8 * error_in


def test_line_trace_covers_interpolating_trace(engine):
    from eqmar.data.masks import generate_mask_set, resize_mask

    masks = resize_mask(generate_mask_set(seed=0, size=512)[:, :, :4], WORKING_SIZE).astype(bool)
    for k in range(masks.shape[2]):
        if not masks[:, :, k].any():
            continue
        reference = metal_trace_of(masks[:, :, k], engine.projector(), "interpolating")
        fast = metal_trace_of(masks[:, :, k], engine.projector(), "line")
        assert reference.any() and not (reference & ~fast).any()  # covers every metal ray
        assert (reference & fast).sum() / (reference | fast).sum() > 0.7
    with pytest.raises(ValueError, match="trace"):
        metal_trace_of(masks[:, :, 0], engine.projector(), "cone")


def test_no_metal_is_returned_unchanged_with_a_warning(engine):
    clean = phantom_slice("abdomen", seed=2, size=128)
    with pytest.warns(UserWarning, match="no metal found"):
        corrected, info = engine.correct_slice(clean)
    assert info["metal_pixels"] == 0 and corrected.dtype == np.float32
    np.testing.assert_array_equal(corrected, clean)


def test_correct_volume_and_given_mask(engine, metal_slice):
    hu, disc = metal_slice
    clean = phantom_slice("abdomen", seed=2, size=128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one slice has metal: no warning
        volume, infos = engine.correct_volume(np.stack([clean, hu]))
    assert volume.shape == (2, 128, 128) and [i["metal_pixels"] for i in infos] == [0, int(disc.sum())]
    np.testing.assert_array_equal(volume[0], clean)
    with pytest.warns(UserWarning, match="any of the 2 slices"):
        engine.correct_volume(np.stack([clean, clean]))
    # a given mask wins over the threshold, even below it
    mask = _disc(128, 40, 50, 3)
    corrected, info = engine.correct_slice(clean, mask)
    assert info["mask_source"] == "given" and info["metal_pixels"] == int(mask.sum())
    np.testing.assert_array_equal(corrected[mask], clean[mask])
    with pytest.raises(ValueError, match="mask shape"):
        engine.correct_slice(clean, mask[:-1])


def test_non_square_and_tiny_metal(engine, metal_slice):
    hu, disc = metal_slice
    cropped, cropped_disc = hu[10:118], disc[10:118]
    corrected, info = engine.correct_slice(cropped)
    assert corrected.shape == (108, 128) and info["metal_pixels"] == int(cropped_disc.sum())
    np.testing.assert_array_equal(corrected[cropped_disc], cropped[cropped_disc])
    one_pixel = phantom_slice("pelvis", seed=0, size=128)
    one_pixel[70, 70] = METAL_HU  # vanishes under the protocol's mask resize at 64 px
    _, info = engine.correct_slice(one_pixel)
    assert info["mask_rule"] == "coverage" and info["metal_pixels_working"] >= 1


def test_bad_slices_raise(engine):
    with pytest.raises(ValueError, match="2-D"):
        engine.correct_slice(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        engine.correct_slice(np.full((8, 8), np.nan))


def test_strict_loading_and_foreign_checkpoint(tmp_path):
    from eqmar.networks import DICDNet

    mismatched = save_mar_model(tmp_path / "bad.pt", DICDNet(**TINY),
                                network_spec("dicdnet", **{**TINY, "features": 16}))
    with pytest.raises(ValueError, match="do not match"):
        MARInference(mismatched, device="cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": DICDNet(**TINY).state_dict()}, foreign)
    with pytest.raises(ValueError, match="not an eqmar MAR model"):
        MARInference(foreign, device="cpu")
    with pytest.raises(FileNotFoundError):
        MARInference(tmp_path / "missing.pt", device="cpu")


# ------------------------------------------------------------------------------------- writers
def test_png_and_dicom_value_encoding():
    np.testing.assert_array_equal(deeplesion_png_values([-32769.0, -1000.4, 0.5, 40000.0]), [0, 31768, 32768, 65535])

    class _Twelve(dict):
        __getattr__ = dict.__getitem__

    ds = _Twelve(BitsAllocated=16, BitsStored=12, PixelRepresentation=0, RescaleSlope=1.0, RescaleIntercept=-1024.0)
    stored = dicom_stored_values(np.array([-2000.0, -1024.0, 0.0, 4000.0]), ds)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, [0, 0, 1024, 4095])


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "S"), ("A", "R", "I")])
def test_nifti_axial_round_trip_and_convention(tmp_path, codes):
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff

    from eqmar.data.slices import load_ct_slices

    data = np.random.default_rng(0).normal(size=(6, 6, 3)).astype(np.float32) * 400
    affine = inv_ornt_aff(axcodes2ornt(codes), data.shape) @ np.diag([0.7, 0.7, 2.0, 1.0])
    assert nib.aff2axcodes(affine) == codes
    axial = nifti_to_axial(data, affine)
    np.testing.assert_array_equal(axial_to_nifti(axial, affine), data)
    path = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    reference = load_ct_slices(path, min_body_fraction=0.0, body_threshold_hu=-1e9)
    for k, (slice_hu, _) in enumerate(reference):  # same display orientation as the slice loader
        np.testing.assert_array_equal(axial[k], slice_hu)


# ------------------------------------------------------------------------------------- CLI
def _run_cli(model_path: Path, source: Path, out: Path, *extra: str) -> int:
    args = ["--checkpoint", str(model_path), "--input", str(source), "--output", str(out), "--quiet"]
    return main([*args, "--device", "cpu", *extra])


def test_cli_help_and_default_threshold():
    import eqmar.apps.mar.cli as cli

    assert float(cli._DEFAULT_THRESHOLD_TEXT) == DEFAULT_METAL_THRESHOLD_HU
    assert cli._TRACE_MODELS == TRACE_MODELS
    result = subprocess.run([sys.executable, "-m", "eqmar.infer", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--checkpoint", "--input", "--output", "--device", "--metal-threshold", "--mask"):
        assert flag in result.stdout
    # --help needs none of the training stack: the MAR app resolves its names lazily
    probe = "import sys, eqmar.infer; print('monai' in sys.modules, 'eqmar.apps.mar.workflow' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.split() == ["False", "False"]


def test_cli_png_file_and_folder(model_path, metal_slice, tmp_path, capsys):
    from eqmar.data.readers import DeepLesionPNGReader

    hu, disc = metal_slice
    folder = tmp_path / "000001_01_01"
    write_deeplesion_png(folder / "109.png", hu)
    (folder / "110.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert _run_cli(model_path, folder / "109.png", tmp_path / "single") == 0
    reader = DeepLesionPNGReader(reverse_indexing=False)
    image = reader.read(tmp_path / "single" / "109.png")
    assert image.mode.startswith("I;16")
    out_hu, _ = reader.get_data(image)
    assert out_hu.shape == hu.shape
    np.testing.assert_array_equal(out_hu[disc], np.rint(hu[disc]))
    assert np.abs(out_hu - np.rint(hu)).max() > 1  # corrected, not copied

    capsys.readouterr()
    assert _run_cli(model_path, folder, tmp_path / "folder") == 1  # one file skipped
    assert (tmp_path / "folder" / "109.png").is_file() and not (tmp_path / "folder" / "110.png").exists()
    assert "110.png" in capsys.readouterr().err


def test_cli_nifti_volume(model_path, metal_slice, tmp_path):
    import nibabel as nib

    hu, _ = metal_slice
    clean = phantom_slice("abdomen", seed=2, size=128)
    volume = np.stack([clean, hu.T[::-1], clean], axis=-1).astype(np.int16)
    affine = np.array([[-0.8, 0, 0, 10.0], [0, -0.8, 0, -5.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "ct.nii.gz"))
    assert _run_cli(model_path, tmp_path / "ct.nii.gz", tmp_path / "out") == 0
    out = nib.load(str(tmp_path / "out" / "ct.nii.gz"))
    data = out.get_fdata(dtype=np.float32)
    assert out.get_data_dtype() == np.float32 and data.shape == volume.shape
    np.testing.assert_allclose(out.affine, affine)
    assert out.header.get_zooms() == pytest.approx((0.8, 0.8, 2.5))
    metal = volume > DEFAULT_METAL_THRESHOLD_HU
    np.testing.assert_array_equal(data[metal], volume[metal])
    np.testing.assert_array_equal(data[..., 0], volume[..., 0])  # no metal: unchanged
    assert np.abs(data[..., 1] - volume[..., 1]).max() > 1


def _ct_small_series(folder: Path, count: int = 3, metal_index: int = 1) -> list[Path]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = get_testdata_file("CT_small.dcm", download=False)
    if source is None:
        pytest.skip("pydicom's CT_small.dcm test file is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        ds = pydicom.dcmread(source)
        pixels = ds.pixel_array.copy()
        if k == metal_index:
            pixels[_disc(pixels.shape[0], 60, 70, 3)] = 4000  # stored 4000 -> 2976 HU
        ds.PixelData = pixels.tobytes()
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "abdomen"
        paths.append(folder / f"IM{k:04d}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_cli_dicom_series_round_trip(model_path, tmp_path):
    import pydicom

    inputs = _ct_small_series(tmp_path / "series")
    assert _run_cli(model_path, tmp_path / "series", tmp_path / "out") == 0
    outputs = [tmp_path / "out" / "series_MAR" / p.name for p in inputs]
    changed = {"SeriesInstanceUID", "SOPInstanceUID", "SeriesDescription", "PixelData", "DerivationDescription",
               "SeriesNumber", "ImageType"}
    series_uids, sop_uids = set(), set()
    for k, (src, dst) in enumerate(zip(inputs, outputs, strict=True)):
        a, b = pydicom.dcmread(src), pydicom.dcmread(dst)
        series_uids.add(b.SeriesInstanceUID)
        sop_uids.add(b.SOPInstanceUID)
        assert b.SeriesInstanceUID != a.SeriesInstanceUID and b.SOPInstanceUID != a.SOPInstanceUID
        assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
        assert b.SeriesDescription == "abdomen" + MAR_SERIES_SUFFIX
        assert "eqmar" in b.DerivationDescription
        # a derived image a viewer can tell from the original: DICOM's Image Type and a new series number
        assert list(a.ImageType)[:2] == ["ORIGINAL", "PRIMARY"] and list(b.ImageType) == ["DERIVED", "SECONDARY",
                                                                                       *list(a.ImageType)[2:]]
        assert int(b.SeriesNumber) == int(a.SeriesNumber) + MAR_SERIES_NUMBER_OFFSET
        for element in a:
            if element.keyword not in changed:
                assert b[element.tag].value == element.value, element.keyword
        assert b.pixel_array.dtype == a.pixel_array.dtype
        assert (b.RescaleSlope, b.RescaleIntercept, b.BitsStored) == (a.RescaleSlope, a.RescaleIntercept, a.BitsStored)
        metal = a.pixel_array * float(a.RescaleSlope) + float(a.RescaleIntercept) > DEFAULT_METAL_THRESHOLD_HU
        np.testing.assert_array_equal(b.pixel_array[metal], a.pixel_array[metal])
        if k == 1:
            assert metal.sum() > 0 and np.abs(b.pixel_array.astype(int) - a.pixel_array).max() > 1
        else:
            np.testing.assert_array_equal(b.pixel_array, a.pixel_array)  # no metal: identical
    assert len(series_uids) == 1 and len(sop_uids) == 3


def test_cli_dicom_folder_skips_bad_files(model_path, tmp_path, capsys):
    inputs = _ct_small_series(tmp_path / "series")
    inputs[2].write_bytes(inputs[2].read_bytes()[:1500])  # truncated: header only
    capsys.readouterr()
    assert _run_cli(model_path, tmp_path / "series", tmp_path / "out") == 1
    written = sorted(p.name for p in (tmp_path / "out" / "series_MAR").iterdir())
    assert written == [inputs[0].name, inputs[1].name]
    assert inputs[2].name in capsys.readouterr().err


def test_cli_dicom_file_with_mask(model_path, tmp_path):
    import pydicom

    source = _ct_small_series(tmp_path / "series", count=1, metal_index=-1)[0]
    mask = _disc(128, 30, 30, 2)
    np.save(tmp_path / "mask.npy", mask)
    assert _run_cli(model_path, source, tmp_path / "out", "--mask", str(tmp_path / "mask.npy")) == 0
    a, b = pydicom.dcmread(source), pydicom.dcmread(tmp_path / "out" / source.name)
    np.testing.assert_array_equal(b.pixel_array[mask], a.pixel_array[mask])
    assert not np.array_equal(b.pixel_array, a.pixel_array)
    np.save(tmp_path / "small.npy", mask[:-1])
    assert _run_cli(model_path, source, tmp_path / "out2", "--mask", str(tmp_path / "small.npy")) == 2


def test_cli_errors_exit_2_naming_the_file(model_path, metal_slice, tmp_path, capsys):
    from eqmar.networks import DICDNet

    png = write_deeplesion_png(tmp_path / "in" / "1.png", metal_slice[0])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": DICDNet(**TINY).state_dict()}, foreign)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    cases = [
        (tmp_path / "missing.pt", png, "missing.pt"),
        (foreign, png, "foreign.pt"),
        (png, png, "1.png"),  # a PNG is not a checkpoint
        (model_path, tmp_path / "nope.png", "nope.png"),
        (model_path, corrupt, "corrupt.nii.gz"),
    ]
    for checkpoint, source, name in cases:
        capsys.readouterr()
        assert _run_cli(checkpoint, source, tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert name in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_cli_names_a_training_checkpoint_and_other_wrong_model_files(metal_slice, tmp_path, capsys):
    """Files a user may pass by mistake as --checkpoint: one line naming the file and what to use instead."""
    from eqmar.networks import ACDNet, DICDNet
    from tests.helpers import make_trainer_checkpoint

    png = write_deeplesion_png(tmp_path / "in" / "1.png", metal_slice[0])
    arm = tmp_path / "run" / "eqreg"
    checkpoint = make_trainer_checkpoint(DICDNet(**TINY), arm)

    def error_of(path: Path) -> str:
        capsys.readouterr()
        assert _run_cli(path, png, tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    # before the arm finishes there is no model file yet
    assert "is a training checkpoint" in error_of(checkpoint) and "model.pt does not exist yet" in error_of(checkpoint)
    model = save_mar_model(arm / "model.pt", DICDNet(**TINY), network_spec("dicdnet", **TINY))
    assert f"{checkpoint} is a training checkpoint" in error_of(checkpoint)
    assert f"use {model}, written next to it" in error_of(checkpoint)
    assert f"{arm} is a folder, not a model file; the model file of a training arm is {model}" in error_of(arm)
    (tmp_path / "empty.pt").touch()
    assert "empty.pt: empty file (0 bytes)" in error_of(tmp_path / "empty.pt")
    (tmp_path / "notes.txt").write_text("hello")  # torch.load said "KeyError: 104" / "IndexError: pop from empty list"
    assert "notes.txt: not a PyTorch file (torch.save writes a zip archive)" in error_of(tmp_path / "notes.txt")
    # a model file whose weights belong to another backbone than its spec says
    other = save_mar_model(tmp_path / "other.pt", ACDNet(**TINY), network_spec("dicdnet", **TINY))
    assert "other.pt: weights do not match the dicdnet network: 1 key(s) missing: first_dictionary" in error_of(other)
    odd_spec = save_mar_model(tmp_path / "odd.pt", DICDNet(**TINY), network_spec("dicdnet", **TINY, colour=True))
    assert "odd.pt: model spec does not fit the dicdnet network" in error_of(odd_spec)
    torch.save({"format": "eqmar-mar-model/1", "network": "dicdnet", "state_dict": {}}, tmp_path / "flat.pt")
    assert "flat.pt: model spec must be" in error_of(tmp_path / "flat.pt")
    typo = save_mar_model(tmp_path / "typo.pt", DICDNet(**TINY), network_spec("dicdnet", **TINY),
                          {"geometry_tag": "604geo"})
    assert "typo.pt: unknown geometry_tag '604geo'" in error_of(typo)
    torch.save(DICDNet(**TINY).state_dict(), tmp_path / "bare.pt")  # torch.save(net.state_dict()) by hand
    assert "bare.pt: bare weights (" in error_of(tmp_path / "bare.pt")
    assert "network_spec(backbone, **kwargs)" in error_of(tmp_path / "bare.pt")


def test_cli_bad_device_and_unsupported_input(model_path, metal_slice, tmp_path, capsys):
    png = write_deeplesion_png(tmp_path / "1.png", metal_slice[0])
    capsys.readouterr()
    assert _run_cli(model_path, png, tmp_path / "out", "--device", "tpu7") == 2  # the last --device wins
    assert "--device" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert _run_cli(model_path, text, tmp_path / "out") == 2
    assert "notes.txt" in capsys.readouterr().err


def test_cli_refuses_a_folder_mixing_dicom_with_other_images_and_leaves_no_empty_output(
    model_path, metal_slice, tmp_path, capsys
):
    import shutil

    from pydicom.data import get_testdata_file

    template = get_testdata_file("CT_small.dcm", download=False)
    if template is None:
        pytest.skip("pydicom's CT_small.dcm test file is not installed")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(template, mixed / "a.dcm")
    write_deeplesion_png(mixed / "b.png", metal_slice[0])
    capsys.readouterr()
    assert _run_cli(model_path, mixed, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "folder mixes DICOM files with 1 PNG/NIfTI file(s) (b.png)" in err and len(err.splitlines()) == 1
    # a run that fails after the output folder was made removes it again when it stayed empty
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert _run_cli(model_path, unreadable, tmp_path / "out2") == 2
    assert not (tmp_path / "out2").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays
    assert _run_cli(model_path, unreadable, tmp_path / "kept") == 2 and (tmp_path / "kept").is_dir()


def test_cli_keeps_an_rle_lossless_input_compressed(model_path, tmp_path):
    """RLE Lossless in, RLE Lossless out (pydicom encodes it natively); the pixels decode to the corrected HU."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    inputs = _ct_small_series(tmp_path / "plain", count=1, metal_index=0)
    compressed = pydicom.dcmread(inputs[0])
    compressed.compress(RLELossless)
    (tmp_path / "rle").mkdir()
    compressed.save_as(tmp_path / "rle" / "IM0000.dcm")
    assert _run_cli(model_path, tmp_path / "rle" / "IM0000.dcm", tmp_path / "out") == 0
    assert _run_cli(model_path, inputs[0], tmp_path / "out_plain") == 0
    rle, plain = (pydicom.dcmread(tmp_path / "out" / "IM0000.dcm"),
                  pydicom.dcmread(tmp_path / "out_plain" / "IM0000.dcm"))
    assert rle.file_meta.TransferSyntaxUID == RLELossless
    assert plain.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # the uncompressed input's, kept
    np.testing.assert_array_equal(rle.pixel_array, plain.pixel_array)  # lossless: the same corrected pixels


def test_transfer_syntax_falls_back_with_a_log_line_where_pydicom_cannot_encode(tmp_path, caplog):
    import logging

    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

    from eqmar.apps.mar.writers import output_transfer_syntax, write_dicom_series

    (path,) = _ct_small_series(tmp_path / "series", count=1, metal_index=0)
    ds = pydicom.dcmread(path)
    assert output_transfer_syntax(ds) == (ds.file_meta.TransferSyntaxUID, "kept")
    ds.file_meta.TransferSyntaxUID = RLELossless
    assert output_transfer_syntax(ds)[0] == RLELossless
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    syntax, reason = output_transfer_syntax(ds)
    assert syntax == ExplicitVRLittleEndian and "lossy" in reason
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless  # lossless, but its encoder is an optional plugin
    syntax, reason = output_transfer_syntax(ds)
    from pydicom.pixels import get_encoder

    if get_encoder(JPEGLSLossless).is_available:
        assert syntax == JPEGLSLossless
    else:
        assert syntax == ExplicitVRLittleEndian and "no encoder" in reason
        source = pydicom.dcmread(path)
        hu = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
        source.file_meta.TransferSyntaxUID = JPEGLSLossless  # as if read (and decoded) from a JPEG-LS file
        with caplog.at_level(logging.WARNING, logger="eqmar.apps.mar.writers"):
            (written,) = write_dicom_series([source], [hu], [tmp_path / "out" / "IM.dcm"])
        assert any("no encoder for JPEG-LS" in r.getMessage() for r in caplog.records)
        assert pydicom.dcmread(written).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_cli_refuses_an_image_that_is_not_ct_in_hu(model_path, tmp_path, capsys):
    """The shared check of eqmar.data.ct_input (the bundle and the MONAI Label app apply it too)."""
    import nibabel as nib
    from pydicom.data import get_testdata_file

    mr_like = np.random.default_rng(0).uniform(0, 2000, (64, 64, 2)).astype(np.float32)  # no air: not HU
    nib.save(nib.Nifti1Image(mr_like, np.eye(4)), str(tmp_path / "mr.nii.gz"))
    for source, expected in ((tmp_path / "mr.nii.gz", "not a CT image in HU"),
                             (Path(get_testdata_file("MR_small.dcm", download=False)), "Modality is 'MR'")):
        capsys.readouterr()
        assert _run_cli(model_path, source, tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.splitlines()) == 1, err
