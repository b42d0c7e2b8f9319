"""Tests for eqmar.ct.geometry.FanBeamGeometry."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from eqmar.ct.geometry import FanBeamGeometry


def test_640geo_preset_matches_protocol():
    g = FanBeamGeometry.preset("640geo")
    assert g.image_size == 416 and g.num_views == 640 and g.num_det == 641 and g.detector == "flat"
    assert g.pixel_size_cm == pytest.approx(512 / 416 * 0.03)
    assert g.image_width_cm == pytest.approx(15.36)
    assert g.detector_span == pytest.approx(2 * math.sqrt(2) * 15.36)  # 43.44 cm
    assert g.source_origin_cm == pytest.approx(39.6923, abs=1e-4)
    assert g.origin_det_cm == pytest.approx(1075 * g.pixel_size_cm)
    assert g.sinogram_shape == (640, 641) and g.image_shape == (416, 416)


def test_angles_at_cell_midpoints():
    g = FanBeamGeometry.preset("640geo")
    expected = (np.arange(640) + 0.5) * 2 * np.pi / 640
    np.testing.assert_allclose(g.angles, expected)
    assert g.angle_step == pytest.approx(2 * np.pi / 640)


def test_other_presets():
    dudo = FanBeamGeometry.preset("DuDoNet")
    assert dudo.pixel_size_cm == pytest.approx(512 / 416 * 0.08) and dudo.num_det == 641
    assert dudo.source_origin_cm == pytest.approx(1075 * dudo.pixel_size_cm)
    adn = FanBeamGeometry.preset("adn")
    assert adn.detector == "arc" and adn.image_size == 256 and adn.num_views == 320
    assert adn.det_spacing == pytest.approx(math.radians(0.1))
    assert adn.num_det % 2 == 1
    # the fan covers the image's circumscribed circle
    half_fan = adn.detector_span / 2
    assert math.sin(half_fan) * adn.source_origin_cm >= adn.field_of_view_radius_cm


def test_scaled_keeps_physical_setup():
    base = FanBeamGeometry.preset("640geo")
    small = base.scaled(128, 160)
    assert small.image_size == 128 and small.num_views == 160 and small.num_det == 197
    assert small.image_width_cm == pytest.approx(base.image_width_cm)
    assert small.detector_span == pytest.approx(base.detector_span)
    assert small.source_origin_cm == base.source_origin_cm and small.origin_det_cm == base.origin_det_cm
    assert base.scaled(256).num_det == 395 and base.scaled(256).num_views == 640  # nearest odd
    assert base.scaled(416) == base


def test_value_object_is_frozen_and_hashable():
    g = FanBeamGeometry.preset("640geo")
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.num_views = 10  # type: ignore[misc]
    assert {g: 1}[FanBeamGeometry.preset("640geo")] == 1


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("image_size", 0, "image_size"),
        ("num_views", 2.5, "num_views"),
        ("pixel_size_cm", -1.0, "pixel_size_cm"),
        ("det_spacing", float("nan"), "det_spacing"),
        ("detector", "curved", "detector"),
        ("source_origin_cm", 1.0, "source lies inside"),
        ("num_det", 101, "covers a disc of radius"),  # a 6.9 cm detector for a 15.4 cm image
    ],
)
def test_validation_errors(field, value, message):
    base = FanBeamGeometry.preset("640geo")
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(base, **{field: value})


def test_unknown_preset_and_bad_scale():
    with pytest.raises(ValueError, match="unknown preset"):
        FanBeamGeometry.preset("720geo")
    with pytest.raises(ValueError, match="image_size"):
        FanBeamGeometry.preset("640geo").scaled(0)


def test_covered_radius_spans_the_field_of_view_of_every_preset():
    """The fan covers the inscribed circle (the reconstructed field of view) of each preset; for
    640geo it reaches 10.48 cm, inside the 10.86 cm circumscribed circle (the corners are truncated,
    as in the published geometry)."""
    import math

    g = FanBeamGeometry.preset("640geo")
    half_fan = math.atan(g.num_det * g.det_spacing / 2 / (g.source_origin_cm + g.origin_det_cm))
    assert g.covered_radius_cm == pytest.approx(g.source_origin_cm * math.sin(half_fan))
    assert g.image_width_cm / 2 < g.covered_radius_cm < g.field_of_view_radius_cm
    for name in ("adn", "dudonet"):
        preset = FanBeamGeometry.preset(name)
        assert preset.covered_radius_cm >= preset.image_width_cm / 2
    arc = FanBeamGeometry.preset("adn")
    assert arc.covered_radius_cm == pytest.approx(arc.source_origin_cm * math.sin(arc.num_det * arc.det_spacing / 2))
