"""Networks of the natural-image restoration recipes: a residual MONAI U-Net and its strict P4/P4M twin.

Both predict a correction added to a first estimate of the clean image: by default the degraded
image (the first ``out_channels`` input channels; extra input channels such as an inpainting mask
only inform the network), or a classical estimate the task supplies. The strict baseline is a
:class:`~eqmar.networks.StrictRestorationNet` whose width :func:`~eqmar.networks.match_fields`
chooses so that its parameter count matches the U-Net's. Note that at equal parameters it costs far
more compute: it works at full resolution with ``|G|`` orientation channels per field, while the
U-Net keeps most of its parameters at low resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ResidualRestorationNet", "restoration_unet", "matched_strict_network"]


class ResidualRestorationNet(nn.Module):
    """``output = base(x) + net(x)``: learn the correction of a first estimate of the clean image.

    The first estimate ``base`` defaults to the degraded image itself (the first ``out_channels``
    input channels); a task may pass a classical estimate instead (e.g. a masked average for
    inpainting), as the MAR baseline corrects the LI image. With a rotation-equivariant ``base``
    (channel slicing is) the wrapper keeps an equivariant ``net`` equivariant.

    Args:
        net: maps the input to ``out_channels`` channels.
        out_channels: channels of the restored image.
        base: ``x -> (B, out_channels, H, W)`` first estimate, no trainable parameters expected
            (default: ``x[:, :out_channels]``).
    """

    def __init__(self, net: nn.Module, out_channels: int, base: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.out_channels = out_channels
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x[:, : self.out_channels] if self.base is None else self.base(x)
        return first + self.net(x)


def restoration_unet(
    in_channels: int,
    out_channels: int,
    features: Sequence[int] = (16, 16, 32, 32, 64, 16),
    residual: bool = True,
    zero_init: bool = True,
    base: nn.Module | None = None,
) -> nn.Module:
    """MONAI ``BasicUNet`` (2-D) for image restoration, optionally residual.

    Widths default to multiples of 4 so every inner conv can carry the EQ-Reg term
    (select them with ``convs_divisible_by(group)``; the last 1×1 conv to ``out_channels`` is left out).
    Input sides must be divisible by 16.

    Args:
        in_channels: input channels (image plus any extra channels).
        out_channels: restored-image channels.
        features: the six ``BasicUNet`` widths.
        residual: wrap in :class:`ResidualRestorationNet`.
        zero_init: zero the final conv so a residual network starts from its first estimate.
        base: the first estimate of :class:`ResidualRestorationNet` (default: the degraded image).
    """
    from monai.networks.nets import BasicUNet

    features = tuple(features)
    if len(features) != 6:
        raise ValueError(f"features must have 6 entries (BasicUNet widths), got {features}.")
    unet = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=features)
    if zero_init:
        nn.init.zeros_(unet.final_conv.weight)
        nn.init.zeros_(unet.final_conv.bias)
    return ResidualRestorationNet(unet, out_channels, base) if residual else unet


def _he_init(network: nn.Module) -> None:
    """He (Kaiming normal, ReLU) initialisation of every group convolution's filters.

    The group convs default to PyTorch's conv initialisation, which shrinks activations about
    2.5-fold per ReLU layer; without normalisation layers a 5-layer strict network then started with
    features below 1 % of its input's scale and barely trained in 300 iterations of the inpainting
    demo (one seed of three stayed at its starting point). The U-Net it is compared with keeps its
    scale through instance normalisation.
    """
    from eqmar.equivariance.gconv import GroupConv2d, GroupLiftingConv2d

    for module in network.modules():
        if isinstance(module, (GroupLiftingConv2d, GroupConv2d)):
            # view as (out, fan_in) so the fan-in counts every input field, orientation and tap
            nn.init.kaiming_normal_(module.weight.view(module.weight.shape[0], -1), nonlinearity="relu")


def matched_strict_network(
    reference: nn.Module | int,
    in_channels: int,
    out_channels: int,
    depth: int = 5,
    group: str = "C4",
    residual: bool = True,
    zero_init: bool = True,
    base: nn.Module | None = None,
    he_init: bool = True,
) -> nn.Module:
    """A :class:`~eqmar.networks.StrictRestorationNet` with about as many parameters as ``reference``.

    Args:
        reference: the network (or parameter count) to match.
        in_channels: input channels.
        out_channels: output channels.
        depth: group-conv layers (3×3) including the lifting layer.
        group: "C4" (P4), "D4" (P4M) or "C2".
        residual: add the input's first ``out_channels`` channels (:class:`ResidualRestorationNet`).
        zero_init: zero the final 1×1 conv, as :func:`restoration_unet` does, so both start alike.
        base: first estimate for the residual (must be rotation-equivariant to keep the network so).
        he_init: re-initialise the group convolutions with He initialisation (see :func:`_he_init`);
            False keeps :class:`~eqmar.networks.StrictRestorationNet`'s default.
    """
    from eqmar.networks import StrictRestorationNet, count_parameters, match_fields

    def build(fields: int) -> nn.Module:
        return StrictRestorationNet(in_channels, out_channels, fields=fields, depth=depth, group=group, residual=False)

    target = reference if isinstance(reference, int) else count_parameters(reference)
    net = build(match_fields(build, target))
    if he_init:
        _he_init(net)
    if zero_init:
        nn.init.zeros_(net.head.weight)
        nn.init.zeros_(net.head.bias)
    return ResidualRestorationNet(net, out_channels, base) if residual else net
