"""Group actions, channel shifts and the analytic zero-residual identity of strict group convolutions."""

from __future__ import annotations

import pytest
import torch

from eqmar.equivariance import (
    GroupConv2d,
    GroupLiftingConv2d,
    equivariance_residual,
    get_group,
)
from eqmar.equivariance.groups import inscribed_disc


@pytest.mark.parametrize("name", ["C2", "C4", "D4", "C8"])
def test_group_law_matches_spatial_action(name: str) -> None:
    group = get_group(name)
    x = torch.arange(81, dtype=torch.float32).reshape(1, 1, 9, 9)
    for a in group.elements():
        assert group.compose(a, group.inverse(a)) == 0
        for b in group.elements():
            if group.exact or (a % 2 == 0 and b % 2 == 0):
                assert torch.equal(group.act(group.act(x, b), a), group.act(x, group.compose(a, b)))


def test_c4_shift_is_published_convention() -> None:
    """new[k] = old[(k + n) mod 4] within consecutive groups of four channels."""
    group = get_group("C4")
    z = torch.arange(8, dtype=torch.float32).reshape(1, 8, 1, 1)
    for n in range(4):
        shifted = group.shift(z, n).flatten().tolist()
        expected = [float(4 * (k // 4) + (k % 4 + n) % 4) for k in range(8)]
        assert shifted == expected
    spatial = torch.randn(1, 8, 5, 5)  # not constant in space, so the direction of rotation matters
    assert torch.equal(group.act(spatial, 1), torch.rot90(spatial, 1, dims=(2, 3)))
    assert not torch.equal(group.act(spatial, 1), torch.rot90(spatial, -1, dims=(2, 3)))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_c8_rotates_integer_and_bool_maps(dtype: torch.dtype) -> None:
    mask = torch.zeros(1, 1, 9, 9, dtype=dtype)
    mask[..., 4, 2:7] = 1  # a horizontal bar through the centre
    turned = get_group("C8").act(mask, 2, mode="nearest")  # 90 degrees: exact
    assert turned.dtype == dtype and torch.equal(turned, torch.rot90(mask, 1, dims=(-2, -1)))
    diagonal = get_group("C8").act(mask, 1, mode="nearest")
    # nearest sampling of a 45-degree turn keeps the centre and stays binary (the diagonal samples
    # fewer pixel centres than the bar has)
    assert diagonal.dtype == dtype and bool(diagonal[0, 0, 4, 4]) and set(diagonal.int().unique().tolist()) == {0, 1}


def test_c2_is_rot180_with_pairs() -> None:
    group = get_group("C2")
    x = torch.randn(2, 4, 5, 7)  # C2 does not need square maps
    assert torch.equal(group.act(x, 1), torch.rot90(x, 2, dims=(2, 3)))
    assert group.shift(x, 1)[:, 0].equal(x[:, 1]) and group.shift(x, 1)[:, 3].equal(x[:, 2])


def test_c8_even_elements_are_exact_and_odd_ones_rotate_45_degrees() -> None:
    group = get_group("C8")
    x = torch.randn(1, 2, 16, 16)
    assert torch.equal(group.act(x, 2), torch.rot90(x, 1, dims=(2, 3)))
    # A radially symmetric bump is invariant under 45° up to interpolation error.
    ys, xs = torch.meshgrid(torch.arange(33.0) - 16, torch.arange(33.0) - 16, indexing="ij")
    bump = torch.exp(-(xs**2 + ys**2) / 40.0)[None, None]
    assert (group.act(bump, 1) - bump).abs().max() < 0.02
    # Two 45° steps agree with a quarter turn inside the inscribed disc.
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 40), torch.linspace(-1, 1, 40), indexing="ij")
    smooth = (torch.sin(3 * xs + 1) * torch.cos(2 * ys) + xs * ys)[None, None]
    mask = inscribed_disc(40, 40)
    err = ((group.act(group.act(smooth, 1), 1) - group.act(smooth, 2)) * mask).norm()
    assert err < 0.03 * (smooth * mask).norm()


def test_shift_rejects_indivisible_channels() -> None:
    with pytest.raises(ValueError, match="not divisible by the group order 4"):
        get_group("C4").shift(torch.zeros(1, 6, 2, 2), 1)


def test_unknown_group_and_element() -> None:
    with pytest.raises(ValueError, match="Unknown group"):
        get_group("C5")
    with pytest.raises(ValueError, match="element index"):
        get_group("C4").act(torch.zeros(1, 1, 2, 2), 4)


@pytest.mark.parametrize("name", ["C2", "C4", "D4"])
def test_strict_group_cnn_has_zero_residual_for_every_element(name: str, device: torch.device) -> None:
    """A lifting conv followed by a group conv is exactly equivariant: residual 0 to float tolerance."""
    torch.manual_seed(0)
    lift = GroupLiftingConv2d(2, 3, 5, group=name).to(device)
    gconv = GroupConv2d(3, 2, 3, group=name).to(device)
    group = get_group(name)
    x = torch.randn(2, 2, 24, 24, device=device)
    with torch.no_grad():
        for n in group.elements():
            gx = group.act(x, n)
            for layer in (lift, lambda t: gconv(torch.relu(lift(t)))):
                z0, z1 = layer(x), layer(gx)
                residual = equivariance_residual(z0, z1, n, group=name)
                assert residual <= 1e-5 * z0.norm(), (name, n, float(residual))


def test_p4_lifting_channel_k_uses_rot90_of_the_filter() -> None:
    lift = GroupLiftingConv2d(1, 1, 3, group="C4", bias=False)
    weight = lift.expanded_weight()
    for k in range(4):
        assert torch.equal(weight[k, 0], torch.rot90(lift.weight[0, 0], k, dims=(0, 1)))


def test_random_conv_has_clearly_positive_residual() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 8, 5, padding=2)
    x = torch.randn(2, 2, 24, 24)
    with torch.no_grad():
        z0 = conv(x)
        for n in (1, 2, 3):
            residual = equivariance_residual(z0, conv(torch.rot90(x, n, dims=(2, 3))), n)
            assert residual > 0.3 * z0.norm()
