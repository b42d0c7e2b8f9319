"""The synthesis job and its CLI: layout, reproducibility, resume after interruption, shards, bad inputs."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from eqmar.data.masks import generate_mask_set
from eqmar.data.syndeeplesion import SynDeepLesionLayout
from eqmar.data.synthesis import (
    ImageSource,
    SynthesisConfig,
    deeplesion_sources,
    demo_sources,
    file_seed,
    select_split_masks,
    shard_sources,
    synthesize_dataset,
)
from tests.helpers import ROOT

CONFIG = SynthesisConfig(geometry="640geo", image_size=64, num_views=72, seed=3)
TAG = "640geo_64px72v"


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    return select_split_masks(generate_mask_set(seed=1), "test")


def _datasets(root, split="test") -> dict[str, np.ndarray]:
    found = {}
    for path in sorted((root / f"{split}_{TAG}").rglob("*.h5")):
        with h5py.File(path, "r") as f:
            for key in f:
                found[f"{path.relative_to(root)}:{key}"] = f[key][()]
    return found


def test_demo_set_layout_and_reproducibility(tmp_path, masks) -> None:
    sources = demo_sources(3, seed=0, split="test")
    # mask 4 of this set has no metal pixel left at 64 px (refused, see below); mask 6 keeps 18
    report = synthesize_dataset(sources, masks, tmp_path / "a", "test", CONFIG, mask_indices=[0, 6], progress=False)
    assert report.images_complete == 3 and report.files_written == 9 and not report.failures
    layout = SynDeepLesionLayout(tmp_path / "a", "test", TAG)
    assert layout.read_list() == sorted(s.image_id for s in sources)
    assert np.load(layout.mask_file).shape == (512, 512, 10)
    with h5py.File(layout.pair_path("ct_small_000001/001", 6), "r") as f:
        assert set(f) == {"ma_CT", "LI_CT", "ma_sinogram", "LI_sinogram", "metal_trace"}
        assert f["ma_CT"].shape == (64, 64) and f["ma_sinogram"].shape == (72, layout_bins(f))
        assert f["metal_trace"].dtype == np.uint8 and f["ma_CT"].compression == "gzip"
    # Two workers, reversed order: identical data (every file has its own seeded stream).
    synthesize_dataset(sources[::-1], masks, tmp_path / "b", "test", CONFIG, mask_indices=[0, 6], workers=2,
                       progress=False)
    a, b = _datasets(tmp_path / "a"), _datasets(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def layout_bins(f: h5py.File) -> int:
    return f["metal_trace"].shape[1]


def test_interrupted_run_completes_to_the_same_data(tmp_path, masks) -> None:
    sources = demo_sources(2, seed=0, split="test")
    synthesize_dataset(sources, masks, tmp_path / "full", "test", CONFIG, mask_indices=[1, 2], progress=False)
    partial = tmp_path / "partial"
    synthesize_dataset(sources, masks, partial, "test", CONFIG, mask_indices=[1, 2], progress=False)
    layout = SynDeepLesionLayout(partial, "test", TAG)
    victim = layout.pair_path(sources[1].image_id, 2)
    victim.unlink()  # as if the run had been killed before writing it ...
    stale = victim.parent / f".{victim.name}.abc123.tmp"
    stale.write_bytes(b"partial")  # ... while its temporary file was half written
    report = synthesize_dataset(sources, masks, partial, "test", CONFIG, mask_indices=[1, 2], progress=False)
    assert report.files_written == 1 and report.files_kept == 5
    assert not list(partial.rglob("*.tmp"))
    full, resumed = _datasets(tmp_path / "full"), _datasets(partial)
    assert full.keys() == resumed.keys() and all(np.array_equal(full[k], resumed[k]) for k in full)


def test_shards_are_disjoint_and_cover_everything() -> None:
    sources = demo_sources(7, split="train")
    shards = [shard_sources(sources, (i, 3)) for i in range(3)]
    ids = [s.image_id for shard in shards for s in shard]
    assert sorted(ids) == sorted(s.image_id for s in sources) and len(set(ids)) == 7
    with pytest.raises(ValueError, match="shard"):
        shard_sources(sources, (3, 3))
    with pytest.raises(ValueError, match="duplicate image ids"):
        shard_sources(sources + sources[:1])


def test_file_seeds_differ_per_file() -> None:
    seeds = {file_seed(0, "a/1", k) for k in (None, 0, 1)} | {file_seed(1, "a/1", 0), file_seed(0, "a/2", 0)}
    assert len(seeds) == 5


def test_bad_inputs_are_reported_and_skipped(tmp_path, masks) -> None:
    images = tmp_path / "Images_png" / "000001_01_01"
    images.mkdir(parents=True)
    (images / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    from PIL import Image

    Image.fromarray((np.full((64, 64), 32768 - 1000 + 40)).astype(np.uint16)).save(images / "002.png")
    sources = deeplesion_sources(tmp_path)
    assert [s.image_id for s in sources] == ["000001_01_01/001", "000001_01_01/002"]
    report = synthesize_dataset(sources, masks, tmp_path / "out", "test", CONFIG, mask_indices=[0], progress=False)
    assert report.images_complete == 1 and len(report.failures) == 1
    assert report.failures[0]["image_id"] == "000001_01_01/001" and "001.png" in report.failures[0]["source"]
    assert (tmp_path / "out" / "synthesis_report_test.json").exists()


def test_unknown_source_kind_is_a_failure_not_a_crash(tmp_path, masks) -> None:
    report = synthesize_dataset(
        [ImageSource("x_1/1", kind="bogus")], masks, tmp_path, "test", CONFIG, mask_indices=[0], progress=False
    )
    assert report.failures and "unknown image source kind" in report.failures[0]["error"]


def test_cli_help_and_demo_run(tmp_path) -> None:
    script = ROOT / "data_tools" / "synthesize_mar.py"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "--deeplesion" in help_text and "--shard" in help_text and "resumable" in help_text
    run = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--image-size", "64", "--views", "72",
         "--demo-count", "2", "--mask-indices", "0", "--split", "test", "--no-progress"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "test: 2/2 images complete, 4 files written" in run.stdout
    bad = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--shard", "4/2"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--shard" in bad.stderr


def test_own_scans_folder_of_nifti_and_dicom(tmp_path, masks) -> None:
    """--scans: NIfTI volumes and DICOM files in one folder; slices picked by load_ct_slices."""
    import shutil

    import nibabel as nib
    from pydicom.data import get_testdata_file

    from eqmar.data.phantoms import phantom_slice
    from eqmar.data.synthesis import volume_sources

    scans = tmp_path / "scans"
    scans.mkdir()
    volume = np.stack([phantom_slice("abdomen", seed=s, size=64) for s in range(3)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), scans / "patient1.nii.gz")
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), scans / "ct_small.dcm")
    (scans / "notes.dcm").write_text("not a DICOM file")
    sources = volume_sources(scans)
    ids = [s.image_id for s in sources]
    assert "ct_small/000" in ids and sum(i.startswith("patient1/") for i in ids) == 3
    report = synthesize_dataset(sources, masks, tmp_path / "out", "test", CONFIG, mask_indices=[0], progress=False)
    assert report.images_complete == 4 and not report.failures


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    script = ROOT / "data_tools" / "synthesize_mar.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)


def test_cli_refuses_both_splits_from_the_same_images(tmp_path) -> None:
    """With real inputs the tool cannot tell test slices from train slices: `both` would leak."""
    (tmp_path / "scans").mkdir()
    refused = _run_cli("--scans", str(tmp_path / "scans"), "--out", str(tmp_path / "out"), "--no-progress")
    assert refused.returncode == 2 and "same images into the train and the test split" in refused.stderr
    ten = generate_mask_set(seed=1)[..., :10]
    np.save(tmp_path / "ten.npy", ten)
    refused = _run_cli("--masks", str(tmp_path / "ten.npy"), "--out", str(tmp_path / "out"), "--no-progress")
    assert refused.returncode == 2 and "holds 10 masks" in refused.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_masks_that_vanish_at_the_reduced_size_are_refused(tmp_path, masks) -> None:
    from eqmar.ct.simulator import SynDeepLesionSimulator, resize_metal_mask

    tiny = masks.copy()
    tiny[..., 0] = 0
    tiny[250:252, 250:252, 0] = 1  # 4 pixels at 512 px: nothing left at 64 px
    assert not resize_metal_mask(tiny[..., 0], 64).any()
    with pytest.raises(ValueError, match=r"masks \[0\] have no metal pixel left at 64 px"):
        synthesize_dataset(demo_sources(1, seed=0, split="test"), tiny, tmp_path, "test", CONFIG, mask_indices=[0, 1],
                           progress=False)
    assert not any(tmp_path.rglob("*.h5"))
    with SynDeepLesionSimulator(CONFIG.resolve_geometry(), device="cpu") as sim:
        with pytest.raises(ValueError, match="no metal pixel at 64 px"):
            sim.prepare_mask(tiny[..., 0])


def test_resume_refuses_other_settings(tmp_path, masks) -> None:
    from dataclasses import replace

    sources = demo_sources(1, seed=0, split="test")
    synthesize_dataset(sources, masks, tmp_path, "test", CONFIG, mask_indices=[0], progress=False)
    settings = SynDeepLesionLayout(tmp_path, "test", TAG).settings_file
    assert '"metal": "Ti"' in settings.read_text() and '"seed": 3' in settings.read_text()
    for other in (replace(CONFIG, metal="Fe"), replace(CONFIG, seed=4)):
        with pytest.raises(ValueError, match="simulated with other settings"):
            synthesize_dataset(sources, masks, tmp_path, "test", other, mask_indices=[0], progress=False)
    again = synthesize_dataset(sources, masks, tmp_path, "test", replace(CONFIG, device="cpu"), mask_indices=[0],
                               progress=False)
    assert again.files_kept == 2 and again.files_written == 0  # the device does not change the data


def test_dl_info_csv_as_image_list(tmp_path) -> None:
    images = tmp_path / "Images_png" / "000001_01_01"
    images.mkdir(parents=True)
    listing = tmp_path / "DL_info.csv"
    listing.write_text(
        "File_name,Patient_index,Study_index\n"
        "000001_01_01_109.png,1,1\n000001_01_01_109.png,1,1\n000001_01_01_103.png,1,1\n"
    )
    sources = deeplesion_sources(tmp_path, listing)
    assert [s.image_id for s in sources] == ["000001_01_01/109", "000001_01_01/103"]


def test_in_process_run_frees_its_simulator(tmp_path, masks) -> None:
    from eqmar.data import synthesis

    synthesize_dataset(demo_sources(1, seed=0, split="test"), masks, tmp_path, "test", CONFIG, mask_indices=[0],
                       progress=False)
    assert synthesis._WORKER == {}


def test_demo_families_and_the_held_out_set_share_no_anatomy(tmp_path) -> None:
    from eqmar.data.synthesis import DEMO_TRAIN_PHANTOMS, HOLDOUT_PHANTOMS, holdout_sources

    assert not set(DEMO_TRAIN_PHANTOMS) & set(HOLDOUT_PHANTOMS)
    train = demo_sources(24, seed=0, split="train", kinds=DEMO_TRAIN_PHANTOMS)
    test = demo_sources(4, seed=0, split="test", kinds=DEMO_TRAIN_PHANTOMS)
    assert {s.variant for s in train} == set(DEMO_TRAIN_PHANTOMS)
    extra = tmp_path / "gt.h5"
    held = holdout_sources(3, seed=0, extra=[extra])
    assert held[0].kind == "pydicom-testdata" and held[-1].path == str(extra) and held[-1].image_id == "file_00_gt/000"
    phantoms = [s for s in held if s.kind == "phantom"]
    assert {s.variant for s in phantoms} == {"head"} and len(phantoms) == 3
    seeds = [{s.index for s in group if s.kind == "phantom"} for group in (train, test, phantoms)]
    assert not (seeds[0] & seeds[2]) and not (seeds[1] & seeds[2])
    with pytest.raises(ValueError, match="phantom kinds"):
        demo_sources(2, kinds=("knee",))


def test_cli_exits_non_zero_when_nothing_is_synthesized_and_names_a_file_given_as_scan_folder(tmp_path) -> None:
    from PIL import Image

    images = tmp_path / "Images_png" / "000001_01_01"
    images.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / "001.png")  # 8-bit: not a DeepLesion slice
    common = ("--split", "test", "--image-size", "64", "--views", "72", "--mask-indices", "0", "--no-progress")
    run = _run_cli("--deeplesion", str(tmp_path), "--out", str(tmp_path / "out"), *common)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "nothing was synthesized" in run.stderr and "0/1 images complete" in run.stdout
    skipped = next(line for line in run.stdout.splitlines() if line.startswith("  skipped"))
    assert skipped.count("001.png") == 1, skipped  # the path once, not "X: X: ..."
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    run = _run_cli("--scans", str(scan), "--out", str(tmp_path / "out2"), *common)
    assert run.returncode == 2 and "scan.nii.gz: is a file; --scans takes a folder" in run.stderr
