"""Deraining: RCDNet, its loss and EQ-Reg layers, the rain-streak transform, Rain100L data, the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from eqmar.apps.derain.data import Rain100LDataset, pair_key
from eqmar.apps.derain.transforms import RandRainStreaks, RandRainStreaksd, line_kernel
from eqmar.equivariance import EQReg
from eqmar.losses import DerainLoss
from eqmar.networks import DerainOutput, RCDNet, background_conv_names
from tests.helpers import recipe

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _tiny_rcdnet(**kwargs) -> RCDNet:
    torch.manual_seed(0)
    settings = dict(num_stages=2, num_filters=8, features=8, num_res_blocks=1)
    settings.update(kwargs)
    return RCDNet(**settings)


# ---------------------------------------------------------------------------------------- RCDNet
def test_rcdnet_training_mode_returns_stage_outputs_and_eval_mode_the_background() -> None:
    net = _tiny_rcdnet(num_stages=3)
    rainy = torch.rand(2, 3, 24, 24)
    out = net(rainy)
    assert isinstance(out, DerainOutput)
    assert len(out.stage_backgrounds) == len(out.stage_rains) == 3
    for t in (out.background, out.init_background, *out.stage_backgrounds, *out.stage_rains):
        assert t.shape == (2, 3, 24, 24)
    assert torch.equal(out.rainy, rainy)
    loss = DerainLoss()
    assert set(loss.components(out, rainy * 0.9)) == {"background", "rain"}
    loss(out, rainy * 0.9).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    net.eval()
    with torch.no_grad():
        background = net(rainy)
    assert isinstance(background, torch.Tensor) and background.shape == (2, 3, 24, 24)


def test_rcdnet_grey_input_published_defaults_and_errors() -> None:
    grey = _tiny_rcdnet(in_channels=1)
    assert grey.eval()(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    published = RCDNet()
    assert len(published.stages) == 17 and published.dictionary.weight.shape == (3, 32, 9, 9)
    assert published.stages[0].x_net.res_blocks[0].conv_1.out_channels == 36
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        _tiny_rcdnet()(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="features=35 is not divisible by group_order=4"):
        RCDNet(features=35)


def test_derain_loss_weights_follow_the_published_script() -> None:
    """0.1 on B_0, every stage background and rain layer, 1 on the final background, +0.9 on the last rain."""
    clean = torch.zeros(1, 1, 2, 2)
    one = torch.full_like(clean, 1 / 255)  # an error of 1 grey level: MSE 1 in the 0-255 scale
    out = DerainOutput(one, (one, one), (one, one), one, torch.zeros_like(clean))
    parts = DerainLoss().components(out, clean)
    assert parts["background"].item() == pytest.approx(0.1 + 0.2 + 1.0)
    assert parts["rain"].item() == pytest.approx(0.2 + 0.9)
    assert DerainLoss()(one, clean).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        DerainLoss()(one, torch.zeros(1, 3, 2, 2))


def test_eqreg_hooks_exactly_the_background_net_convs() -> None:
    net = _tiny_rcdnet(num_stages=3, num_res_blocks=2)
    names = background_conv_names(net, group_order=4)
    assert len(names) == (3 + 2) * 2 * 2  # init + S stages + final B-net, 2 ResBlocks of 2 convs each
    assert all(("x_net" in n) and ("m_net" not in n) for n in names)
    all_convs = {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(names) == {n for n in all_convs if n.startswith(("init.x_net", "final_x_net")) or ".x_net." in n}
    eqreg = EQReg(net, layers=names, weight=1.0)
    assert list(eqreg.layers) == names
    seen: list[str] = []
    for name, module in net.named_modules():
        module.register_forward_hook(lambda m, i, o, name=name: seen.append(name))
    net.train()
    batch = eqreg.pair({"image": torch.rand(1, 3, 16, 16), "label": torch.rand(1, 3, 16, 16)}, n=1)
    net(batch["image"])
    term = eqreg.pop_term()
    assert term.item() > 0
    assert set(names) <= set(seen)  # every hooked layer ran: the term covers all of them


# ------------------------------------------------------------------------------------- rain streaks
def test_rain_streaks_are_seeded_and_vary_with_the_seed() -> None:
    clean = np.full((3, 64, 64), 0.3, dtype=np.float32)

    def rain(seed: int):
        t = RandRainStreaks(density=(0.002, 0.02))
        t.set_random_state(seed)
        return t(clean), dict(t.params)

    (a, pa), (b, pb), (c, pc) = rain(0), rain(0), rain(1)
    assert np.array_equal(a, b) and pa == pb
    assert not np.array_equal(a, c)
    assert pa["angle"] != pc["angle"] and pa["density"] != pc["density"]
    assert a.dtype == np.float32 and a.shape == clean.shape
    assert (a >= clean - 1e-6).all() and a.max() <= 1.0  # screen blend: brighter, stays in [0, 1]
    assert np.allclose(a[0], a[1]) and np.allclose(a[1], a[2])  # rain is colourless

    # density: more drops, more rainy pixels; orientation: the streaks follow the angle
    sparse, dense = (RandRainStreaks(density=d, blur=0.0) for d in (0.002, 0.02))
    for t in (sparse, dense):
        t.set_random_state(3)
    assert (dense(clean) > 0.35).mean() > 3 * (sparse(clean) > 0.35).mean()
    vertical, tilted = line_kernel(15, 1, 0.0), line_kernel(15, 1, 45.0)
    rows, cols = np.nonzero(vertical > 0.5)
    assert np.ptp(cols) == 0 and np.ptp(rows) >= 13
    rows, cols = np.nonzero(tilted > 0.5)
    assert np.corrcoef(rows, cols)[0, 1] < -0.9  # top right to bottom left: positive angle tilts the top right


def test_rain_streaks_dict_version_and_torch_input() -> None:
    clean = torch.full((3, 32, 32), 0.2)
    t = RandRainStreaksd(keys=("image", "other"), params_key="rain", density=0.01)
    t.set_random_state(7)
    out = t({"image": clean, "other": clean.clone(), "label": clean})
    assert isinstance(out["image"], torch.Tensor) and torch.equal(out["image"], out["other"])
    assert torch.equal(out["label"], clean) and out["image"].sum() > clean.sum()
    assert set(out["rain"]) == {"angle", "length", "width", "density", "intensity", "blur"}
    assert RandRainStreaks(prob=0.0)(clean) is clean
    with pytest.raises(ValueError, match="blend"):
        RandRainStreaks(blend="multiply")
    with pytest.raises(ValueError, match="density"):
        RandRainStreaks(density=(0.5, 0.1))


# ------------------------------------------------------------------------------------ Rain100L data
def _write_pairs(folder, names_rain, names_clean, size=(12, 16)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub, names in (("rain", names_rain), ("norain", names_clean)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / sub / name)


def test_rain100l_dataset_loads_published_and_identical_names(tmp_path) -> None:
    root = tmp_path / "Rain100L"
    _write_pairs(root / "train" / "small", [f"rain-{i}.png" for i in (1, 2, 10)],
                 [f"norain-{i}.png" for i in (1, 2, 10)])
    _write_pairs(root / "test", ["a.png", "b.png"], ["a.png", "b.png"])
    train = Rain100LDataset(root, "train")
    assert train.names == ["1", "2", "10"] and len(train) == 3
    sample = train[0]
    assert sample["image"].shape == sample["label"].shape == (3, 12, 16)  # rows first, as stored
    assert sample["image"].dtype == torch.float32 and 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
    from PIL import Image

    stored = np.asarray(Image.open(root / "train" / "small" / "norain" / "norain-1.png"), dtype=np.float32) / 255
    assert np.allclose(sample["label"].numpy().transpose(1, 2, 0), stored, atol=1e-6)
    test = Rain100LDataset(root, "test", channels=1)
    assert test.names == ["a", "b"] and test[1]["image"].shape == (1, 12, 16)
    assert pair_key("rain-001.png") == pair_key("norain-1.png") == "1"


def test_rain100l_dataset_rejects_unmatched_names_and_missing_folders(tmp_path) -> None:
    folder = tmp_path / "bad"
    _write_pairs(folder, ["rain-1.png", "rain-2.png", "rain-3.png"], ["norain-1.png", "norain-4.png"])
    with pytest.raises(ValueError, match="unmatched file names") as info:
        Rain100LDataset(folder, split=None)
    message = str(info.value)
    assert str(folder) in message and "rain-2.png" in message and "rain-3.png" in message and "norain-4.png" in message
    with pytest.raises(FileNotFoundError, match="no Rain100L"):
        Rain100LDataset(tmp_path, "train")


# ------------------------------------------------------------------------------------------- recipe
def _recipe():


    derain_rain100l = recipe("derain_rain100l")

    return derain_rain100l


TINY = ["--stages", "2", "--features", "8", "--filters", "8", "--res-blocks", "1", "--epochs", "1",
        "--iters-per-epoch", "2", "--batch-size", "2", "--patch-size", "16", "--no-progress"]


def _tiny_rain100l(tmp_path, train: int, test: int, shape: tuple[int, int, int], seed: int):
    """A Rain100L-layout folder of random clean images with synthetic rain; returns its root."""
    from eqmar.apps.derain import write_rain_pairs

    rng = np.random.default_rng(seed)
    root = tmp_path / "Rain100L"
    for split, count in (("train", train), ("test", test)):
        clean = [rng.uniform(0.1, 0.6, shape).astype(np.float32) for _ in range(count)]
        write_rain_pairs(root / split / "small", clean, seed=count, density=0.02)
    return root


def test_recipe_trains_every_arm_on_a_tiny_rain100l_folder(tmp_path, capsys) -> None:
    import json

    root = _tiny_rain100l(tmp_path, train=3, test=2, shape=(3, 20, 28), seed=1)
    out = tmp_path / "run"
    assert _recipe().main(["--data", str(root), "--out", str(out), *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"plain", "aug", "eqreg", "strict"}
    for arm, summary in results["arms"].items():
        assert summary["iterations"] == 2, arm
        assert np.isfinite(summary["metrics"]["PSNR-Y"]) and 0 < summary["metrics"]["SSIM-Y"] <= 1
    assert results["meta"]["source"] == "Rain100L" and results["test_images"]["1"] == [3, 20, 28]  # whole images
    # published λ with --data
    assert results["config"]["y_channel"] and results["meta"]["derain"]["training"]["weight"] == 1e-8
    assert results["meta"]["regularised_layers"] == (2 + 2) * 2 * 1  # B-net convs: (S + 2) nets x 2 convs x 1 ResBlock
    printed = capsys.readouterr().out
    for row in ("| degraded input |", "| plain |", "| aug |", "| eqreg |", "| strict (P4) |"):
        assert row in results["table"] and row in printed
    assert (out / "examples.png").stat().st_size > 0 and (out / "results.md").exists()
    assert (out / "eqreg" / "model.pt").exists()


def test_one_arm_rerun_keeps_the_other_arms_although_the_derain_config_is_nested(tmp_path) -> None:
    """``meta.derain`` repeats the run-only settings (arms, threads, ...); they must not block the merge."""
    import json

    root = _tiny_rain100l(tmp_path, train=2, test=1, shape=(3, 16, 16), seed=2)
    out = tmp_path / "run"
    common = ["--data", str(root), "--out", str(out), *TINY]
    assert _recipe().main([*common, "--arm", "plain"]) == 0
    assert _recipe().main([*common, "--arm", "strict", "--threads", "2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["arms"]) == ["plain", "strict"] and results["arms"]["plain"]["from_earlier_run"]
    assert "| plain |" in results["table"] and "| strict (P4) |" in results["table"]
    assert not list(out.glob("results.*Z*.json"))


def test_recipe_rejects_bad_data_with_exit_code_2(tmp_path, capsys) -> None:
    recipe = _recipe()
    assert recipe.main(["--data", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert recipe.main(["--data", str(tmp_path), "--no-progress"]) == 2
    assert "no Rain100L" in capsys.readouterr().err
    _write_pairs(tmp_path / "train", ["rain-1.png"], ["norain-2.png"])
    _write_pairs(tmp_path / "test", ["rain-1.png"], ["norain-1.png"])
    assert recipe.main(["--data", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unmatched file names" in err and "rain-1.png" in err and "Traceback" not in err


def test_recipe_help() -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "derain_rain100l.py"), "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--data", "--out", "--arm", "--lambda", "--group", "--stages", "--resume", "--no-progress"):
        assert flag in out.stdout


@pytest.mark.slow
def test_embedded_demo_runs_every_arm(tmp_path) -> None:
    """The default data path (bundled photographs + synthetic rain) at tiny sizes."""
    from eqmar.apps.derain import DerainExperimentConfig, run_derain_experiment

    cfg = DerainExperimentConfig.demo_default(
        output_dir=tmp_path, num_stages=2, features=8, num_filters=8, num_res_blocks=1, strict_depth=2, epochs=1,
        iters_per_epoch=2, batch_size=2, patch_size=32, test_size=48, progress=False,
    )
    results = run_derain_experiment(cfg)
    assert set(results["arms"]) == {"plain", "aug", "eqreg", "strict"}
    assert results["test_images"] == {"chelsea": [3, 48, 48], "coffee": [3, 48, 48]}
    assert results["baselines"]["degraded input"]["PSNR-Y"] < 40  # the test images really are rainy
    assert (tmp_path / "examples.png").exists() and (tmp_path / "equivariance.png").exists()
