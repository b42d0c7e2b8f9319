"""Single-slice SynDeepLesion folders (the published sample's layout): their files, and filing them as a test root."""

from __future__ import annotations

import numpy as np
import pytest

from eqmar.data.syndeeplesion import SynDeepLesionLayout, link_sample, sample_files, write_clean, write_pair


def _sample(folder):
    folder.mkdir()
    image = np.full((8, 8), 0.2, np.float32)
    write_clean(folder / "gt.h5", image=image, poly_sinogram=np.zeros((4, 5), np.float32), poly_CT=image)
    for k in range(10):
        write_pair(folder / f"{k}.h5", ma_CT=image, LI_CT=image, ma_sinogram=np.zeros((4, 5), np.float32),
                   LI_sinogram=np.zeros((4, 5), np.float32), metal_trace=np.zeros((4, 5), np.uint8))
    np.save(folder / "testmask.npy", np.zeros((8, 8, 10), np.uint8))
    return folder


def test_sample_files_lists_the_layout_and_names_what_is_missing(tmp_path):
    folder = _sample(tmp_path / "sample")
    files = sample_files(folder)
    assert list(files) == ["gt", *map(str, range(10)), "masks"]
    assert files["gt"] == folder / "gt.h5" and files["masks"] == folder / "testmask.npy"
    (folder / "7.h5").unlink()
    with pytest.raises(FileNotFoundError, match=r"7\.h5: missing"):
        sample_files(folder)
    assert sample_files(folder, check_files=False)["7"] == folder / "7.h5"  # left to the reader
    with pytest.raises(FileNotFoundError, match="sample folder not found"):
        sample_files(tmp_path / "absent")


def test_link_sample_files_the_folder_as_a_test_root(tmp_path):
    folder = _sample(tmp_path / "sample")
    root, geometry = link_sample(folder, tmp_path / "root")
    layout = SynDeepLesionLayout(root, "test", geometry)
    assert layout.read_list() == ["000376_16_02/299"]
    linked = layout.slice_dir("000376_16_02/299")
    assert sorted(p.name for p in linked.iterdir()) == sorted(["gt.h5", *(f"{k}.h5" for k in range(10))])
    assert (root / "testmask.npy").resolve() == (folder / "testmask.npy").resolve()
