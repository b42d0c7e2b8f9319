"""Patch-wise inference of MAR networks whose output depends on the statistics of their input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from eqmar.apps.mar.sliding import inference_roi, mar_forward


class _Local(nn.Module):
    """A per-pixel network: the same output whole or patch by patch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:2] * 2.0 + x[:, 0:1]


class _GlobalStatistics(nn.Module):
    """Instance-normalisation-like: subtracts the mean of whatever it is given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:2] - x[:, 1:2].mean(dim=(-2, -1), keepdim=True)


def test_patches_give_the_whole_image_result_for_a_local_network() -> None:
    x = torch.rand(2, 3, 70, 90)
    torch.testing.assert_close(mar_forward(_Local(), x, roi=32), _Local()(x))
    torch.testing.assert_close(mar_forward(_Local(), x, roi=None), _Local()(x))
    torch.testing.assert_close(mar_forward(_Local(), x, roi=128), _Local()(x))  # patch larger than the slice


def test_patches_change_what_a_statistics_dependent_network_computes() -> None:
    x = torch.zeros(1, 3, 64, 64)
    x[:, 1, :, :32] = 1.0  # half bright: the whole-image mean is 0.5, a patch's mean is 0 or 1
    whole, patched = _GlobalStatistics()(x), mar_forward(_GlobalStatistics(), x, roi=16)
    assert whole[0, 0, 8, 8] == pytest.approx(0.5)
    assert abs(float(patched[0, 0, 8, 8])) < 1e-6  # a patch inside the bright half is all bright


def test_the_model_file_meta_names_the_patch_size() -> None:
    assert inference_roi({"inference_roi": 64}) == 64 and inference_roi({}) is None and inference_roi(None) is None
    for bad in (0, -3, 64.0, "64", True):
        with pytest.raises(ValueError, match="inference_roi must be a positive integer"):
            inference_roi({"inference_roi": bad})


def test_inference_runs_the_unet_on_patches_when_its_model_file_asks(tmp_path) -> None:
    from eqmar.apps.mar.inference import MARInference
    from eqmar.apps.mar.model_file import build_from_spec, network_spec, save_mar_model
    from eqmar.data.phantoms import phantom_slice

    torch.manual_seed(0)
    spec = network_spec("unet", features=[8, 8, 16, 32, 64, 8], zero_init_residual=False)
    net = build_from_spec(spec)
    meta = {"geometry_tag": "640geo_64px72v", "image_size": 64}
    whole = save_mar_model(tmp_path / "whole.pt", net, spec, meta)
    patched = save_mar_model(tmp_path / "patched.pt", net, spec, {**meta, "inference_roi": 32})
    hu = phantom_slice("pelvis", seed=0, size=64)
    hu[30:33, 40:43] = 3071.0
    with MARInference(whole, device="cpu") as a, MARInference(patched, device="cpu") as b:
        out_whole, _ = a.correct_slice(hu)
        out_patched, _ = b.correct_slice(hu)
    assert np.isfinite(out_patched).all() and out_patched.shape == hu.shape
    assert np.abs(out_whole - out_patched).max() > 1.0  # instance norm: patch statistics differ
