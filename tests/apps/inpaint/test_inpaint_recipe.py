"""Inpainting: the pixel-mask + Poisson transform, and the recipe end to end on tiny data."""

from __future__ import annotations

import json

import pytest
import torch

from eqmar.apps.inpaint import (
    MaskedAverage,
    RandPixelMask,
    RandPixelMaskd,
    build_inpainting_strict_network,
    build_inpainting_unet,
)
from tests.helpers import recipe

pytestmark = pytest.mark.usefixtures("single_torch_thread")

inpaint_natural = recipe("inpaint_natural")


def _degrade(x: torch.Tensor, seed: int, **kwargs) -> torch.Tensor:
    t = RandPixelMask(**kwargs)
    t.set_random_state(seed)
    return t(x)


# -- the transform -----------------------------------------------------------------------------


def test_same_seed_same_output_different_seed_different() -> None:
    x = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b, c = _degrade(x, 5), _degrade(x, 5), _degrade(x, 6)
    assert a.shape == (4, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    t = RandPixelMask()
    t.set_random_state(5)
    first = t(x)
    assert torch.equal(t(x, randomize=False), first) and not torch.equal(t(x), first)


@pytest.mark.parametrize("rate", [0.3, 0.7])
def test_mask_rate_and_dropped_pixels(rate: float) -> None:
    x = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.1
    y = _degrade(x, 0, rate=rate)
    known = y[3]
    assert set(known.unique().tolist()) <= {0.0, 1.0}
    assert (1 - known.mean()).item() == pytest.approx(rate, abs=0.01)  # 65536 Bernoulli draws: sd 0.002
    assert torch.all(y[:3][:, known == 0] == 0)  # dropped in every channel
    assert (y[:3][:, known == 1] > 0).float().mean() > 0.99  # observed pixels carry (noisy) data


@pytest.mark.parametrize("level", [0.2, 0.6])
def test_poisson_noise_preserves_the_mean_with_variance_gamma_x(level: float) -> None:
    gamma = 0.05
    y = _degrade(torch.full((1, 512, 512), level), 2, gamma=gamma)
    observed = y[0][y[1] == 1]
    assert observed.mean().item() == pytest.approx(level, rel=0.01)
    assert observed.var().item() == pytest.approx(gamma * level, rel=0.03)
    counts = observed / gamma  # y = gamma * Poisson(x / gamma): integer counts
    assert torch.allclose(counts, counts.round(), atol=1e-3)


def test_noiseless_masking_and_prob_zero() -> None:
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = _degrade(x, 0, gamma=0.0, append_mask=False)
    assert y.shape == x.shape and torch.equal(y[y != 0], x[y != 0])
    untouched = _degrade(x, 0, prob=0.0)
    assert torch.equal(untouched[:3], x) and torch.all(untouched[3] == 1)
    with pytest.raises(ValueError, match="rate"):
        RandPixelMask(rate=1.0)


def test_dict_version_shares_the_mask_and_is_seeded() -> None:
    x = torch.full((3, 64, 64), 0.5)
    t = RandPixelMaskd(keys=["image", "other"], mask_key="mask", append_mask=False)
    t.set_random_state(9)
    out = t({"image": x, "other": x, "label": x})
    assert out["mask"].shape == (1, 64, 64) and torch.equal(out["label"], x)
    for key in ("image", "other"):
        assert torch.equal((out[key] != 0).any(0, keepdim=True).float(), out["mask"])
    assert not torch.equal(out["image"], out["other"])  # independent noise, same mask
    t.set_random_state(9)
    assert torch.equal(t({"image": x, "other": x})["image"], out["image"])


# -- the networks ------------------------------------------------------------------------------


def test_masked_average_fills_holes_and_networks_start_from_it_equivariantly() -> None:
    x = torch.full((1, 3, 8, 8), 0.5)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:4, 2:4] = 0
    masked = torch.cat([x * mask, mask], dim=1)
    assert torch.allclose(MaskedAverage()(masked), x)  # holes filled from observed neighbours only
    masked = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    masked[:, 3] = (masked[:, 3] > 0.3).float()
    unet = build_inpainting_unet(3, (8, 8, 16, 16, 32, 8))
    assert torch.equal(unet(masked), MaskedAverage()(masked))  # zero-initialised correction
    strict = build_inpainting_strict_network(unet, 3, depth=3)
    torch.nn.init.normal_(strict.net.head.weight, std=0.1)
    with torch.no_grad():
        out, rotated = strict(masked), strict(torch.rot90(masked, 1, dims=(2, 3)))
    assert torch.allclose(rotated, torch.rot90(out, 1, dims=(2, 3)), atol=1e-5)


# -- the recipe --------------------------------------------------------------------------------


TINY = ["--epochs", "1", "--iters-per-epoch", "2", "--batch-size", "2", "--patch-size", "32", "--test-size", "32",
        "--no-progress"]


def test_recipe_trains_every_arm_and_writes_results(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert inpaint_natural.main(["--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"plain", "aug", "eqreg", "strict"}
    for arm in results["arms"].values():
        assert arm["iterations"] == 2 and 0 < arm["metrics"]["PSNR"] < 60
        assert set(arm["metrics"]["per_image"]) == {"chelsea", "coffee"}
        assert arm["equivariance"] is not None
    assert results["arms"]["strict"]["equivariance"]["output"] < 1e-4
    assert results["meta"]["rate"] == 0.3 and results["meta"]["gamma"] == 0.05
    assert set(results["baselines"]) == {"degraded input", "masked 3×3 average"}
    for row in ("| degraded input |", "| masked 3×3 average |", "| plain |", "| aug |", "| eqreg |", "| strict (P4) |"):
        assert row in results["table"] and row in printed
    assert results["table"] in (out / "results.md").read_text()
    for name in ("examples.png", "equivariance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "eqreg" / "model.pt").exists()

    again = ["--out", str(out), "--arm", "eqreg", *TINY]
    again[again.index("--epochs") + 1] = "2"
    assert inpaint_natural.main([*again, "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["arms"]["eqreg"]["iterations"] == 4


def test_bad_data_folders_fail_clearly(tmp_path, capsys) -> None:
    assert inpaint_natural.main(["--data", str(tmp_path / "missing"), *TINY]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert inpaint_natural.main(["--data", str(tmp_path / "empty"), *TINY]) == 2
    assert "no image files" in capsys.readouterr().err


def test_unreadable_image_exits_2_naming_it_without_traceback(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (data / "other.jpg").write_bytes(b"")
    assert inpaint_natural.main(["--data", str(data), "--out", str(tmp_path / "o"), *TINY]) == 2  # not raised
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    assert inpaint_natural.main([*TINY, "--patch-size", "16", "--out", str(tmp_path / "o")]) == 2
    assert "at least 32" in capsys.readouterr().err


def test_help_lists_the_flags(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        inpaint_natural.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--lambda", "--rate", "--gamma", "--resume", "--arm", "--group", "--no-progress"):
        assert flag in text
