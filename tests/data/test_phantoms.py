"""Procedural CT phantoms and demo slices."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from eqmar.data.phantoms import PHANTOM_KINDS, TISSUE_HU, TISSUES, demo_ct_slices, phantom_slice

# Tissues each kind must contain (anatomy check: lungs in the thorax, teeth in the head ...).
REQUIRED = {
    "abdomen": {"air", "fat", "soft_tissue", "blood", "trabecular_bone", "cortical_bone"},
    "thorax": {"air", "lung", "fat", "soft_tissue", "blood", "trabecular_bone", "cortical_bone"},
    "pelvis": {"air", "fat", "fluid", "soft_tissue", "blood", "trabecular_bone", "cortical_bone"},
    "head": {"air", "fat", "soft_tissue", "trabecular_bone", "cortical_bone", "tooth"},
}


@pytest.fixture(scope="module", params=PHANTOM_KINDS)
def phantom(request):
    hu, labels = phantom_slice(request.param, seed=4, return_labels=True)
    return request.param, hu, labels


def _interior(labels: np.ndarray, tissue: str) -> np.ndarray:
    """Pixels of a tissue away from its edges (partial-volume blur and texture leave them alone)."""
    return ndimage.binary_erosion(labels == TISSUES.index(tissue), iterations=2)


def test_phantom_shape_dtype_range(phantom):
    kind, hu, labels = phantom
    assert hu.shape == (512, 512) and hu.dtype == np.float32
    assert labels.shape == (512, 512)
    assert hu.min() >= -1024 and np.isfinite(hu).all()
    present = {TISSUES[i] for i in np.unique(labels)}
    assert REQUIRED[kind] <= present
    body = labels != TISSUES.index("air")
    assert 0.2 < body.mean() < 0.85  # a patient filling a realistic part of the field of view
    assert not body[0].any() and not body[-1].any() and not body[:, 0].any() and not body[:, -1].any()


def test_phantom_tissue_hu(phantom):
    """Median HU inside each tissue lies in its realistic range; noise is at clinical level."""
    kind, hu, labels = phantom
    for tissue in {TISSUES[i] for i in np.unique(labels)}:
        region = _interior(labels, tissue)
        if region.sum() < 20:
            continue
        lo, hi = TISSUE_HU[tissue]
        median = float(np.median(hu[region]))
        assert lo - 10 <= median <= hi + 10, (kind, tissue, median)
    air = _interior(labels, "air")
    assert abs(float(np.mean(hu[air])) + 1000) < 10
    # Pixel noise + texture in homogeneous soft tissue / fat: std roughly 8..30 HU, as in clinical CT.
    for tissue in ("fat", "soft_tissue"):
        region = _interior(labels, tissue)
        # Several structures of the same tissue have different means; measure noise locally.
        local = hu - ndimage.uniform_filter(hu, 9)
        assert 8 < float(np.std(local[ndimage.binary_erosion(region, iterations=5)])) < 30


def test_lung_and_bone_ranges_thorax():
    hu, labels = phantom_slice("thorax", seed=1, return_labels=True)
    lung = _interior(labels, "lung")
    assert lung.sum() > 0.1 * labels.size  # two large lungs
    assert -870 < float(np.median(hu[lung])) < -680
    cortical = labels == TISSUES.index("cortical_bone")
    assert float(np.percentile(hu[cortical], 90)) > 900  # thin shells still reach cortical values


def test_phantom_reproducible_and_varied():
    for kind in PHANTOM_KINDS:
        a = phantom_slice(kind, seed=3)
        np.testing.assert_array_equal(a, phantom_slice(kind, seed=3))
        b = phantom_slice(kind, seed=4)
        assert np.mean(np.abs(a - b)) > 20  # different patient, not only different noise
    small = phantom_slice("pelvis", seed=0, size=128)
    assert small.shape == (128, 128)
    with pytest.raises(ValueError, match="unknown phantom kind"):
        phantom_slice("knee")


def test_demo_ct_slices_mix():
    slices = demo_ct_slices(6, seed=2, size=256)
    assert len(slices) == 6
    sources = [s for _, s in slices]
    assert sources[4] == "pydicom:CT_small.dcm"
    assert sources[0] == "phantom:abdomen:2000" and sources[5].startswith("phantom:")
    for hu, _ in slices:
        assert hu.shape == (256, 256) and hu.dtype == np.float32
    real = slices[4][0]
    # CT_small.dcm spans -896..1167 HU; bilinear upsampling stays within that range.
    assert -896 <= real.min() < -800 and 1000 < real.max() <= 1167
    again = demo_ct_slices(6, seed=2, size=256)
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(slices, again, strict=False))
