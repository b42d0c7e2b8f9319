"""Discrete rotation groups acting on image tensors and on orientation channels.

Every group here acts on a tensor ``(..., H, W)`` spatially, and on a feature tensor ``(B, C, ...)`` by
permuting channels within consecutive blocks of ``order`` channels (orientation index fastest, i.e.
the channel layout is ``(C / order, order)``). The permutation for element ``g`` is the published
EQ-Reg convention generalised to any group through its Cayley table::

    shift_g(z)[j * order + k] = z[j * order + (g ∘ k)]

For the cyclic groups this is ``new[k] = old[(k + n) mod |G|]``. It is the permutation under which a
strictly equivariant lifting convolution (channel ``h`` uses the filter ``h · w``) satisfies
``g · F(x) == shift_g(F(g · x))`` exactly, so the EQ-Reg residual of such a layer is zero.

Element encodings:

- ``C2``: ``n`` in {0, 1}, rotation by ``n · 180°``.
- ``C4``: ``n`` in {0, 1, 2, 3}, rotation by ``n · 90°`` (``torch.rot90(x, n, dims=(-2, -1))``).
- ``D4``: ``n = 4 m + r`` in {0..7}: first mirror the width axis ``m`` times, then rotate ``r · 90°``.
- ``C8``: ``n`` in {0..7}, rotation by ``n · 45°`` in the same sense as ``torch.rot90``; odd ``n`` use
  bilinear interpolation, so feature comparisons are restricted to the inscribed disc
  (:meth:`RotationGroup.valid_region`) where no corner is lost.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from functools import cache

import torch
import torch.nn.functional as F

__all__ = ["RotationGroup", "C2", "C4", "C8", "D4", "get_group", "GROUPS"]


class RotationGroup(ABC):
    """A finite group of planar rotations (and reflections) acting on images and orientation channels.

    Subclasses define the spatial action and the group law; the channel permutation, inverses and
    validation are derived from those.
    """

    name: str = ""
    order: int = 0
    #: True when the spatial action only permutes pixels (no interpolation).
    exact: bool = True
    #: True when the action needs square maps (quarter turns, mirrors on the diagonal, 45° turns).
    needs_square: bool = True

    def acts_on(self, height: int, width: int) -> bool:
        """Whether the spatial action maps an ``height x width`` map to one of the same shape."""
        return height == width or not self.needs_square

    def __len__(self) -> int:
        return self.order

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def elements(self) -> range:
        """All element indices ``0 .. order - 1``; ``0`` is the identity."""
        return range(self.order)

    def check_element(self, n: int) -> int:
        """Return ``n`` as an ``int`` after checking that it indexes an element of the group."""
        n = int(n)
        if not 0 <= n < self.order:
            raise ValueError(f"{self.name}: element index must be in [0, {self.order - 1}], got {n}.")
        return n

    @abstractmethod
    def act(self, x: torch.Tensor, n: int, mode: str = "bilinear") -> torch.Tensor:
        """Apply element ``n`` spatially to the last two dimensions of ``x``.

        Args:
            x: tensor whose last two dimensions are (H, W).
            n: element index.
            mode: interpolation for groups that interpolate ("bilinear" or "nearest"); ignored by
                exact groups.
        """

    @abstractmethod
    def compose(self, a: int, b: int) -> int:
        """Index of the product ``a ∘ b`` (apply ``b`` first, then ``a``)."""

    def inverse(self, n: int) -> int:
        """Index of the inverse of element ``n``."""
        n = self.check_element(n)
        return next(m for m in self.elements() if self.compose(n, m) == 0)

    def permutation(self, n: int) -> tuple[int, ...]:
        """Orientation-channel permutation of element ``n``: ``new[k] = old[perm[k]]``."""
        return _permutation(type(self), self.check_element(n))

    def shift(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """Permute orientation channels of ``z`` (B, C, ...) within consecutive blocks of ``order``.

        Raises:
            ValueError: when C is not divisible by the group order.
        """
        n = self.check_element(n)
        if z.ndim < 2:
            raise ValueError(f"{self.name}.shift expects a (B, C, ...) tensor, got shape {tuple(z.shape)}.")
        channels = z.shape[1]
        if channels % self.order:
            raise ValueError(
                f"{self.name}.shift: {channels} channels are not divisible by the group order {self.order}."
            )
        if n == 0:
            return z
        index = torch.tensor(self.permutation(n), device=z.device)
        blocks = z.reshape(z.shape[0], channels // self.order, self.order, *z.shape[2:])
        return blocks.index_select(2, index).reshape(z.shape)

    def valid_region(self, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor | None:
        """Mask of pixels where transformed feature maps may be compared, or None for all pixels."""
        return None


class _CyclicRot90(RotationGroup):
    """Cyclic groups generated by a multiple of 90°: pixel permutations, no interpolation."""

    quarter_turns: int = 1

    def act(self, x: torch.Tensor, n: int, mode: str = "bilinear") -> torch.Tensor:
        n = self.check_element(n)
        return torch.rot90(x, n * self.quarter_turns, dims=(-2, -1)) if n else x

    def compose(self, a: int, b: int) -> int:
        return (self.check_element(a) + self.check_element(b)) % self.order


class C4(_CyclicRot90):
    """Rotations by multiples of 90° (the group of the EQ-Reg paper)."""

    name = "C4"
    order = 4
    quarter_turns = 1


class C2(_CyclicRot90):
    """Rotations by 0° and 180°."""

    name = "C2"
    order = 2
    quarter_turns = 2
    needs_square = False  # a half turn keeps any shape


class D4(RotationGroup):
    """The dihedral group of the square: four rotations, each optionally preceded by a mirror.

    Element ``n = 4 m + r`` maps ``x`` to ``rot90(flip_w^m(x), r)``.
    """

    name = "D4"
    order = 8

    @staticmethod
    def _split(n: int) -> tuple[int, int]:
        return n % 4, n // 4

    def act(self, x: torch.Tensor, n: int, mode: str = "bilinear") -> torch.Tensor:
        r, m = self._split(self.check_element(n))
        if m:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, r, dims=(-2, -1)) if r else x

    def compose(self, a: int, b: int) -> int:
        # R^r1 F^m1 R^r2 F^m2 = R^(r1 + (-1)^m1 r2) F^(m1 + m2), since F R F = R^-1.
        r1, m1 = self._split(self.check_element(a))
        r2, m2 = self._split(self.check_element(b))
        r = (r1 + (-r2 if m1 else r2)) % 4
        return 4 * ((m1 + m2) % 2) + r


class C8(RotationGroup):
    """Rotations by multiples of 45°; odd elements interpolate.

    Even elements are exact quarter turns. Odd elements rotate about the image centre with
    ``grid_sample`` (zero padding), so only the inscribed disc carries information in every element:
    :meth:`valid_region` returns that disc, and the EQ-Reg residual is restricted to it.
    """

    name = "C8"
    order = 8
    exact = False

    def act(self, x: torch.Tensor, n: int, mode: str = "bilinear") -> torch.Tensor:
        n = self.check_element(n)
        if n % 2 == 0:
            return torch.rot90(x, n // 2, dims=(-2, -1)) if n else x
        return _rotate_by_angle(x, n * math.pi / 4, mode)

    def compose(self, a: int, b: int) -> int:
        return (self.check_element(a) + self.check_element(b)) % self.order

    def valid_region(self, height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
        return inscribed_disc(height, width, device)


def inscribed_disc(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Float mask (H, W) of pixel centres inside the disc inscribed in the image, shrunk by one pixel.

    The one-pixel margin keeps out pixels whose bilinear stencil reaches the zero padding after a 45°
    rotation.
    """
    ys = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
    radius = min(height, width) / 2 - 1
    return ((ys[:, None] ** 2 + xs[None, :] ** 2) <= radius**2).float()


def _rotate_by_angle(x: torch.Tensor, angle: float, mode: str) -> torch.Tensor:
    """Rotate the last two dims of ``x`` by ``angle`` radians in the sense of ``torch.rot90``."""
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1])
    cos, sin = math.cos(angle), math.sin(angle)
    # Output pixel (u, v) (normalised column, row) samples the input at R(angle) (u, v); with angle
    # 90° this reproduces torch.rot90(x, 1, dims=(-2, -1)) exactly.
    # integer and bool maps (masks) are sampled as float and converted back
    sample_input = flat if flat.is_floating_point() else flat.float()
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=sample_input.dtype, device=flat.device)
    grid = F.affine_grid(theta.expand(flat.shape[0], 2, 3), list(flat.shape), align_corners=False)
    out = F.grid_sample(sample_input, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.to(x.dtype).reshape(shape)


@cache
def _permutation(group_cls: type[RotationGroup], n: int) -> tuple[int, ...]:
    group = group_cls()
    return tuple(group.compose(n, k) for k in group.elements())


GROUPS: dict[str, type[RotationGroup]] = {"C2": C2, "C4": C4, "C8": C8, "D4": D4}


def get_group(group: str | RotationGroup) -> RotationGroup:
    """Return a group instance from its name ("C2", "C4", "C8", "D4") or pass an instance through."""
    if isinstance(group, RotationGroup):
        return group
    key = str(group).upper()
    if key not in GROUPS:
        raise ValueError(f"Unknown group {group!r}; choose one of {sorted(GROUPS)}.")
    return GROUPS[key]()
