"""SynDeepLesion on-disk layout (h5 writers/readers, list files, atomic writes) and datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

h5py = pytest.importorskip("h5py")

from eqmar.data.datasets import SynDeepLesionTestDataset, SynDeepLesionTrainDataset  # noqa: E402
from eqmar.data.syndeeplesion import (  # noqa: E402
    CLEAN_KEYS,
    PAIR_KEYS,
    SynDeepLesionLayout,
    deeplesion_image_id,
    read_clean,
    read_pair,
    write_clean,
    write_pair,
)

IMAGE_ID = "000376_16_02/299"


def _h5_layout(path: Path) -> dict[str, tuple]:
    """What a reader of the published files depends on, per dataset."""
    with h5py.File(path, "r") as f:
        return {
            key: (
                f[key].shape, f[key].dtype, f[key].compression, f[key].compression_opts, f[key].chunks, f[key].shuffle
            )
            for key in f
        }


def _fake_clean(rng, n=416, views=640, bins=641):
    image = rng.uniform(0, 0.45, (n, n)).astype(np.float32)
    return image, rng.uniform(0, 3, (views, bins)).astype(np.float32), image + 0.01


def _fake_pair(rng, n=416, views=640, bins=641):
    trace = (rng.random((views, bins)) < 0.05).astype(np.uint8)
    sino = rng.uniform(0, 5, (views, bins)).astype(np.float32)
    ct = rng.uniform(0, 0.5, (n, n)).astype(np.float32)
    return sino, sino * (1 - trace), ct, ct * 0.5, trace


def test_written_files_match_published_layout(conformance_dir, tmp_path):
    """Keys, shapes, dtypes, gzip level, chunking of our files equal the published sample's."""
    clean = read_clean(conformance_dir / "gt.h5")
    pair = read_pair(conformance_dir / "3.h5")
    assert set(clean) == set(CLEAN_KEYS) and set(pair) == set(PAIR_KEYS)
    write_clean(tmp_path / "gt.h5", **clean)
    write_pair(tmp_path / "3.h5", **pair)
    assert _h5_layout(tmp_path / "gt.h5") == _h5_layout(conformance_dir / "gt.h5")
    assert _h5_layout(tmp_path / "3.h5") == _h5_layout(conformance_dir / "3.h5")
    for key, value in read_clean(tmp_path / "gt.h5").items():
        np.testing.assert_array_equal(value, clean[key])
    for key, value in read_pair(tmp_path / "3.h5").items():
        np.testing.assert_array_equal(value, pair[key])
    # Same datasets, creation order, chunks and gzip level: the size matches the published file
    # (to the byte with this zlib; another zlib build may shift it slightly).
    published, ours = (os.path.getsize(p / "3.h5") for p in (conformance_dir, tmp_path))
    assert abs(ours - published) / published < 0.02


def test_write_converts_and_validates(tmp_path):
    rng = np.random.default_rng(0)
    image, sino, ct = _fake_clean(rng, n=32, views=16, bins=21)
    write_clean(tmp_path / "gt.h5", image.astype(np.float64)[None], sino, ct)  # (1,H,W) float64 ok
    stored = read_clean(tmp_path / "gt.h5")
    assert stored["image"].dtype == np.float32 and stored["image"].shape == (32, 32)
    assert set(read_clean(tmp_path / "gt.h5", keys=["image"])) == {"image"}
    with pytest.raises(ValueError, match="same shape"):
        write_clean(tmp_path / "bad.h5", image, sino, ct[:10])
    with pytest.raises(ValueError, match="NaN"):
        write_clean(tmp_path / "bad.h5", image * np.nan, sino, ct)
    with pytest.raises(ValueError, match="metal_trace"):
        write_pair(tmp_path / "bad.h5", sino, sino, ct, ct, sino)
    assert not (tmp_path / "bad.h5").exists()
    with pytest.raises(KeyError, match=r"gt\.h5 lacks dataset\(s\) \['ma_CT'"):
        read_pair(tmp_path / "gt.h5")
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        read_clean(tmp_path / "nope.h5")
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(OSError, match="broken.h5"):
        read_clean(tmp_path / "broken.h5")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A failure in the middle of writing keeps the old file intact and leaves no temp file."""
    rng = np.random.default_rng(1)
    target = tmp_path / "train_640geo" / "000001_01_01" / "109" / "gt.h5"
    image, sino, ct = _fake_clean(rng, n=32, views=16, bins=21)
    write_clean(target, image, sino, ct)
    before = target.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not a private 0600 temp

    real_create = h5py.Group.create_dataset
    calls = []

    def failing_create(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 2:  # first dataset written, then the "kill"
            raise KeyboardInterrupt("simulated kill")
        return real_create(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    with pytest.raises(KeyboardInterrupt):
        write_clean(target, image + 1, sino, ct)
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        write_clean(target.with_name("0.h5"), image, sino, ct)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert not target.with_name("0.h5").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["gt.h5"]


def test_layout_paths_and_list_files(tmp_path):
    layout = SynDeepLesionLayout(tmp_path, "test")
    assert layout.split_dir == tmp_path / "test_640geo"
    assert layout.list_file == tmp_path / "test_640geo_dir.txt"
    assert layout.mask_file == tmp_path / "testmask.npy"
    assert layout.gt_path(IMAGE_ID) == tmp_path / "test_640geo/000376_16_02/299/gt.h5"
    assert layout.pair_path(IMAGE_ID, 7) == tmp_path / "test_640geo/000376_16_02/299/7.h5"
    other = SynDeepLesionLayout(tmp_path, "train", geometry="256geo")
    assert other.pair_path(IMAGE_ID, 0) == tmp_path / "train_256geo/000376_16_02/299/0.h5"
    assert other.list_file.name == "train_256geo_dir.txt"
    layout.write_list([IMAGE_ID, "000002_02_01/048"])
    assert layout.list_file.read_text() == "000376_16_02/299/gt.h5\n000002_02_01/048/gt.h5\n"
    assert layout.read_list() == [IMAGE_ID, "000002_02_01/048"]
    assert deeplesion_image_id("/data/Images_png/000376_16_02/299.png") == IMAGE_ID
    with pytest.raises(FileNotFoundError, match="train_256geo_dir.txt"):
        other.read_list()
    with pytest.raises(ValueError, match="000376_16_02/299"):
        layout.gt_path("000376_16_02")
    with pytest.raises(ValueError, match="split"):
        SynDeepLesionLayout(tmp_path, "val")
    layout.list_file.write_text("000376_16_02/299/1.h5\n")
    with pytest.raises(ValueError, match=r"test_640geo_dir\.txt:1"):
        layout.read_list()


def _make_root(tmp_path: Path, split: str, n_images: int, n_masks: int, rng, n=32, views=16, bins=21):
    from eqmar.data.masks import generate_masks

    layout = SynDeepLesionLayout(tmp_path, split)
    ids = [f"{i + 1:06d}_01_01/{100 + i:03d}" for i in range(n_images)]
    for image_id in ids:
        write_clean(layout.gt_path(image_id), *_fake_clean(rng, n, views, bins))
        for k in range(n_masks):
            write_pair(layout.pair_path(image_id, k), *_fake_pair(rng, n, views, bins))
    layout.write_list(ids)
    np.save(layout.mask_file, generate_masks(n_masks, size=64, seed=3))
    return layout, ids


def test_train_dataset_pairs_every_image_with_every_mask(tmp_path):
    from monai.data import DataLoader
    from monai.transforms import Compose, ScaleIntensityRanged

    from eqmar.data.masks import resize_mask

    rng = np.random.default_rng(2)
    layout, ids = _make_root(tmp_path, "train", n_images=2, n_masks=4, rng=rng)
    ds = SynDeepLesionTrainDataset(tmp_path, mask_indices=[1, 3])
    assert len(ds) == 4
    assert [ds.pair(i) for i in range(4)] == [(ids[0], 1), (ids[0], 3), (ids[1], 1), (ids[1], 3)]
    sample = ds[3]
    assert set(sample) == {"ma_CT", "LI_CT", "gt", "mask", "mask_index", "image_id"}
    for key in ("ma_CT", "LI_CT", "gt", "mask"):
        assert sample[key].shape == (1, 32, 32) and sample[key].dtype == torch.float32
    stored = read_pair(layout.pair_path(ids[1], 3))
    np.testing.assert_array_equal(sample["ma_CT"][0].numpy(), stored["ma_CT"])
    np.testing.assert_array_equal(sample["gt"][0].numpy(), read_clean(layout.gt_path(ids[1]))["image"])
    masks = np.load(layout.mask_file)
    np.testing.assert_array_equal(sample["mask"][0].numpy(), resize_mask(masks[:, :, 3], 32))
    assert sample["mask_index"] == 3 and sample["image_id"] == ids[1]

    with_sino = SynDeepLesionTrainDataset(tmp_path, mask_indices=range(4), with_sinograms=True)[0]
    for key in ("ma_sinogram", "LI_sinogram", "metal_trace"):
        assert with_sino[key].shape == (1, 16, 21) and with_sino[key].dtype == torch.float32

    transform = Compose([ScaleIntensityRanged(["ma_CT", "LI_CT", "gt"], 0.0, 0.5, 0.0, 1.0)])
    loader = DataLoader(SynDeepLesionTrainDataset(tmp_path, range(4), transform=transform), batch_size=3)
    batch = next(iter(loader))
    assert batch["gt"].shape == (3, 1, 32, 32)
    assert batch["mask_index"].tolist() == [0, 1, 2]
    assert list(batch["image_id"]) == [ids[0]] * 3
    np.testing.assert_allclose(batch["gt"][1, 0].numpy(), read_clean(layout.gt_path(ids[0]))["image"] * 2, rtol=1e-6)


def test_test_dataset_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    _make_root(tmp_path, "test", n_images=1, n_masks=10, rng=rng)
    ds = SynDeepLesionTestDataset(tmp_path)
    assert len(ds) == 10 and [ds[i]["mask_index"] for i in (0, 9)] == [0, 9]
    with pytest.raises(ValueError, match=r"mask_indices \[10\] outside the 10 masks"):
        SynDeepLesionTestDataset(tmp_path, mask_indices=[0, 10])
    with pytest.raises(FileNotFoundError, match="train_640geo_dir.txt"):
        SynDeepLesionTrainDataset(tmp_path)
    os.remove(tmp_path / "testmask.npy")
    with pytest.raises(FileNotFoundError, match="testmask.npy"):
        SynDeepLesionTestDataset(tmp_path)
    given = SynDeepLesionTestDataset(tmp_path, masks=np.zeros((64, 64, 10), np.uint8))
    assert float(given[4]["mask"].sum()) == 0.0
    with pytest.raises(IndexError):
        ds[10]


def test_dataset_on_published_sample(conformance_dir, tmp_path):
    """The published sample, arranged as a test root, loads with the published mask file."""
    layout = SynDeepLesionLayout(tmp_path, "test")
    folder = layout.slice_dir(IMAGE_ID)
    folder.mkdir(parents=True)
    for name in ["gt.h5"] + [f"{k}.h5" for k in range(10)]:
        os.symlink(conformance_dir / name, folder / name)
    os.symlink(conformance_dir / "testmask.npy", layout.mask_file)
    layout.write_list([IMAGE_ID])
    ds = SynDeepLesionTestDataset(tmp_path, mask_indices=[7])
    sample = ds[0]
    assert sample["gt"].shape == (1, 416, 416)
    # Mask 7 (3119 px at 512) resized to 416 keeps about (416/512)^2 of its area.
    assert sample["mask"].sum().item() == pytest.approx(3119 * (416 / 512) ** 2, rel=0.05)
    # Metal pixels are where ma_CT is brightest: the mask must sit on the metal.
    ma = sample["ma_CT"][0].numpy()
    metal = sample["mask"][0].numpy() > 0
    assert np.median(ma[metal]) > 5 * np.median(ma[~metal])
