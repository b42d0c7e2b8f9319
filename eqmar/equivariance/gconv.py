"""Strictly equivariant group convolutions for the exact groups (C2, C4, D4).

These are the reference against which EQ-Reg is checked (their residual is zero for every group
element) and the building blocks of the strict-equivariant baselines (P4, P4M networks). Channels
follow the EQ-Reg layout: ``C = fields · |G|`` with the orientation index fastest.

For a lifting layer, output orientation ``h`` uses the transformed filter ``h · w``; for a group
convolution, output orientation ``h`` uses ``h · w[:, :, h⁻¹ s]`` over input orientations ``s``.
Both satisfy ``F(g · x) = shift_g⁻¹(g · F(x))``, i.e. ``g · F(x) = shift_g(F(g · x))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from eqmar.equivariance.groups import RotationGroup, get_group

__all__ = ["GroupLiftingConv2d", "GroupConv2d", "GroupPool"]


def _exact_group(group: str | RotationGroup) -> RotationGroup:
    grp = get_group(group)
    if not grp.exact:
        raise ValueError(
            f"Strict group convolutions need a group acting by pixel permutations; {grp.name} interpolates."
        )
    return grp


class _GroupConvBase(nn.Module):
    """Shared parameters and the final convolution call of lifting and group convolutions."""

    def __init__(
        self, weight_shape: tuple[int, ...], out_fields: int, kernel_size: int, group: str | RotationGroup, bias: bool
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for exact rotations about the centre pixel, got {kernel_size}.")
        self.group = _exact_group(group)
        self.kernel_size = kernel_size
        self.out_fields = out_fields
        self.out_channels = out_fields * self.group.order
        self.weight = nn.Parameter(torch.empty(weight_shape))
        fan_in = math.prod(weight_shape[1:])
        nn.init.kaiming_uniform_(self.weight.view(weight_shape[0], fan_in), a=math.sqrt(5))
        # One bias per field, shared across orientations (a per-orientation bias breaks equivariance).
        self.bias = nn.Parameter(torch.zeros(out_fields)) if bias else None

    def expanded_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.repeat_interleave(self.group.order) if self.bias is not None else None
        return F.conv2d(x, self.expanded_weight(), bias, padding=self.kernel_size // 2)


class GroupLiftingConv2d(_GroupConvBase):
    """Lift an ordinary image to orientation fields: output channel ``(f, h)`` uses the filter ``h · w_f``.

    Args:
        in_channels: input channels (no orientation structure).
        out_fields: output fields; the layer outputs ``out_fields · |G|`` channels.
        kernel_size: odd kernel size.
        group: "C2", "C4" or "D4".
        bias: one bias per field.
    """

    def __init__(
        self, in_channels: int, out_fields: int, kernel_size: int = 3, group: str | RotationGroup = "C4",
        bias: bool = True,
    ) -> None:
        super().__init__((out_fields, in_channels, kernel_size, kernel_size), out_fields, kernel_size, group, bias)
        self.in_channels = in_channels

    def expanded_weight(self) -> torch.Tensor:
        stacked = torch.stack([self.group.act(self.weight, h) for h in self.group.elements()], dim=1)
        return stacked.reshape(self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)


class GroupConv2d(_GroupConvBase):
    """Convolution between orientation fields (regular representation).

    Args:
        in_fields: input fields (input has ``in_fields · |G|`` channels).
        out_fields: output fields.
        kernel_size: odd kernel size.
        group: "C2", "C4" or "D4".
        bias: one bias per field.
    """

    def __init__(
        self, in_fields: int, out_fields: int, kernel_size: int = 3, group: str | RotationGroup = "C4",
        bias: bool = True,
    ) -> None:
        grp = _exact_group(group)
        shape = (out_fields, in_fields, grp.order, kernel_size, kernel_size)
        super().__init__(shape, out_fields, kernel_size, grp, bias)
        self.in_fields = in_fields
        self.in_channels = in_fields * grp.order
        index = [[grp.compose(grp.inverse(h), s) for s in grp.elements()] for h in grp.elements()]
        self.register_buffer("_orientation_index", torch.tensor(index), persistent=False)

    def expanded_weight(self) -> torch.Tensor:
        per_output = [
            self.group.act(self.weight.index_select(2, self._orientation_index[h]), h) for h in self.group.elements()
        ]
        stacked = torch.stack(per_output, dim=1)
        return stacked.reshape(self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)


class GroupPool(nn.Module):
    """Pool each field over its orientations (max or mean), giving an invariant ``(B, fields, H, W)`` map."""

    def __init__(self, group: str | RotationGroup = "C4", mode: str = "max") -> None:
        super().__init__()
        if mode not in ("max", "mean"):
            raise ValueError(f"mode must be 'max' or 'mean', got {mode!r}.")
        self.group = get_group(group)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` of shape ``(B, fields · order, ...)`` over orientations.

        Raises:
            ValueError: ``x`` has fewer than 2 dimensions, or a channel count not divisible by the group order.
        """
        if x.ndim < 2:
            raise ValueError(f"GroupPool needs a (B, C, ...) tensor, got shape {tuple(x.shape)}.")
        b, c, *spatial = x.shape
        if c % self.group.order:
            # without this, reshape fails with a message about element counts that names neither
            raise ValueError(
                f"GroupPool: {c} channels are not divisible by the order {self.group.order} of {self.group.name}; "
                f"the input must hold whole fields of {self.group.order} orientation channels each."
            )
        fields = x.reshape(b, c // self.group.order, self.group.order, *spatial)
        return fields.amax(dim=2) if self.mode == "max" else fields.mean(dim=2)
