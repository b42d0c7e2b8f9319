"""Strict P4/P4M baselines: exact equivariance/invariance and parameter matching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eqmar.equivariance.groups import get_group
from eqmar.networks import StrictClassifier, StrictRestorationNet, count_parameters, match_fields


@pytest.mark.parametrize("group", ["C2", "C4", "D4"])
def test_restoration_net_is_exactly_equivariant(group: str) -> None:
    torch.manual_seed(0)
    grp = get_group(group)
    net = StrictRestorationNet(3, 3, fields=3, depth=4, group=group).double()
    x = torch.randn(2, 3, 20, 20, dtype=torch.double)
    for g in grp.elements():
        torch.testing.assert_close(net(grp.act(x, g)), grp.act(net(x), g))


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_classifier_is_exactly_invariant(group: str) -> None:
    torch.manual_seed(0)
    grp = get_group(group)
    net = StrictClassifier(1, 10, fields=(3, 6), group=group).double()
    x = torch.randn(3, 1, 16, 16, dtype=torch.double)
    for g in grp.elements():
        torch.testing.assert_close(net(grp.act(x, g)), net(x))


def test_an_ordinary_cnn_is_not_invariant() -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    x = torch.randn(2, 1, 16, 16)
    assert (cnn(torch.rot90(x, 1, (2, 3))) - cnn(x)).abs().max() > 1e-4


def test_match_fields_picks_the_closest_parameter_count() -> None:
    target = count_parameters(nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 32, 3), nn.Conv2d(32, 3, 3)))
    fields = match_fields(lambda f: StrictRestorationNet(3, 3, fields=f, depth=3), target)
    gaps = {f: abs(count_parameters(StrictRestorationNet(3, 3, fields=f, depth=3)) - target) for f in range(1, 30)}
    assert gaps[fields] == min(gaps.values())


def test_bad_configurations_are_rejected() -> None:
    with pytest.raises(ValueError, match="depth >= 2"):
        StrictRestorationNet(1, 1, depth=1)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        StrictRestorationNet(3, 1)
    with pytest.raises(ValueError, match="interpolates"):
        StrictRestorationNet(1, 1, group="C8")


def test_group_pool_names_channels_not_divisible_by_the_group_order() -> None:
    from eqmar.equivariance.gconv import GroupPool

    assert GroupPool("C4")(torch.randn(2, 8, 5, 5)).shape == (2, 2, 5, 5)
    with pytest.raises(ValueError, match=r"6 channels are not divisible by the order 4 of C4"):
        GroupPool("C4")(torch.randn(2, 6, 5, 5))
    with pytest.raises(ValueError, match=r"got shape \(6,\)"):
        GroupPool("C4")(torch.randn(6))
