"""The MONAI bundle ``bundles/eqmar_mar`` and the pieces it uses (eqmar.apps.mar.bundle, .inferer, .model_file).

Inference runs the bundle's real configs in-process with ``monai.bundle.run`` (the CLI's code path
without ``fire``) on a simulated metal-artifact phantom and checks that the shipped demo model
reduces the streak error against the clean image; the CLI itself runs in a slow test. Training
runs ``configs/train.yaml`` for three iterations on a tiny SynDeepLesion root made here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT

yaml = pytest.importorskip("yaml", reason="the bundle's YAML configs need pyyaml (add it to eqmar's dependencies)")

from eqmar.apps.mar.bundle import bundle_datalist  # noqa: E402
from eqmar.apps.mar.inference import DEFAULT_METAL_THRESHOLD_HU, image_domain_li, model_geometry  # noqa: E402
from eqmar.apps.mar.inferer import MARVolumeInferer, fanbeam_physics_available  # noqa: E402
from eqmar.apps.mar.model_file import (  # noqa: E402
    MARModelSaver,
    build_from_spec,
    load_mar_model,
    load_mar_weights,
    network_spec,
    save_mar_model,
)
from eqmar.apps.mar.writers import axial_to_nifti, nifti_to_axial  # noqa: E402
from eqmar.ct.parallel import ParallelBeamProjector  # noqa: E402

BUNDLE = ROOT / "bundles" / "eqmar_mar"
CONFIGS = BUNDLE / "configs"
MODEL = BUNDLE / "models" / "model.pt"
SIZE = 416
TAG = "640geo_416px640v"  # the shipped reference model's geometry (the published 640geo)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _disc(row: int, col: int, radius: float, size: int = SIZE) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows - row) ** 2 + (cols - col) ** 2 <= radius**2


def _simulated_insert(size: int, tag: str) -> dict[str, np.ndarray]:
    """A pelvis phantom with a simulated titanium insert at ``size`` px: ``artifact`` and ``clean`` HU."""
    from eqmar.ct.physics import mu_to_hu
    from eqmar.ct.simulator import SynDeepLesionSimulator
    from eqmar.data.phantoms import phantom_slice

    scale = size / 128
    hu = phantom_slice("pelvis", seed=0, size=size)
    disc = _disc(64 * scale, 84 * scale, 6 * scale, size)
    with SynDeepLesionSimulator(model_geometry({"geometry_tag": tag}), device="cpu") as sim:
        image = sim.prepare_image(hu)
        pair = sim.simulate_pair(image, sim.prepare_mask(disc.astype(np.uint8)), np.random.default_rng(0))
    return {"artifact": mu_to_hu(pair["ma_CT"]), "clean": mu_to_hu(image.mu)}


@pytest.fixture(scope="module")
def artifact_slices() -> dict[str, np.ndarray]:
    """The shipped model's geometry: a pelvis phantom with a simulated titanium insert."""
    return _simulated_insert(SIZE, TAG)


def streak_rmse(image: np.ndarray, clean: np.ndarray, metal: np.ndarray) -> float:
    """RMSE in HU against the clean slice outside the metal: the streak error."""
    return float(np.sqrt(np.mean((np.asarray(image, np.float64) - clean)[~metal] ** 2)))


def _run_bundle(**override: object) -> None:
    from monai.bundle import run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI's "only run trusted configs" notice
        run(
            config_file=str(CONFIGS / "inference.yaml"),
            meta_file=str(CONFIGS / "metadata.json"),
            logging_file=False,  # the bundle's logging.conf would reconfigure the test session's loggers
            bundle_root=str(BUNDLE),
            **override,
        )


@pytest.fixture(scope="module")
def demo_model() -> Path:
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is missing; produce it with the recipe as described in {BUNDLE / 'docs' / 'README.md'}")
    return MODEL


# ----------------------------------------------------------------------------------- inference
def test_nifti_inference_reduces_streaks(tmp_path, demo_model, artifact_slices):
    import nibabel as nib

    artifact, clean = artifact_slices["artifact"], artifact_slices["clean"]
    affine = np.array([[-0.8, 0, 0, 12.0], [0, -0.8, 0, -4.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    axial = np.stack([clean, artifact, clean])  # slices 0 and 2 hold no metal
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(axial_to_nifti(axial, affine).astype(np.float32), affine), str(source))

    _run_bundle(input=str(source), output_dir=str(tmp_path / "out"))

    written = nib.load(str(tmp_path / "out" / "ct_mar.nii.gz"))
    assert written.shape == (SIZE, SIZE, 3) and written.get_data_dtype() == np.float32
    np.testing.assert_allclose(written.affine, affine)
    corrected = nifti_to_axial(written.get_fdata(dtype=np.float32), written.affine)
    metal = artifact > DEFAULT_METAL_THRESHOLD_HU
    assert metal.sum() > 50
    np.testing.assert_array_equal(corrected[1][metal], artifact[metal])  # the implant is put back
    np.testing.assert_allclose(corrected[0], clean, atol=1e-3)  # no metal: unchanged
    before, after = streak_rmse(artifact, clean, metal), streak_rmse(corrected[1], clean, metal)
    print(f"bundle NIfTI streak RMSE outside metal: input {before:.1f} HU -> output {after:.1f} HU")
    assert after < 0.85 * before  # measured 111.0 -> 56.8 HU


def _write_dicom_series(folder: Path, slices: list[np.ndarray]) -> list[np.ndarray]:
    """A CT series from pydicom's CT_small.dcm with ``slices`` as pixels; returns the stored HU."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = get_testdata_file("CT_small.dcm", download=False)
    if template is None:
        pytest.skip("pydicom's CT_small.dcm test file is not installed")
    folder.mkdir(parents=True)
    series, stored = generate_uid(), []
    for k, hu in enumerate(slices):
        ds = pydicom.dcmread(template)
        dtype = ds.pixel_array.dtype
        ds.Rows, ds.Columns = hu.shape  # the template's 128 x 128 pixels are replaced below
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        pixels = np.rint((hu - intercept) / slope).astype(dtype)
        ds.PixelData = pixels.tobytes()
        stored.append(pixels * slope + intercept)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [float(k) * 2.5]
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"IM{k:04d}.dcm")
    return stored


def test_dicom_series_inference(tmp_path, demo_model, artifact_slices):
    import nibabel as nib

    artifact, clean = artifact_slices["artifact"], artifact_slices["clean"]
    stored_clean, stored = _write_dicom_series(tmp_path / "series", [clean, artifact])

    _run_bundle(input=str(tmp_path / "series"), output_dir=str(tmp_path / "out"), trace_model="line")

    (written_path,) = sorted((tmp_path / "out").glob("*.nii.gz"))
    written = nib.load(str(written_path))
    assert written.shape == (SIZE, SIZE, 2) and written.get_data_dtype() == np.float32
    corrected = nifti_to_axial(written.get_fdata(dtype=np.float32), written.affine)
    metal = stored > DEFAULT_METAL_THRESHOLD_HU
    by_metal = sorted(range(2), key=lambda k: int((corrected[k] > DEFAULT_METAL_THRESHOLD_HU).sum()))
    np.testing.assert_allclose(corrected[by_metal[0]], stored_clean, atol=1e-3)
    before, after = streak_rmse(stored, clean, metal), streak_rmse(corrected[by_metal[1]], clean, metal)
    print(f"bundle DICOM streak RMSE outside metal: input {before:.1f} HU -> output {after:.1f} HU")
    assert after < 0.85 * before


def _bundle_error(capsys, **override: object) -> str:
    """Run the bundle on a bad input: it exits with status 2; return its one ``error:`` line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        _run_bundle(**override)
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_inputs_name_the_problem(tmp_path, demo_model, capsys):
    from pydicom.data import get_testdata_file

    out = str(tmp_path / "out")
    assert "error: no input: pass --input" in _bundle_error(capsys, output_dir=out)
    missing = tmp_path / "missing.nii.gz"
    assert _bundle_error(capsys, input=str(missing), output_dir=out) == f"error: input not found: {missing}"
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    line = _bundle_error(capsys, input=str(tmp_path / "broken.nii.gz"), output_dir=out)
    assert line.startswith(f"error: {tmp_path / 'broken.nii.gz'}: cannot read it as a CT image (nifti)")
    mr = get_testdata_file("MR_small.dcm", download=False)
    assert "Modality is 'MR'" in _bundle_error(capsys, input=mr, output_dir=out)  # the CLI refuses it too
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(FileNotFoundError, match="missing"):
        bundle_datalist(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither DICOM nor NIfTI"):
        bundle_datalist(tmp_path / "empty")
    # weights that do not fit network_def are an error naming the file, never a random layer
    wrong = save_mar_model(
        tmp_path / "wrong.pt", build_from_spec(network_spec("dicdnet", num_stages=1, features=8, num_filters=8)),
        network_spec("dicdnet", num_stages=1, features=8, num_filters=8), {"geometry_tag": TAG},
    )
    network = build_from_spec(yaml.safe_load((CONFIGS / "inference.yaml").read_text())["network_spec"])
    with pytest.raises(ValueError, match="wrong.pt: weights do not match"):
        load_mar_weights(network, wrong)
    with pytest.raises(FileNotFoundError, match="recipe"):
        load_mar_weights(network, tmp_path / "nothing.pt")


def test_nifti_output_keeps_the_input_header(tmp_path, demo_model, artifact_slices):
    """qform/sform codes and units as in the input (``python -m eqmar.infer`` keeps them too)."""
    import nibabel as nib

    image = nib.Nifti1Image(artifact_slices["artifact"][:, :, None].astype(np.int16), np.diag([0.7, 0.7, 3.0, 1.0]))
    image.set_qform(image.affine, code=2)
    image.set_sform(image.affine, code=0)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(tmp_path / "scan.nii.gz"))
    _run_bundle(input=str(tmp_path / "scan.nii.gz"), output_dir=str(tmp_path / "out"), trace_model="line")
    written = nib.load(str(tmp_path / "out" / "scan_mar.nii.gz"))
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (2, 0)
    assert written.header.get_xyzt_units() == image.header.get_xyzt_units()
    assert written.get_data_dtype() == np.float32 and written.shape == image.shape
    np.testing.assert_allclose(written.affine, nib.load(str(tmp_path / "scan.nii.gz")).affine)


@pytest.mark.parametrize("case", ["missing", "corrupt", "mr"])
def test_bundle_command_line_starts_its_error_output_with_one_clear_line(tmp_path, demo_model, case):
    """``python -m monai.bundle run`` in a subprocess: status 2, one ``error:`` line naming the input, no traceback."""
    pytest.importorskip("fire", reason="python -m monai.bundle needs fire (in eqmar's apps extra)")
    from pydicom.data import get_testdata_file

    source = str(tmp_path / f"{case}.nii.gz")
    if case == "corrupt":
        Path(source).write_bytes(b"\x1f\x8b not really gzip")
    elif case == "mr":
        source = get_testdata_file("MR_small.dcm", download=False)
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.yaml"),
         "--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(BUNDLE), "--input", source,
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 2 and len(errors) == 1 and source in errors[0], run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "unable to load" not in run.stderr


def test_dicom_series_is_read_by_one_reader(tmp_path, demo_model, artifact_slices, caplog):
    """No "CTNiftiReader: unable to load" noise: the input's kind picks eqmar's one reader for it."""
    import logging

    _write_dicom_series(tmp_path / "series", [artifact_slices["clean"]])
    with caplog.at_level(logging.DEBUG):
        _run_bundle(input=str(tmp_path / "series"), output_dir=str(tmp_path / "out"), trace_model="line")
    assert not [r for r in caplog.records if "unable to load" in r.getMessage()]
    assert (tmp_path / "out" / "series_mar.nii.gz").is_file()


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    for config in ("inference.yaml", "train.yaml"):
        verify_net_in_out(
            net_id="network_def", meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / config),
            device="cpu",
        )


def test_configs_describe_the_shipped_model(demo_model):
    """network_spec of both configs must be the model file's, so strict loading cannot fail."""
    _, payload = load_mar_model(demo_model)
    for config in ("inference.yaml", "train.yaml"):
        spec = yaml.safe_load((CONFIGS / config).read_text())["network_spec"]
        assert spec == payload["network"], config
    assert model_geometry(payload["meta"]).image_size == SIZE


# ------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def tiny_syndeeplesion(tmp_path_factory) -> tuple[Path, str]:
    """Two phantoms x two metal discs at 64 px / 60 views in the SynDeepLesion layout."""
    from eqmar.data.synthesis import SynthesisConfig, demo_sources, synthesize_dataset

    root = tmp_path_factory.mktemp("syndeeplesion")
    masks = np.stack([_disc(256, 330, 15, 512), _disc(200, 200, 10, 512)], axis=-1).astype(np.uint8)
    config = SynthesisConfig(geometry="640geo", image_size=64, num_views=60, device="cpu", seed=0)
    report = synthesize_dataset(demo_sources(2, 0, "train"), masks, root, "train", config, mask_indices=[0, 1],
                                progress=False)
    assert not report.failures
    return root, config.resolve_tag()


def test_train_config_runs_eqreg(tmp_path, tiny_syndeeplesion):
    from monai.bundle import ConfigWorkflow

    root, tag = tiny_syndeeplesion
    small = {"backbone": "dicdnet",
             "kwargs": {"num_stages": 1, "features": 8, "num_filters": 8, "num_res_blocks": 1, "group_order": 4}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        workflow = ConfigWorkflow(
            config_file=str(CONFIGS / "train.yaml"),
            meta_file=str(CONFIGS / "metadata.json"),
            logging_file=False,
            workflow_type="train",
            bundle_root=str(BUNDLE),
            dataset_dir=str(root),
            geometry_tag=tag,
            train_masks=[0, 1],
            max_epochs=1,
            iters_per_epoch=3,
            batch_size=2,
            patch_size=32,
            network_spec=small,
            output_model=str(tmp_path / "model.pt"),
            **{"eqreg#elements": [1, 2, 3]},  # no identity draw: every step has a nonzero residual
        )
        try:
            workflow.initialize()
            workflow.run()
        finally:
            from monai.utils import set_determinism

            set_determinism(seed=None)  # the config's initialize seeded the global generators
    trainer = workflow.parser.get_parsed_content("train#trainer")
    eqreg = workflow.parser.get_parsed_content("eqreg")
    workflow.finalize()
    assert trainer.state.iteration == 3
    assert trainer.prepare_batch == eqreg.prepare_batch  # the paired batch [x ; g.x]
    output = trainer.state.output[0]
    assert float(output["eq_reg"]) > 0 and np.isfinite(float(output["loss"]))
    assert not eqreg.hooks_registered  # removed at COMPLETED
    # the trained model is a strict, self-describing model file usable by inference
    network, payload = load_mar_model(tmp_path / "model.pt")
    assert payload["network"] == small and payload["meta"]["geometry_tag"] == tag
    assert payload["meta"]["iterations"] == 3 and model_geometry(payload["meta"]).image_size == 64


def test_model_saver_checks_the_spec(tmp_path):
    spec = network_spec("dicdnet", num_stages=1, features=8, num_filters=8, num_res_blocks=1)
    other = network_spec("dicdnet", num_stages=2, features=8, num_filters=8, num_res_blocks=1)
    with pytest.raises(ValueError, match="does not match spec"):
        MARModelSaver(tmp_path / "m.pt", build_from_spec(spec), other, TAG)()
    path = MARModelSaver(tmp_path / "m.pt", build_from_spec(spec), spec, TAG, image_size=128)()
    assert load_mar_model(path)[1]["meta"] == {"geometry_tag": TAG, "image_size": 128}


def test_load_mar_weights_takes_the_network_of_a_trainer_checkpoint(tmp_path):
    """The trainer saves the network under "network": network_def supplies the architecture it lacks."""
    from tests.helpers import make_trainer_checkpoint

    spec = network_spec("dicdnet", num_stages=1, features=8, num_filters=8, num_res_blocks=1)
    trained = build_from_spec(spec)
    checkpoint = make_trainer_checkpoint(trained, tmp_path / "eqreg")
    assert {"network", "optimizer", "trainer", "lr_scheduler"} <= set(torch.load(checkpoint, weights_only=True))
    loaded = load_mar_weights(build_from_spec(spec), checkpoint)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    torch.save({"model": trained.state_dict()}, tmp_path / "model_key.pt")  # MONAI's usual key still works
    load_mar_weights(build_from_spec(spec), tmp_path / "model_key.pt")
    # weights of another backbone: the message says which keys differ, not just "Error(s) in loading"
    acdnet = network_spec("acdnet", num_stages=1, features=8, num_filters=8, num_res_blocks=1)
    with pytest.raises(ValueError, match=r"checkpoint_final.pt: weights do not match .*\(ACDNet\): "
                                         r"69 key\(s\) missing: warmup_"):
        load_mar_weights(build_from_spec(acdnet), checkpoint)
    save_mar_model(tmp_path / "arm" / "model.pt", trained, spec)
    with pytest.raises(ValueError, match=r"is a folder, not a model file; the model file of a training arm is"):
        load_mar_weights(trained, tmp_path / "arm")
    (tmp_path / "empty.pt").touch()
    with pytest.raises(ValueError, match=r"empty.pt: empty file \(0 bytes\)"):
        load_mar_weights(trained, tmp_path / "empty.pt")


# ----------------------------------------------------------------------- parallel-beam fallback
def test_parallel_beam_fbp_reconstructs():
    n = 64
    projector = ParallelBeamProjector(n)
    rows, cols = np.mgrid[:n, :n] - (n - 1) / 2
    image = ((cols / 22.0) ** 2 + (rows / 16.0) ** 2 <= 1).astype(np.float32) * 0.2
    sinogram = projector.forward(image)
    assert sinogram.shape == (projector.num_views, projector.num_bins)
    np.testing.assert_allclose(sinogram.sum(axis=1), image.sum(), rtol=1e-4)  # every view sees all mass
    inside = (cols / 20.0) ** 2 + (rows / 14.0) ** 2 <= 1
    assert abs(projector.fbp(sinogram)[inside].mean() - 0.2) < 2e-3
    with pytest.raises(ValueError, match="must be"):
        projector.forward(np.zeros((n, n + 1)))


def test_parallel_li_matches_fanbeam_li():
    """Where ASTRA is missing, the fallback LI removes streaks about as well as eqmar's physics.

    At 128 px / 160 views the streaks dominate the error outside the metal; at the full 416 px /
    640 views the quantum noise does (input 111 HU, both LIs 111-117 HU), which LI does not touch.
    """
    from eqmar.ct.physics import hu_to_mu, mu_to_hu

    size, tag = 128, "640geo_128px160v"
    slices = _simulated_insert(size, tag)
    artifact, clean = slices["artifact"], slices["clean"]
    metal = artifact > DEFAULT_METAL_THRESHOLD_HU
    parallel = mu_to_hu(image_domain_li(hu_to_mu(artifact), metal, ParallelBeamProjector(size)))
    before, fallback = streak_rmse(artifact, clean, metal), streak_rmse(parallel, clean, metal)
    print(f"LI streak RMSE outside metal: input {before:.1f} HU, parallel-beam LI {fallback:.1f} HU")
    assert fallback < 0.9 * before  # measured 185.7 -> 147.3 HU
    if fanbeam_physics_available():
        from eqmar.ct.projector import Projector

        with Projector(model_geometry({"geometry_tag": tag}), device="cpu") as projector:
            fan = mu_to_hu(image_domain_li(hu_to_mu(artifact), metal, projector))
        assert fallback < 1.1 * streak_rmse(fan, clean, metal)  # measured 147.3 vs 171.1 HU


def test_inferer_on_plain_and_2d_tensors(demo_model, artifact_slices):
    """Without an affine the identity (RAS) is assumed; 2-D inputs are single slices."""
    network = load_mar_weights(build_from_spec(load_mar_model(demo_model)[1]["network"]), demo_model)
    inferer = MARVolumeInferer(demo_model, li_projector="parallel", trace_model="line")
    artifact = artifact_slices["artifact"]
    voxels = axial_to_nifti(artifact[None], np.eye(4))[..., 0]
    out = inferer(torch.from_numpy(voxels)[None, None], network)
    assert out.shape == (1, 1, SIZE, SIZE) and out.dtype == torch.float32
    assert inferer.last_infos[0][0]["metal_pixels"] > 0
    with pytest.raises(ValueError, match="expected a"):
        inferer(torch.zeros(1, 2, 8, 8), network)


# ---------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_run_and_verify(tmp_path, demo_model, artifact_slices):
    """The documented commands, as subprocesses (``python -m monai.bundle`` needs ``fire``)."""
    pytest.importorskip("fire", reason="python -m monai.bundle needs fire (add it to eqmar's dependencies)")
    import nibabel as nib

    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    source = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(axial_to_nifti(artifact_slices["artifact"][None], affine), affine), str(source))
    common = ["--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(BUNDLE)]
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "inference.yaml"), *common,
         "--input", str(source), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "ct_mar.nii.gz").is_file()
    verify = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", "--config_file",
         str(CONFIGS / "inference.yaml"), *common],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert verify.returncode == 0 and "verified with no error" in verify.stdout + verify.stderr, verify.stderr[-3000:]
    shutil.rmtree(tmp_path / "out")
