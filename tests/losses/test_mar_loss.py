"""Tests for MARLoss against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eqmar.losses import MARLoss
from eqmar.networks import MAROutput


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, -1)


def _hand_example() -> tuple[MAROutput, torch.Tensor]:
    """Two pixels, the second is metal (mask 0) so only the first counts; see the test for sums."""
    pred = MAROutput(
        image=_t(0.24, 7.0),
        stage_images=(_t(0.15, 9.0), _t(0.25, 9.0)),
        stage_artifacts=(_t(0.05, 1.0), _t(0.12, 3.0)),
        init_image=_t(0.1, 5.0),
        ma_image=_t(0.3, 2.0),
    )
    target = torch.cat((_t(0.2, 0.3), _t(1.0, 0.0)), dim=1)
    return pred, target


def test_loss_matches_hand_computation() -> None:
    pred, target = _hand_example()
    loss = MARLoss(image_l2_weight=1.0, image_l1_weight=0.5, artifact_l1_weight=0.25, intensity_scale=1.0)
    parts = loss.components(pred, target)
    # masked errors of X0, X1, X2, final: -0.1, -0.05, 0.05, 0.04; MSE averages over 2 pixels
    assert parts["image_l2"].item() == pytest.approx(0.1 * (0.01 + 0.0025 + 0.0025) / 2 + 0.0016 / 2)
    assert parts["image_l1"].item() == pytest.approx(0.5 * (0.1 * (0.1 + 0.05 + 0.05) + 0.04))
    # artifact target mask*(ma - gt) = 0.1; errors -0.05, 0.02; the last stage also weighs 1
    assert parts["artifact_l1"].item() == pytest.approx(0.25 * (0.1 * (0.05 + 0.02) + 0.02))
    assert loss(pred, target).item() == pytest.approx(0.00155 + 0.03 + 0.00675)


def test_intensity_scale_reproduces_published_units() -> None:
    pred, target = _hand_example()
    parts = MARLoss().components(pred, target)  # published weights, 0-255 scale
    assert parts["image_l2"].item() == pytest.approx(0.00155 * 255**2)
    assert parts["image_l1"].item() == pytest.approx(5e-4 * 0.06 * 255)
    assert parts["artifact_l1"].item() == pytest.approx(5e-4 * 0.027 * 255)


def _published_form(pred: MAROutput, xma, gt, mask, acd: bool) -> torch.Tensor:
    """The loss written the way the published training scripts accumulate it (lists, 0-255 scale)."""
    s = 255.0
    list_x = [x * s for x in pred.stage_images] + [pred.image * s]
    list_a = [a * s for a in pred.stage_artifacts]
    x0, xma, gt = pred.init_image * s, xma * s, gt * s
    new_a, new_x = mask * (xma - gt), mask * gt
    l2 = l1x = l1a = 0.0
    for j in range(len(pred.stage_images)):
        l2 = l2 + 0.1 * F.mse_loss(list_x[j] * mask, new_x)
        l1x = l1x + 0.1 * torch.sum(torch.abs(list_x[j] * mask - new_x))
        l1a = l1a + 0.1 * torch.sum(torch.abs(mask * list_a[j] - new_a))
    l2 = l2 + F.mse_loss(list_x[-1] * mask, new_x) + 0.1 * F.mse_loss(x0 * mask, new_x)
    l1x = l1x + torch.sum(torch.abs(list_x[-1] * mask - new_x)) + 0.1 * torch.sum(torch.abs(x0 * mask - new_x))
    l1a = l1a + torch.sum(torch.abs(mask * list_a[-1] - new_a))
    if acd:
        wx = [w * s for w in pred.warmup_images]
        wa = [w * s for w in pred.warmup_artifacts]
        l2 = l2 + 0.1 * F.mse_loss(wx[0] * mask, new_x) + F.mse_loss(wx[1] * mask, new_x)
        l1x = l1x + 0.1 * torch.sum(torch.abs(wx[0] * mask - new_x)) + torch.sum(torch.abs(wx[1] * mask - new_x))
        l1a = l1a + 0.1 * torch.sum(torch.abs(mask * wa[0] - new_a)) + torch.sum(torch.abs(mask * wa[1] - new_a))
    return l2 + 5e-4 * l1x + 5e-4 * l1a


@pytest.mark.parametrize("acd", [False, True])
def test_loss_matches_published_accumulation(acd: bool) -> None:
    g = torch.Generator().manual_seed(0)
    shape = (3, 1, 16, 16)

    def r() -> torch.Tensor:
        return 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)

    mask = (torch.rand(shape, generator=g) > 0.1).double()
    gt, xma = r(), r() + 0.1
    pred = MAROutput(
        image=r(),
        stage_images=tuple(r() for _ in range(4)),
        stage_artifacts=tuple(r() for _ in range(4)),
        init_image=r(),
        ma_image=xma,
        warmup_images=(r(), r()) if acd else (),
        warmup_artifacts=(r(), r()) if acd else (),
    )
    expected = _published_form(pred, xma, gt, mask, acd)
    got = MARLoss()(pred, torch.cat((gt, mask), dim=1))
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)


def test_plain_tensor_uses_only_masked_final_l2() -> None:
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 1, 8, 8, generator=g)
    gt = torch.rand(2, 1, 8, 8, generator=g)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.2).float()
    got = MARLoss(intensity_scale=1.0)(pred, torch.cat((gt, mask), dim=1))
    expected = (((pred - gt) * mask) ** 2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert list(MARLoss().components(pred, torch.cat((gt, mask), dim=1))) == ["image_l2"]


def test_loss_gradient_flows_to_every_stage_output() -> None:
    pred, target = _hand_example()
    leaves = [t.clone().requires_grad_(True) for t in (pred.image, *pred.stage_images, *pred.stage_artifacts)]
    pred = pred._replace(image=leaves[0], stage_images=tuple(leaves[1:3]), stage_artifacts=tuple(leaves[3:5]))
    MARLoss()(pred, target).backward()
    assert all(leaf.grad[..., 0].abs().item() > 0 for leaf in leaves)
    assert all(leaf.grad[..., 1].abs().item() == 0 for leaf in leaves), "metal pixels must not be supervised"


def test_bad_arguments_are_named() -> None:
    pred, target = _hand_example()
    with pytest.raises(ValueError, match=r"target must have shape \(B, 2, H, W\)"):
        MARLoss()(pred, target[:, :1])
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        MARLoss()(pred, torch.zeros(1, 2, 1, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="MAROutput"):
        MARLoss()({"image": 1}, target)
    with pytest.raises(ValueError, match="image_l1_weight"):
        MARLoss(image_l1_weight=-1.0)
