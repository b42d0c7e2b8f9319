"""Training inputs made as the clinical route makes them (eqmar.apps.mar.route) and the fine-tuning options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY_TAG, make_tiny_syndeeplesion, recipe


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return make_tiny_syndeeplesion(tmp_path_factory.mktemp("route") / "SynDeepLesion", train_masks=2)


def _tiny_geometry():
    from eqmar.apps.mar.inference import model_geometry

    return model_geometry({"geometry_tag": TINY_TAG, "image_size": 64})


def test_stored_hu_rounds_and_clips_like_a_scanner():
    from eqmar.apps.mar.route import STORED_HU_RANGE, stored_hu
    from eqmar.ct.physics import hu_to_mu

    hu = stored_hu(hu_to_mu(np.array([[-3000.0, -0.4, 40.6, 5000.0]], np.float32)))
    assert hu.dtype == np.int16
    assert hu.tolist() == [[int(STORED_HU_RANGE[0]), 0, 41, int(STORED_HU_RANGE[1])]]


def test_route_inputs_are_the_routes_own(tiny_root):
    """Stored HU back in µ, the HU-threshold mask and the image-domain LI of MARInference's route."""
    from eqmar.apps.mar.inference import image_domain_li, threshold_metal_mask
    from eqmar.apps.mar.route import route_inputs, stored_hu
    from eqmar.ct.physics import hu_to_mu, mu_to_hu
    from eqmar.ct.projector import Projector
    from eqmar.data.syndeeplesion import SynDeepLesionLayout, read_pair

    layout = SynDeepLesionLayout(tiny_root, "train", TINY_TAG)
    ma = read_pair(layout.pair_path(layout.read_list()[0], 0), keys=("ma_CT",))["ma_CT"]
    projector = Projector(_tiny_geometry(), device="cpu")
    try:
        ma_route, li, mask = route_inputs(ma, projector)
        hu = stored_hu(ma).astype(np.float32)
        expected_mask = threshold_metal_mask(hu)
        assert mask.dtype == np.uint8 and np.array_equal(mask.astype(bool), expected_mask) and mask.any()
        assert mu_to_hu(ma_route).max() <= 3071.5  # metal clipped at the top of the stored range
        np.testing.assert_allclose(ma_route, hu_to_mu(np.maximum(hu, -1000.0)), atol=1e-6)
        np.testing.assert_allclose(li, image_domain_li(ma_route, expected_mask, projector, "line"), atol=1e-6)
        # no metal: nothing to interpolate
        _, li_none, mask_none = route_inputs(np.full_like(ma, 0.192), projector)
        assert not mask_none.any() and np.allclose(li_none, 0.192)
    finally:
        projector.close()


def test_route_files_resume_and_feed_the_dataset(tiny_root):
    """ensure_route_inputs writes each pair once; RouteInputsDataset serves them with the protocol's keys."""
    from eqmar.apps.mar.route import RouteInputsDataset, ensure_route_inputs, route_split_dir
    from eqmar.apps.mar.transforms import MARInputsd

    folder = ensure_route_inputs(tiny_root, "train", TINY_TAG, _tiny_geometry(), [0, 1], progress=False)
    files = sorted(folder.rglob("*.h5"))
    assert folder == route_split_dir(tiny_root, "train", TINY_TAG) and len(files) == 4  # 2 images x 2 masks
    stamps = [f.stat().st_mtime_ns for f in files]
    ensure_route_inputs(tiny_root, "train", TINY_TAG, _tiny_geometry(), [0, 1], progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # complete: nothing rewritten
    files[0].unlink()  # an interrupted run: only the missing pair is made again
    ensure_route_inputs(tiny_root, "train", TINY_TAG, _tiny_geometry(), [0, 1], progress=False)
    assert files[0].is_file()

    dataset = RouteInputsDataset(tiny_root, "train", [0, 1], transform=MARInputsd(), geometry=TINY_TAG)
    sample = dataset[0]
    assert len(dataset) == 4 and sample["image"].shape == (3, 64, 64) and sample["label"].shape == (2, 64, 64)
    # the loss leaves out the route's mask (what the route puts back as stored)
    assert torch.equal(sample["label"][1], 1.0 - sample["mask"][0])
    assert sample["mask"].sum() > 0 and sample["image"][0].max() <= 0.192 * 4.0715


def test_metal_crops_centre_patches_on_metal(tiny_root):
    from eqmar.apps.mar.workflow import _train_transform
    from eqmar.data.datasets import SynDeepLesionTrainDataset

    dataset = SynDeepLesionTrainDataset(tiny_root, mask_indices=[0], geometry=TINY_TAG,
                                        transform=_train_transform(16, metal_crop_fraction=1.0))
    for index in range(len(dataset)):
        patch = dataset[index]
        patch = patch[0] if isinstance(patch, list) else patch
        assert patch["image"].shape == (3, 16, 16)
        assert (patch["image"][2] < 0.5).any()  # every patch holds metal


def test_fine_tuning_run_starts_from_the_given_weights_and_mixes_route_inputs(tiny_root, tmp_path):
    """--init-weights, --route-fraction and --metal-crops through the recipe; a foreign model is refused."""
    mar_deeplesion = recipe("mar_deeplesion")

    from eqmar.apps.mar.model_file import load_mar_model

    base = ["--data", str(tiny_root), "--geometry-tag", TINY_TAG, "--arm", "eqreg", "--epochs", "1",
            "--iters-per-epoch", "2", "--batch-size", "2", "--patch-size", "32", "--backbone", "unet",
            "--train-masks", "0-1", "--val-masks", "none", "--no-progress"]
    assert mar_deeplesion.main([*base, "--out", str(tmp_path / "first")]) == 0
    first = tmp_path / "first" / "eqreg" / "model.pt"
    argv = [*base, "--out", str(tmp_path / "tuned"), "--init-weights", str(first), "--route-fraction", "1",
            "--metal-crops", "0.5", "--lr", "0"]
    assert mar_deeplesion.main(argv) == 0
    results = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert results["config"]["route_fraction"] == 1.0 and results["config"]["metal_crop_fraction"] == 0.5
    assert (tiny_root / f"route_train_{TINY_TAG}").is_dir()
    # learning rate 0: the tuned model is the model it started from
    a, first_payload = load_mar_model(first)
    b, payload = load_mar_model(tmp_path / "tuned" / "eqreg" / "model.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=False):
        assert torch.equal(x, y), name
    # the file records how its route inputs were made, and inference makes its LI the same way by default
    assert "route_inputs" not in first_payload["meta"]
    assert payload["meta"]["route_inputs"] == {"fraction": 1.0, "trace_model": "line", "metal_threshold_hu": 2500.0}
    from eqmar.apps.mar.inference import MARInference

    assert MARInference(first, "cpu").trace_model == "interpolating"
    assert MARInference(tmp_path / "tuned" / "eqreg" / "model.pt", "cpu").trace_model == "line"
    assert MARInference(tmp_path / "tuned" / "eqreg" / "model.pt", "cpu", trace_model="interpolating").trace_model == (
        "interpolating")
    # weights of another network: one clear error, exit status 2
    assert mar_deeplesion.main([*base, "--out", str(tmp_path / "bad"), "--init-weights", str(first),
                                "--features", "8"]) == 2


def test_clinical_preset_mixes_route_inputs_with_metal_centred_patches(tmp_path):
    """The shipped model's settings: half route inputs (every other mask), route patches on metal,
    protocol ones uniform."""
    from eqmar.apps.mar.workflow import MARExperimentConfig, route_data_masks

    model = tmp_path / "reference.pt"
    model.write_bytes(b"")  # only its existence is checked here
    cfg = MARExperimentConfig.clinical_default(init_weights=model)
    reference = MARExperimentConfig.reference_default()
    assert cfg.route_fraction == 0.5 and cfg.metal_crop_fraction == 0.0 and cfg.route_metal_crop_fraction == 1.0
    assert route_data_masks(cfg) == tuple(range(0, 20, 2)) and cfg.train_masks == reference.train_masks
    assert cfg.demo == reference.demo  # the reference model's data set (and cache)
    assert cfg.training.epochs * cfg.training.iters_per_epoch == 3000
    assert cfg.training.lr == reference.training.lr * reference.training.lr_decay ** 2
    with pytest.raises(ValueError, match="route_fraction"):
        MARExperimentConfig.clinical_default(init_weights=model, route_fraction=1.5)
    with pytest.raises(ValueError, match="not training masks"):
        MARExperimentConfig.clinical_default(init_weights=model, route_masks=(99,))


def test_clinical_preset_needs_the_reference_weights(capsys):
    mar_deeplesion = recipe("mar_deeplesion")

    assert mar_deeplesion.main(["--preset", "clinical"]) == 2
    assert "--init-weights" in capsys.readouterr().err
