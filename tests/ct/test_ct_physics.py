"""Tests for eqmar.ct.physics, eqmar.ct.materials, eqmar.ct.spectrum and eqmar.ct.metal."""

from __future__ import annotations

import numpy as np
import pytest

from eqmar.ct.materials import BONE_ICRU44_MASS_FRACTIONS, mass_attenuation, metal_symbol
from eqmar.ct.metal import apply_partial_volume, interpolate_trace, metal_attenuation, metal_trace
from eqmar.ct.physics import (
    PolychromaticModel,
    add_poisson_noise,
    apply_bhc,
    fit_water_bhc,
    hu_to_mu,
    mu_to_hu,
    prepare_hu,
    resize_square,
    split_tissue,
)
from eqmar.ct.spectrum import Spectrum, load_spectrum, spekpy_spectrum


@pytest.fixture(scope="module")
def model():
    return PolychromaticModel(("water", "bone", "Ti"))


# ----------------------------------------------------------------------------- HU, resize, tissue
def test_hu_mu_conversion():
    np.testing.assert_allclose(hu_to_mu(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.192, 0.384], atol=1e-7)
    hu = np.linspace(-1000, 3000, 11)
    np.testing.assert_allclose(mu_to_hu(hu_to_mu(hu)), hu, atol=1e-3)
    assert hu_to_mu(np.zeros(3)).dtype == np.float32


def test_prepare_hu_resizes_bilinear_and_clips_low_only():
    from PIL import Image

    rng = np.random.default_rng(1)
    hu = rng.uniform(-3000, 3000, (512, 512)).astype(np.float32)
    out = prepare_hu(hu, 416)
    assert out.shape == (416, 416) and out.dtype == np.float32
    expected = np.asarray(Image.fromarray(hu, mode="F").resize((416, 416), Image.BILINEAR))
    np.testing.assert_allclose(out, np.maximum(expected, -1000.0))
    assert out.min() == -1000.0 and out.max() > 1000.0
    np.testing.assert_array_equal(prepare_hu(hu[:416, :416], 416), np.maximum(hu[:416, :416], -1000))
    with pytest.raises(ValueError, match="hu must be a square"):
        prepare_hu(np.zeros((10, 12)), 8)
    with pytest.raises(ValueError, match="NaN"):
        prepare_hu(np.full((8, 8), np.nan), 8)


def test_mask_resize_stays_binary():
    mask = np.zeros((512, 512), np.uint8)
    mask[100:140, 200:203] = 1
    out = resize_square(mask, 416, "mask")
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    assert abs(int(out.sum()) - 120 * (416 / 512) ** 2) < 40


def test_split_tissue_thresholds():
    mu = np.array([0.0, 0.192, 0.2112, 0.3456, 0.48, 0.6], np.float32)
    water, bone = split_tissue(mu)
    np.testing.assert_allclose(water + bone, mu, atol=1e-7)
    np.testing.assert_allclose(bone[:3], 0.0)
    np.testing.assert_allclose(water[4:], 0.0, atol=1e-7)
    fraction = (0.3456 - 0.2112) / (0.48 - 0.2112)
    assert bone[3] == pytest.approx(fraction * 0.3456, rel=1e-5)


# ----------------------------------------------------------------------------- materials, spectrum
def test_mass_attenuation_values():
    assert mass_attenuation("water", 70.0)[0] == pytest.approx(0.19285, rel=1e-3)
    assert mass_attenuation("Ti", 70.0)[0] == pytest.approx(0.5361, rel=1e-3)
    assert metal_attenuation("Ti") == pytest.approx(2.41245, rel=1e-3)
    assert metal_attenuation("titanium", density=9.0) == pytest.approx(2 * metal_attenuation("Ti"))
    assert metal_attenuation("iron") > metal_attenuation("Ti")
    assert sum(BONE_ICRU44_MASS_FRACTIONS.values()) == pytest.approx(1.0)
    bone = mass_attenuation("bone", np.array([30.0, 70.0, 120.0]))
    water = mass_attenuation("water", np.array([30.0, 70.0, 120.0]))
    assert np.all(np.diff(bone) < 0) and bone[0] > water[0]  # calcium: stronger photo-effect at low E
    assert metal_symbol("TI") == "Ti"
    with pytest.raises(ValueError, match="unknown metal"):
        mass_attenuation("unobtainium", 70.0)
    with pytest.raises(ValueError, match="density"):
        metal_attenuation("Ti", density=-1)


def test_packaged_spectrum():
    spectrum = load_spectrum()
    assert spectrum.energies_kev[0] == 20 and spectrum.energies_kev[-1] == 120 and len(spectrum.energies_kev) == 101
    assert spectrum.weights.sum() == pytest.approx(1.0)
    mean_energy = float(spectrum.energies_kev @ spectrum.weights)
    assert 55 < mean_energy < 70
    with pytest.raises(FileNotFoundError):
        load_spectrum("/nonexistent/spectrum.csv")
    with pytest.raises(ValueError, match="strictly increasing"):
        Spectrum(np.array([2.0, 1.0]), np.array([1.0, 1.0]))


def test_invalid_spectrum_file_is_named(tmp_path):
    in_ev = tmp_path / "spectrum_ev.csv"
    in_ev.write_text("keV,weight\n30000,1\n40000,2\n")  # eV by mistake: no bin in 20-120 keV
    negative = tmp_path / "negative.csv"
    negative.write_text("30,1\n40,-2\n")
    for path in (in_ev, negative):
        with pytest.raises(ValueError, match=path.name):
            load_spectrum(path)


def test_spekpy_spectrum_is_close_to_ge_table():
    ge = load_spectrum()
    spek = spekpy_spectrum()
    assert abs(float(spek.energies_kev @ spek.weights) - float(ge.energies_kev @ ge.weights)) < 3.0
    coefficients = fit_water_bhc(PolychromaticModel(("water",), spek))
    np.testing.assert_allclose(coefficients, fit_water_bhc(PolychromaticModel(("water",), ge)), rtol=0.05)


# ----------------------------------------------------------------------------- polychromatic, BHC, noise
def test_water_bhc_coefficients_match_protocol(model):
    coefficients = fit_water_bhc(model)
    # published (0.80370, 0.023014, -0.000844); measured (0.803496, 0.023006, -0.00084393)
    np.testing.assert_allclose(coefficients, [0.80370, 0.023014, -0.000844], rtol=1e-3)


def test_polychromatic_projection_beam_hardening(model):
    thickness = np.array([0.0, 1.0, 10.0, 30.0])
    mono = 0.192 * thickness
    poly = model.project([mono, np.zeros(4), np.zeros(4)])
    assert poly[0] == pytest.approx(0.0, abs=1e-6)  # float32 spectrum sum
    assert np.all(np.diff(poly) > 0)
    ratio = poly[1:] / mono[1:]
    assert np.all(np.diff(ratio) < 0)  # effective attenuation falls with thickness: hardening
    corrected = apply_bhc(poly, fit_water_bhc(model))
    # BHC undoes hardening for water: the cubic fit over 0..50 cm is within 0.5 % from 10 cm on
    # and 3.3 % at 1 cm (measured)
    np.testing.assert_allclose(corrected[2:], mono[2:], rtol=5e-3)
    assert corrected[1] == pytest.approx(mono[1], rel=0.05)
    metal = model.project([np.zeros(1), np.zeros(1), np.array([2.41245])])  # 1 cm titanium
    assert metal[0] > 2.41245  # low energies see more titanium
    with pytest.raises(ValueError, match="expected 3"):
        model.project([mono])


def test_poisson_noise_statistics_and_reproducibility():
    p = np.full(200_000, 3.0)
    noisy = add_poisson_noise(p, np.random.default_rng(7))
    expected_counts = np.round(np.exp(-3.0) * 2e7) + 20
    assert noisy.mean() == pytest.approx(-np.log(expected_counts / 2e7), abs=2e-4)
    assert noisy.std() == pytest.approx(1 / np.sqrt(expected_counts), rel=0.02)
    np.testing.assert_array_equal(noisy, add_poisson_noise(p, np.random.default_rng(7)))
    # fully absorbed rays with no scatter give zero counts, clamped to one photon
    dark = add_poisson_noise(np.full(10, 80.0), np.random.default_rng(0), photons=1e3, scatter=0)
    np.testing.assert_allclose(dark, -np.log(1 / 1e3))
    with pytest.raises(TypeError, match="Generator"):
        add_poisson_noise(p, 42)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- metal trace, partial volume, LI
def test_partial_volume_divides_trace_edges():
    projection = np.zeros((2, 12), np.float32)
    projection[0, 3:8] = 4.0
    projection[1, 0:3] = 4.0  # touches the detector border: no edge there
    out = apply_partial_volume(projection)
    np.testing.assert_allclose(out[0], [0, 0, 0, 1, 4, 4, 4, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(out[1], [4, 4, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(metal_trace(out), projection > 0)


def test_linear_interpolation_across_trace():
    bins = np.arange(20, dtype=np.float32)
    sinogram = np.stack([2 * bins + 1, bins**2, bins, bins]).astype(np.float32)
    trace = np.zeros_like(sinogram, dtype=bool)
    trace[0, 5:9] = True  # linear data: recovered exactly
    trace[1, 10:12] = True
    trace[2, 0:3] = True  # touches the left border: constant extrapolation
    trace[3, :] = True  # whole view: unchanged
    out = interpolate_trace(sinogram, trace)
    np.testing.assert_allclose(out[0], sinogram[0])
    np.testing.assert_allclose(out[1, 10:12], [81 + (144 - 81) / 3, 81 + 2 * (144 - 81) / 3], rtol=1e-6)
    np.testing.assert_allclose(out[2, :3], 3.0)
    np.testing.assert_array_equal(out[3], sinogram[3])
    np.testing.assert_array_equal(out[~trace], sinogram[~trace])


def test_interpolation_equals_per_view_np_interp():
    rng = np.random.default_rng(3)
    sinogram = rng.random((50, 80)).astype(np.float32)
    trace = np.zeros((50, 80), bool)
    for view in range(50):
        start = rng.integers(1, 60)
        trace[view, start : start + rng.integers(1, 15)] = True
    out = interpolate_trace(sinogram, trace)
    for view in range(50):
        keep = ~trace[view]
        expected = np.interp(np.arange(80), np.flatnonzero(keep), sinogram[view, keep])
        np.testing.assert_allclose(out[view], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="equal shape"):
        interpolate_trace(sinogram, trace[:10])
