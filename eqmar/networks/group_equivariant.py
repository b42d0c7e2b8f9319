"""Strictly rotation-equivariant networks (P4 = C4, P4M = D4, also C2): the hard-constraint baselines.

Built from :mod:`eqmar.equivariance.gconv` (rot90/flip-based group convolutions): a lifting layer,
group convolutions with pointwise ReLU (which commutes with the orientation shift), then an
orientation pool. The restoration network is equivariant (``f(g·x) = g·f(x)`` exactly for every
group element), the classifier invariant. Widths are given in fields; :func:`match_fields` picks the
number of fields whose parameter count is closest to an ordinary CNN's, for matched comparisons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from eqmar.equivariance.gconv import GroupConv2d, GroupLiftingConv2d, GroupPool

__all__ = ["StrictRestorationNet", "StrictClassifier", "count_parameters", "match_fields"]


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def match_fields(build: Callable[[int], nn.Module], target: int, candidates: Iterable[int] = range(1, 129)) -> int:
    """The field count whose network, ``build(fields)``, has the parameter count closest to ``target``.

    Args:
        build: ``fields -> network``.
        target: parameter count to match (e.g. that of the ordinary CNN it is compared with).
        candidates: field counts to try (ascending).
    """
    best, best_gap = None, None
    for fields in candidates:
        gap = abs(count_parameters(build(fields)) - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = fields, gap
        elif gap > best_gap:  # parameter count grows monotonically with width: past the optimum
            break
    if best is None:
        raise ValueError("match_fields: no candidate field counts given.")
    return best


class StrictRestorationNet(nn.Module):
    """An image-to-image network equivariant to a rotation group by construction.

    ``lift → (depth − 2) × [group conv → ReLU] → group conv → orientation mean → 1×1 conv``; with
    ``residual=True`` (same in/out channels) it predicts a correction added to the input.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        fields: width in fields (each ``|G|`` channels wide).
        depth: number of 3×3 group-convolution layers including the lifting layer (≥ 2).
        group: "C4" (P4), "D4" (P4M) or "C2".
        residual: add the input to the output (needs ``in_channels == out_channels``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        fields: int = 8,
        depth: int = 5,
        group: str = "C4",
        residual: bool = True,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"StrictRestorationNet needs depth >= 2, got {depth}.")
        if residual and in_channels != out_channels:
            raise ValueError(f"residual=True needs in_channels == out_channels, got {in_channels} and {out_channels}.")
        layers: list[nn.Module] = [GroupLiftingConv2d(in_channels, fields, 3, group), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [GroupConv2d(fields, fields, 3, group), nn.ReLU(inplace=True)]
        layers += [GroupConv2d(fields, fields, 3, group), GroupPool(group, mode="mean")]
        self.features = nn.Sequential(*layers)
        # A 1x1 conv on orientation-pooled (invariant) fields is itself rotation-equivariant.
        self.head = nn.Conv2d(fields, out_channels, kernel_size=1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return x + out if self.residual else out


class StrictClassifier(nn.Module):
    """An image classifier invariant to a rotation group by construction.

    Stages of two 3×3 group convolutions (+ ReLU) separated by 2×2 max pooling, then global average
    pooling over space, max over orientations and a linear layer. Input sides must stay even at every
    pooling step so that pooling windows map onto each other under rot90.

    Args:
        in_channels: input channels.
        num_classes: classes.
        fields: fields per stage, e.g. ``(8, 16, 32)``.
        group: "C4" (P4), "D4" (P4M) or "C2".
    """

    def __init__(
        self, in_channels: int, num_classes: int, fields: Sequence[int] = (8, 16, 32), group: str = "C4"
    ) -> None:
        super().__init__()
        if not fields:
            raise ValueError("StrictClassifier needs at least one stage.")
        layers: list[nn.Module] = []
        previous: int | None = None
        for stage, width in enumerate(fields):
            if stage:
                layers.append(nn.MaxPool2d(2))
            first = (
                GroupLiftingConv2d(in_channels, width, 3, group)
                if previous is None
                else GroupConv2d(previous, width, 3, group)
            )
            layers += [first, nn.ReLU(inplace=True), GroupConv2d(width, width, 3, group), nn.ReLU(inplace=True)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = GroupPool(group, mode="max")
        self.classifier = nn.Linear(fields[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(self.pool(pooled).flatten(1))
