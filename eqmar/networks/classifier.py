"""The ordinary CNN that EQ-Reg regularises, and its parameter-matched strict P4/P4M counterparts.

:class:`RotationClassifierCNN` has the topology of :class:`~eqmar.networks.StrictClassifier` (stages
of two 3×3 convolutions + ReLU, 2×2 max pooling between stages, global average pooling) built from
plain ``nn.Conv2d`` layers, so the two differ only in the hard constraint. Both normalise after every
convolution: the CNN with ordinary per-channel ``BatchNorm2d`` (EQ-Reg compares the raw conv outputs,
before it, as published), the strict network with :class:`FieldBatchNorm` (statistics and affine
parameters shared by the orientation channels of a field, so it stays exactly invariant). Without
normalisation neither trained reliably in the short default budget (accuracy stuck at chance for
several epochs from PyTorch's default initialisation).

Why the head pools orientations: EQ-Reg asks every conv output to satisfy
``g · F(x) = shift_g(F(g · x))``. Where the layers in between keep that relation (ReLU and 2×2 max
pooling do; per-channel BatchNorm does once its statistics and parameters agree within a block, which
the regulariser on the next conv encourages), the globally average-pooled feature vector of ``g · x``
is the orientation-shifted vector of ``x``; taking the maximum over each block of ``|G|`` channels (the
orientation channels of one field, :class:`~eqmar.equivariance.GroupPool`) makes it, and hence the
logits, invariant. The head is parameter-free and identical in every arm, so it does not favour one:
without the regulariser the blocks are just arbitrary groups of channels (a maxout). With
``head="linear"`` the logits are a linear map of all pooled channels and invariance has to be learnt
from the rotated half of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from eqmar.equivariance import GroupConv2d, GroupLiftingConv2d, GroupPool, get_group
from eqmar.networks.group_equivariant import StrictClassifier, count_parameters, match_fields

__all__ = ["HEADS", "FieldBatchNorm", "RotationClassifierCNN", "with_field_norm", "strict_classifier", "strict_fields"]

HEADS = ("orientation-pool", "linear")


class RotationClassifierCNN(nn.Module):
    """An ordinary CNN classifier whose conv widths fit EQ-Reg's orientation blocks.

    Args:
        in_channels: input channels.
        num_classes: classes.
        channels: conv width of each stage, e.g. ``(8, 16, 32)``; divisible by the group order.
        group: group whose order sets the orientation blocks of the head (and of EQ-Reg).
        head: "orientation-pool" (max over each block of ``|G|`` channels, then linear) or "linear".
        norm: ``BatchNorm2d`` after every convolution.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (8, 16, 32),
        group: str = "C4",
        head: str = "orientation-pool",
        norm: bool = True,
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("RotationClassifierCNN needs at least one stage.")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
        order = get_group(group).order
        if any(c % order for c in channels):
            raise ValueError(f"channels {tuple(channels)} must be divisible by the order {order} of {group}.")
        layers: list[nn.Module] = []
        previous = in_channels
        for stage, width in enumerate(channels):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for conv_in in (previous, width):
                layers.append(nn.Conv2d(conv_in, width, 3, padding=1))
                if norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
            previous = width
        self.features = nn.Sequential(*layers)
        self.pool = GroupPool(group, mode="max") if head == "orientation-pool" else nn.Identity()
        self.classifier = nn.Linear(previous // order if head == "orientation-pool" else previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3), keepdim=True)
        return self.classifier(self.pool(pooled).flatten(1))


class FieldBatchNorm(nn.Module):
    """Batch normalisation of orientation fields: one mean, variance, scale and shift per field.

    Statistics are pooled over the batch, space and the ``|G|`` orientation channels of each field
    (channel layout ``(fields, |G|)``, orientation fastest), so the layer commutes with rotating the
    input and shifting orientations, in training and in eval mode.

    Args:
        channels: input channels (``fields · |G|``).
        group: the group whose order sets the field size.
    """

    def __init__(self, channels: int, group: str = "C4") -> None:
        super().__init__()
        self.order = get_group(group).order
        if channels % self.order:
            raise ValueError(f"FieldBatchNorm: {channels} channels are not divisible by the group order {self.order}.")
        self.norm = nn.BatchNorm3d(channels // self.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return self.norm(x.reshape(b, c // self.order, self.order, h, w)).reshape(b, c, h, w)


def with_field_norm(network: StrictClassifier, group: str) -> StrictClassifier:
    """Insert a :class:`FieldBatchNorm` after every group convolution of ``network.features`` (in place)."""
    layers: list[nn.Module] = []
    for layer in network.features:
        layers.append(layer)
        if isinstance(layer, (GroupLiftingConv2d, GroupConv2d)):
            layers.append(FieldBatchNorm(layer.out_channels, group))
    network.features = nn.Sequential(*layers)
    return network


def _build_strict(
    fields: Sequence[int], group: str, in_channels: int, num_classes: int, norm: bool
) -> StrictClassifier:
    network = StrictClassifier(in_channels, num_classes, tuple(fields), group)
    return with_field_norm(network, group) if norm else network


def _stage_fields(fields: int, channels: Sequence[int]) -> tuple[int, ...]:
    """Strict stage widths in fields, in the CNN's stage proportions (``fields`` for the first stage)."""
    return tuple(max(1, round(fields * c / channels[0])) for c in channels)


def strict_fields(
    target_params: int,
    channels: Sequence[int],
    group: str,
    in_channels: int = 1,
    num_classes: int = 10,
    norm: bool = True,
) -> tuple[int, ...]:
    """Stage widths (fields) of the strict classifier whose parameter count is closest to ``target_params``.

    The stages keep the proportions of the CNN's ``channels``; see :func:`strict_classifier`.
    """
    best = match_fields(
        lambda f: _build_strict(_stage_fields(f, channels), group, in_channels, num_classes, norm), target_params
    )
    return _stage_fields(best, channels)


def strict_classifier(
    reference: nn.Module,
    channels: Sequence[int],
    group: str,
    in_channels: int = 1,
    num_classes: int = 10,
    norm: bool = True,
) -> StrictClassifier:
    """A :class:`~eqmar.networks.StrictClassifier` (P4 = "C4", P4M = "D4") with as many parameters as ``reference``.

    Args:
        reference: the ordinary CNN it is compared with.
        channels: the CNN's stage widths (the strict stages keep their proportions).
        group: "C4" or "D4" (or "C2").
        in_channels: input channels.
        num_classes: classes.
        norm: a :class:`FieldBatchNorm` after every group convolution (see :func:`with_field_norm`).
    """
    fields = strict_fields(count_parameters(reference), channels, group, in_channels, num_classes, norm)
    return _build_strict(fields, group, in_channels, num_classes, norm)
