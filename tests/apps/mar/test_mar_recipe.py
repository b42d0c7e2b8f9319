"""The MAR recipe end to end on tiny data: three arms, table, files, strict model files, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from eqmar.apps.mar import MARExperimentConfig, run_mar_experiment
from eqmar.apps.mar.model_file import load_mar_model, save_mar_model
from tests.helpers import ROOT, TINY_TAG, make_tiny_syndeeplesion, recipe

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _tiny(tmp_path, **overrides) -> MARExperimentConfig:
    demo = {"cache": str(tmp_path / "data"), "image_size": 64, "views": 72, "train_images": 2, "test_images": 2,
            "seed": 0}
    base = dict(
        output_dir=tmp_path / "run", num_stages=2, features=8, num_filters=8, num_res_blocks=1, epochs=1,
        iters_per_epoch=2, batch_size=2, patch_size=32, train_masks=(0, 1), demo=demo, progress=False,
    )
    base.update(overrides)
    return MARExperimentConfig.demo_default(**base)


def test_three_arms_table_files_and_resume(tmp_path) -> None:
    results = run_mar_experiment(_tiny(tmp_path))
    assert set(results["arms"]) == {"plain", "aug", "eqreg"}
    for _arm, res in results["arms"].items():
        assert res["iterations"] == 2
        assert res["metrics"]["average"]["n"] == 20  # 2 test images x 10 test masks
        assert 0 < res["equivariance"]["output"] < 10
    for row in ("| metal-affected |", "| LI |", "| plain |", "| aug |", "| eqreg |"):
        assert row in results["table"]
    out = tmp_path / "run"
    assert json.loads((out / "results.json").read_text())["table"] == results["table"]
    for name in ("examples.png", "equivariance.png", "results.md"):
        assert (out / name).stat().st_size > 0
    net, payload = load_mar_model(out / "eqreg" / "model.pt")
    assert payload["meta"]["image_size"] == 64 and not net.training
    assert list((out / "eqreg" / "tensorboard").glob("events.*"))

    resumed = run_mar_experiment(_tiny(tmp_path, arms=("eqreg",), epochs=2, resume=True))
    assert resumed["arms"]["eqreg"]["iterations"] == 4


def test_strict_loading_rejects_mismatched_weights(tmp_path) -> None:
    from eqmar.apps.mar.model_file import network_spec
    from eqmar.networks import DICDNet

    net = DICDNet(num_stages=2, features=8, num_filters=8, num_res_blocks=1)
    spec = network_spec("dicdnet", num_stages=3, features=8, num_filters=8, num_res_blocks=1)
    path = save_mar_model(tmp_path / "m.pt", net, spec)
    with pytest.raises(ValueError, match="weights do not match"):
        load_mar_model(path)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an eqmar MAR model file"):
        load_mar_model(tmp_path / "foreign.pt")


def test_recipe_help() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "mar_deeplesion.py"), "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--lambda" in out.stdout and "--resume" in out.stdout


def test_data_root_path_runs_the_protocol_with_validation(tmp_path) -> None:
    """--data: a SynDeepLesion-layout root, published defaults overridden to tiny sizes, validation on."""
    mar_deeplesion = recipe("mar_deeplesion")

    root = make_tiny_syndeeplesion(tmp_path / "SynDeepLesion", train_masks=4)
    argv = [
        "--data", str(root), "--geometry-tag", TINY_TAG, "--out", str(tmp_path / "run"), "--arm", "eqreg",
        "--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2", "--patch-size", "32", "--stages", "2",
        "--features", "8", "--train-masks", "0-1", "--val-masks", "2-3", "--val-images", "1", "--no-progress",
    ]
    assert mar_deeplesion.main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    arm = results["arms"]["eqreg"]
    # published defaults
    assert results["config"]["training"]["lr"] == 2e-4 and results["config"]["betas"] == [0.5, 0.999]
    assert arm["metrics"]["average"]["n"] == 10 and arm["iterations"] == 2
    assert arm["validation"]["val_mar_psnr"] > 0
    assert mar_deeplesion.main([*argv[:-1], "--train-masks", "9-1"]) == 2


def test_acdnet_regularises_its_x_net_and_a_misfit_fails_before_training() -> None:
    """ACDNet's M-net is 6 channels wide: the published choice is the X-net; a C4 misfit is reported
    before any arm trains, not after plain and aug have finished."""
    from eqmar.apps.mar.workflow import (
        MARExperimentConfig,
        _check_regularised_layers,
        build_network,
        regularised_layers,
    )

    cfg = MARExperimentConfig.demo_default(backbone="acdnet", num_stages=2)
    net = build_network(cfg)
    layers = regularised_layers(cfg, net)
    assert layers and all(name.split(".")[0] != "m_net" and "x_net" in name for name in layers)
    _check_regularised_layers(cfg, net, layers)  # fits C4
    both = MARExperimentConfig.demo_default(backbone="acdnet", num_stages=2, regularised=("x_net", "m_net"))
    with pytest.raises(ValueError, match="divisible"):
        _check_regularised_layers(both, net, regularised_layers(both, net))


def _recipe_main():
    mar_deeplesion = recipe("mar_deeplesion")

    return mar_deeplesion.main


def test_regularise_typo_fails_before_any_data_or_training_listing_the_valid_names(tmp_path, capsys) -> None:
    main = _recipe_main()
    # --arm plain too: a typo must not be ignored just because this run trains no EQ-Reg arm
    for arm in ("eqreg", "plain"):
        flags = ["--backbone", "dicdnet", "--regularise", "x_nett", "--arm", arm, "--out", str(tmp_path / "run")]
        assert main([*flags, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "no proximal sub-network named 'x_nett'; valid names: m_net, x_net" in err, err
        assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="ACDNet has no proximal sub-network named 'y_net'; valid names: m_net, x_net"):
        MARExperimentConfig.demo_default(backbone="acdnet", regularised=("x_net", "y_net"))
    with pytest.raises(ValueError, match="only the unrolled backbones have"):
        MARExperimentConfig.demo_default(backbone="unet", regularised=("x_net",))
    assert MARExperimentConfig.demo_default(backbone="oscnet", regularised=("m_net",)).regularised == ("m_net",)


def test_overlapping_or_negative_mask_indices_are_refused(tmp_path, capsys) -> None:
    main = _recipe_main()
    argv = ["--out", str(tmp_path / "run"), "--no-progress", "--train-masks", "0-5,9", "--val-masks", "4-9"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "share mask indices 4-5,9" in err and len(err.splitlines()) == 1, err
    with pytest.raises(ValueError, match=r"share mask indices 80-89"):  # the published validation masks
        MARExperimentConfig.published(tmp_path, train_masks=tuple(range(90)))
    with pytest.raises(ValueError, match=r"must be >= 0, got \[-3\]"):
        MARExperimentConfig.demo_default(train_masks=(-3, 0))


def test_mask_indices_beyond_the_mask_file_name_it(tmp_path, capsys) -> None:
    """The data set knows how many masks the root has: it names the mask file and stops before training."""
    import numpy as np

    root = tmp_path / "SynDeepLesion"
    root.mkdir()
    (root / f"train_{TINY_TAG}_dir.txt").write_text("000001_01_01/103/gt.h5\n")
    np.save(root / "trainmask.npy", np.ones((8, 8, 4), np.uint8))
    argv = ["--data", str(root), "--geometry-tag", TINY_TAG, "--out", str(tmp_path / "run"), "--no-progress"]
    assert _recipe_main()([*argv, "--train-masks", "2-5", "--val-masks", "none"]) == 2
    err = capsys.readouterr().err
    assert "mask_indices [4, 5] outside the 4 masks of" in err and "trainmask.npy" in err, err


def test_held_out_set_and_region_errors_are_part_of_the_output(tmp_path) -> None:
    """The demo scores a held-out set (CT_small, head phantoms, --holdout-image files) and per-region errors."""
    import h5py

    from eqmar.ct.physics import hu_to_mu
    from eqmar.data.phantoms import phantom_slice

    extra = tmp_path / "gt.h5"
    with h5py.File(extra, "w") as f:
        f["image"] = hu_to_mu(phantom_slice("abdomen", seed=9, size=64))
    cfg = _tiny(tmp_path, arms=("eqreg",), holdout_images=(extra,))
    cfg.demo.update(holdout=1, holdout_kinds=("head",))
    results = run_mar_experiment(cfg)
    arm = results["arms"]["eqreg"]
    assert arm["holdout_metrics"]["average"]["n"] == 30  # CT_small, 1 head phantom, the extra file x 10 masks
    assert set(arm["region_errors"]) >= {"far soft tissue/air (> 20 px)", "metal edge (≤ 2 px)"}
    assert "LI" in results["holdout_baselines"] and "li_region_errors" in results
    table = results["table"]
    assert ("Held-out set (anatomy the demo never trains on: ct_small_000001/001, file_00_gt/000, "
            "phantom_head/000)") in table
    assert "Mean signed error / RMSE (HU) by distance from the metal, test set:" in table
    net, payload = load_mar_model(tmp_path / "run" / "eqreg" / "model.pt")
    assert payload["meta"]["inference_roi"] == 32  # the UNet is run on patches of its training size
    with pytest.raises(ValueError, match="holdout_images \\(--holdout-image\\): not found"):
        _tiny(tmp_path, holdout_images=(tmp_path / "missing.h5",))
