"""Per-region signed errors of MAR predictions (offsets and metal-edge halos)."""

from __future__ import annotations

import math

import pytest
import torch

from eqmar.apps.mar.evaluation import REGIONS, format_region_table, region_errors
from eqmar.ct.physics import MU_WATER


def _batch(size: int = 64) -> dict[str, torch.Tensor]:
    gt = torch.full((2, 1, size, size), MU_WATER)  # water: 0 HU
    gt[:, :, :8] = 0.0  # a band of air at the top (-1000 HU)
    gt[:, :, 50:58] = MU_WATER * 2.0  # a band of bone (+1000 HU), far from the metal
    mask = torch.zeros(2, 1, size, size)
    mask[:, :, 20:23, 30:33] = 1.0
    return {"gt": gt, "mask": mask}


def test_a_constant_offset_shows_in_every_region_as_mean_and_rmse() -> None:
    batch = _batch()
    offset_hu = 12.0
    errors = region_errors([batch], lambda b: b["gt"] + offset_hu / 1000 * MU_WATER)
    assert set(errors) == set(REGIONS)
    for name, e in errors.items():
        assert e["pixels"] > 0, name
        assert e["mean"] == pytest.approx(offset_hu, abs=1e-3) and e["rmse"] == pytest.approx(offset_hu, abs=1e-3)


def test_regions_split_by_distance_and_tissue() -> None:
    batch = _batch()
    pred = batch["gt"].clone()
    metal = batch["mask"] > 0.5
    ring = torch.nn.functional.max_pool2d(metal.float(), 5, 1, 2).bool() & ~metal  # within 2 px (Chebyshev)
    pred[ring] += 100 / 1000 * MU_WATER  # a bright halo hugging the metal
    errors = region_errors([batch], lambda b: pred)
    assert errors["metal edge (≤ 2 px)"]["mean"] > 50  # the halo
    assert errors["far soft tissue/air (> 20 px)"]["mean"] == pytest.approx(0, abs=1e-3)
    assert errors["far bone (> 20 px)"]["pixels"] == 2 * 8 * 64  # the bone band, all farther than 20 px
    metal_free = {"gt": batch["gt"], "mask": torch.zeros_like(batch["mask"])}
    far_only = region_errors([metal_free], lambda b: b["gt"])
    assert far_only["metal edge (≤ 2 px)"]["pixels"] == 0 and math.isnan(far_only["metal edge (≤ 2 px)"]["mean"])


def test_region_table_has_a_row_per_method() -> None:
    batch = _batch()
    table = format_region_table({"LI": region_errors([batch], lambda b: b["gt"])})
    assert table.splitlines()[0].startswith("| Method | metal edge") and "| LI | +0 / 0 |" in table
