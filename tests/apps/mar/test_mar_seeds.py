"""recipes/mar_seeds.py: the multi-seed verdict from per-seed results, and resuming finished seeds."""

from __future__ import annotations

import json

import pytest

from tests.helpers import recipe


def _scores(psnr: float, ssim: float) -> dict:
    return {"average": {"psnr": psnr, "ssim": ssim, "n": 40}}


def _write_seed(out, seed: int, plain: float, aug: float, eqreg: float) -> None:
    arms = {
        arm: {"metrics": _scores(v, 0.9), "holdout_metrics": _scores(v - 0.5, 0.85),
              "equivariance": {"layers": {"a": 1.0, "b": 0.5 if arm == "eqreg" else 1.0}, "output": 0.04}}
        for arm, v in (("plain", plain), ("aug", aug), ("eqreg", eqreg))
    }
    payload = {"arms": arms, "baselines": {"LI": _scores(30.0, 0.8)}, "holdout_baselines": {"LI": _scores(29.0, 0.75)}}
    (out / f"seed{seed}").mkdir(parents=True)
    (out / f"seed{seed}" / "results.json").write_text(json.dumps(payload))


def test_verdict_from_finished_seeds_without_training(tmp_path, capsys) -> None:
    out = tmp_path / "seeds"
    for seed, values in enumerate([(32.0, 32.5, 32.6), (31.8, 32.1, 32.4), (32.2, 32.4, 32.5)]):
        _write_seed(out, seed, *values)
    main = recipe("mar_seeds").main
    assert main(["--seeds", "0-2", "--out", str(out)]) == 0  # nothing left to train
    verdict = json.loads((out / "verdict.json").read_text())
    test = verdict["sets"]["test"]["psnr"]
    assert test["LI"] == 30.0 and test["arms"]["plain"]["mean"] == pytest.approx(32.0)
    d = test["differences"]["eqreg - plain"]
    assert d["mean"] == pytest.approx(0.5) and d["wins"] == 3 and d["resolved"]
    assert test["minus_LI"]["eqreg"]["mean"] == pytest.approx(32.5 - 30.0)
    assert verdict["sets"]["held-out"]["psnr"]["arms"]["aug"]["mean"] == pytest.approx(32.3333 - 0.5, abs=1e-3)
    text = (out / "verdict.md").read_text()
    assert "### test set, average PSNR" in text and "### held-out set, average SSIM" in text
    assert "| eqreg − aug |" in text
    assert "| eqreg | 0.750 ± 0.000 | 0.0400 ± 0.0000 |" in text and "| aug | 1.000 ± 0.000 |" in text
    assert verdict["equivariance"]["eqreg"]["mean_layer_error"] == [0.75, 0.0]


def test_seeds_flag_needs_two_valid_seeds(tmp_path, capsys) -> None:
    main = recipe("mar_seeds").main
    assert main(["--seeds", "3", "--out", str(tmp_path)]) == 2
    assert "at least two seeds" in capsys.readouterr().err
    assert main(["--seeds", "4-2", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
