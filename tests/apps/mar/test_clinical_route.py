"""The clinical route scored against ground truth (``bench/clinical_route.py``).

The script is loaded from its path with :func:`tests.helpers.load_script` (``bench`` is not a package). The first
tests run the route end to end on one small phantom case at the shipped model's geometry; the last one
states the product requirements of the shipped model on the clinical route (stored HU in, no sinogram):
the network beats the route's own image-domain LI by at least 1 dB PSNR, and leaves no halo of more
than 60 HU (mean signed error) in the 1-5 px band around the metal.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import ROOT, load_script

SCRIPT = ROOT / "bench" / "clinical_route.py"
MODEL = ROOT / "bundles" / "eqmar_mar" / "models" / "model.pt"
#: Product requirements of the shipped model on the clinical route.
MIN_PSNR_GAIN_DB = 1.0
MAX_HALO_HU = 60.0

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def clinical() -> dict[str, Any]:
    """The script's globals (functions and constants), without running its ``main``."""
    return vars(load_script(SCRIPT))


def _numbers(value: Any) -> list[float]:
    """Every number in a nested JSON value."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [float(value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_help_names_the_options(clinical, capsys):
    with pytest.raises(SystemExit) as exit_info:
        clinical["main"](["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--model", "--sample", "--phantoms", "--out"))


def test_stored_hu_rounds_and_clips_like_a_scanner(clinical):
    mu = np.array([[0.0, 0.192, 0.19210], [0.48, 2.4, -0.1]], dtype=np.float32)
    stored = clinical["stored_hu"](mu)
    assert stored.dtype == np.int16
    # air at -1000 HU, water 0, +0.5 HU rounds to an integer, bone as is, metal clipped at 3071, below air at -1024
    np.testing.assert_array_equal(stored, [[-1000, 0, 1], [1500, 3071, -1024]])


def test_halo_band_is_1_to_5_pixels_from_the_metal(clinical):
    metal = np.zeros((21, 21), bool)
    metal[10, 10] = True
    band = clinical["halo_band"](metal)
    rows, cols = np.nonzero(band)
    distance = np.hypot(rows - 10, cols - 10)
    assert not band[10, 10] and distance.min() == 1.0 and distance.max() <= 5.0
    radius = np.hypot(*np.mgrid[-10:11, -10:11])
    assert band.sum() == ((radius >= 1) & (radius <= 5)).sum()
    assert not clinical["halo_band"](np.zeros((8, 8), bool)).any()  # no metal, no band


def test_route_runs_end_to_end_on_a_small_phantom_case(clinical, tmp_path, capsys):
    """One phantom x two test masks at the model's geometry: JSON, figure and table, all numbers finite."""
    rc = clinical["main"](["--model", str(MODEL), "--phantoms", "1", "--masks", "1", "7", "--examples", "2",
                           "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "| route LI |" in out and "| network |" in out and "metal edge" in out
    report = json.loads((tmp_path / "clinical_route.json").read_text())
    entry = report["sources"]["phantoms"]
    assert [p["mask_index"] for p in entry["per_pair"]] == [1, 7]
    # the phantoms are simulated on the route's own working grid (128 px for the shipped model)
    assert entry["summary"]["grid"] == report["working_grid"]["image_size"]
    for method in ("route LI", "network", "protocol LI (sinogram)"):
        scores = entry["summary"]["methods"][method]
        assert all(math.isfinite(x) for x in _numbers(scores)), (method, scores)
        assert 10.0 < scores["psnr"] < 60.0 and 0.0 < scores["ssim"] <= 1.0
    for pair in entry["per_pair"]:
        assert pair["metal_pixels"] > 0 and pair["band_pixels"] > 0
        assert pair["gt_metal_missed_by_route"] <= pair["metal_pixels"]
    png = tmp_path / "clinical_route.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_route_li_goes_through_the_route(clinical):
    """The LI stand-in returns the LI channel: the route's LI differs from its input and its network output."""
    route = clinical["ClinicalRoute"](MODEL, device="cpu")
    try:
        size = route.geometry.image_size
        hu = np.full((size, size), -1000, np.int16)
        yy, xx = np.mgrid[:size, :size] - size / 2
        hu[np.hypot(yy, xx) < size * 0.4] = 40
        hu[np.hypot(yy - 5, xx - 8) < 3] = 3071
        result = route(hu)
    finally:
        route.close()
    assert result.route_metal.sum() == (hu > 2500).sum() and result.info["metal_pixels"] == result.route_metal.sum()
    for image in (result.route_li_hu, result.network_hu):
        assert image.shape == hu.shape and np.isfinite(image).all()
        np.testing.assert_array_equal(image[result.route_metal], hu[result.route_metal])  # metal put back
    assert not np.array_equal(result.route_li_hu, result.network_hu)


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--phantoms", "0"], "nothing to evaluate"),
        (["--phantoms", "0", "--sample", "{tmp}/absent"], "{tmp}/absent"),
        (["--phantoms", "0", "--sample", "{tmp}/bad"], "{tmp}/bad/gt.h5"),
        (["--phantoms", "1", "--model", "{tmp}/absent.pt"], "{tmp}/absent.pt"),
        (["--phantoms", "1", "--model", "{tmp}/bad/gt.h5"], "{tmp}/bad/gt.h5"),
        (["--phantoms", "1", "--masks", "12"], "0..9"),
    ],
    ids=["no-source", "missing-sample", "corrupt-gt", "missing-model", "corrupt-model", "bad-mask-index"],
)
def test_bad_inputs_end_with_a_one_line_error(clinical, tmp_path, capsys, args, names):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "gt.h5").write_bytes(b"not an HDF5 file")
    rc = clinical["main"]([a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and names.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "out").exists()


_ROUTE_CACHE: dict[str, tuple[dict, dict, str]] = {}


def _route_numbers(clinical, request, source: str) -> tuple[dict, dict, str]:
    """Route-LI and network summaries of ``source`` (computed once per session: the route takes ~10 s)."""
    if source in _ROUTE_CACHE:
        return _ROUTE_CACHE[source]
    if source == "sample":
        folder: Path | None = request.getfixturevalue("conformance_dir")  # skips with the reason when absent
        report, _ = clinical["run"](MODEL, phantoms=0, sample=folder, device="cpu")
    else:
        report, _ = clinical["run"](MODEL, phantoms=3, device="cpu")
    methods = report["sources"][source]["summary"]["methods"]
    li, net = methods["route LI"], methods["network"]
    numbers = (f"{source}: route LI {li['psnr']:.2f} dB / SSIM {li['ssim']:.4f} / halo "
               f"{li['halo_abs_mean_hu_outside_route_metal']:.0f} HU; network {net['psnr']:.2f} dB / SSIM "
               f"{net['ssim']:.4f} / halo {net['halo_abs_mean_hu_outside_route_metal']:.0f} HU")
    print(numbers)
    _ROUTE_CACHE[source] = (li, net, numbers)
    return li, net, numbers


@pytest.mark.slow  # the route at the model's 416 px: about 3 minutes on one core
@pytest.mark.parametrize("source", ["phantoms", "sample"])
def test_shipped_model_beats_the_routes_own_li(clinical, request, source):
    """Network PSNR >= route-LI PSNR + 1 dB on average (measured: phantoms +6.1 dB, sample +3.5 dB).

    Phantoms: one test phantom of each family the demo trains on, with all ten test masks, at the
    model's geometry. Sample: the published SynDeepLesion slice (skipped when absent).
    """
    li, net, numbers = _route_numbers(clinical, request, source)
    assert net["psnr"] >= li["psnr"] + MIN_PSNR_GAIN_DB, numbers


@pytest.mark.slow
@pytest.mark.parametrize("source", ["phantoms", "sample"])
def test_shipped_model_leaves_no_halo(clinical, request, source):
    """Mean |signed error| 1-5 px from the metal < 60 HU (measured: phantoms 49 HU, sample 22 HU).

    The shipped model was fine-tuned on the route's own inputs (``--preset clinical``); the reference
    model it started from, trained on the protocol's inputs only, left 89 and 88 HU here.

    The band leaves out the pixels the route's HU threshold declares metal: the route returns those as
    stored (metal is put back unchanged, by design), and at 2500 HU the threshold also takes in the
    bright rim of the implant, whose stored values then differ from the tissue of the ground truth.
    """
    _, net, numbers = _route_numbers(clinical, request, source)
    assert net["halo_abs_mean_hu_outside_route_metal"] < MAX_HALO_HU, numbers


def test_shipped_model_keeps_the_intensity_of_tissue_far_from_the_metal():
    """pydicom's CT_small with a 3071 HU metal insert: tissue farther than 20 px from the metal keeps its HU.

    Measured: +4.4 HU mean change with the shipped weights (the reference model before fine-tuning: +3.7 HU;
    a 150-step DICDNet demo model: -21 HU).
    """
    from pydicom.data import get_testdata_file
    from scipy.ndimage import distance_transform_edt

    from eqmar.apps.mar.inference import MARInference
    from eqmar.data.readers import CTDicomReader

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's CT_small.dcm test file is not installed")
    reader = CTDicomReader(swap_ij=False)
    hu = np.asarray(reader.get_data(reader.read(path))[0], np.float32)
    rows, cols = np.mgrid[: hu.shape[0], : hu.shape[1]]
    metal = (rows - 70) ** 2 + (cols - 50) ** 2 <= 16
    hu[metal] = 3071.0
    with MARInference(MODEL, device="cpu") as inference:
        corrected, _ = inference.correct_slice(hu)
    far_body = (distance_transform_edt(~metal) > 20) & (hu > -500)
    assert far_body.sum() > 1000
    assert abs(float((corrected - hu)[far_body].mean())) < 10.0
