"""Equivariance diagnostics: strict networks score zero, ordinary ones do not; the chart is written."""

from __future__ import annotations

import json

import torch
from torch import nn

from eqmar.equivariance import (
    EquivarianceReport,
    GroupConv2d,
    GroupLiftingConv2d,
    GroupPool,
    equivariance_report,
    plot_equivariance_report,
)


class _StrictRestorer(nn.Module):
    """Lifting conv -> group conv -> orientation pooling -> 1x1 conv: exactly C4-equivariant."""

    def __init__(self) -> None:
        super().__init__()
        self.lift = GroupLiftingConv2d(1, 2, 3)
        self.gconv = GroupConv2d(2, 2, 3)
        self.pool = GroupPool()
        self.head = nn.Conv2d(2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.gconv(torch.relu(self.lift(x))))))


def _loader() -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return [{"image": torch.randn(2, 1, 16, 16)} for _ in range(2)]


def test_strict_network_reports_zero_and_plain_cnn_does_not(tmp_path) -> None:
    torch.manual_seed(0)
    strict = equivariance_report(_StrictRestorer(), _loader(), layers=(GroupLiftingConv2d, GroupConv2d))
    assert set(strict.layers) == {"lift", "gconv"}
    assert max(strict.layers.values()) < 1e-5 and strict.output < 1e-5
    assert strict.samples == 4 and strict.elements == [1, 2, 3]

    plain_net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    plain = equivariance_report(plain_net, _loader(), layers=["0"])
    assert plain.layers["0"] > 0.2 and plain.output > 0.2

    png = plot_equivariance_report({"strict": strict, "plain": plain}, tmp_path / "eq.png")
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(strict.save_json(tmp_path / "eq.json").read_text())
    assert saved["group"] == "C4" and saved["layers"]["lift"] < 1e-5


def test_classifier_output_is_scored_as_invariance() -> None:
    net = nn.Sequential(GroupLiftingConv2d(1, 2, 3), GroupPool(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(2, 3))
    report = equivariance_report(net, [torch.randn(3, 1, 12, 12)], layers=GroupLiftingConv2d)
    assert report.output < 1e-5


def test_report_restores_training_mode_and_handles_many_layers(tmp_path) -> None:
    net = nn.Sequential(*[nn.Conv2d(4 if i else 1, 4, 3, padding=1) for i in range(30)])
    net.train()
    report = equivariance_report(net, [torch.randn(1, 1, 8, 8)], elements=[2])
    assert net.training and len(report.layers) == 30 and isinstance(report, EquivarianceReport)
    assert plot_equivariance_report(report, tmp_path / "many.png").exists()


def test_c2_output_error_on_non_square_images_is_equivariance() -> None:
    """A strictly C2-equivariant network scores ~0 on 12 x 16 images (not an invariance error)."""
    torch.manual_seed(0)
    net = nn.Sequential(GroupLiftingConv2d(1, 2, 3, group="C2"), GroupPool("C2"), nn.Conv2d(2, 1, 1)).eval()
    loader = [torch.randn(2, 1, 12, 16)]
    report = equivariance_report(net, loader, layers=["0"], group="C2")
    assert report.output < 1e-5, report.output
    assert max(report.layers.values()) < 1e-5
