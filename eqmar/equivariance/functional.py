"""The EQ-Reg residual as a function of two feature tensors.

For a layer with features ``z0 = F(x)`` and ``z1 = F(g · x)`` the published per-layer term (Bai et al.,
CVPR 2025) is the Frobenius norm of the whole half-batch difference::

    r(g) = || g · z0 - shift_g(z1) ||_2          (not squared, not averaged)

``reduction="mean"`` returns the root-mean-square form ``r(g) / sqrt(N)`` where ``N`` is the number of
compared elements (all elements of ``z0``, or those inside the valid region for C8). It does not grow
with batch size, width or resolution, so one weight suits layers of any size. The two forms are
equivalent layer by layer when

    lambda_mean = lambda_norm * sqrt(N_l),

e.g. the published lambda_norm = 1e-8 on a DICDNet layer with 16 x 36 x 64 x 64 features
(N = 2.36e6) corresponds to lambda_mean ≈ 1.5e-5 for that layer.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.autograd.function import once_differentiable

from eqmar.equivariance.groups import RotationGroup, _CyclicRot90, get_group

__all__ = ["equivariance_difference", "equivariance_residual", "paired_residual", "tapped_residual", "Reduction"]

Reduction = Literal["norm", "mean"]


def _check_pair(features: torch.Tensor, features_transformed: torch.Tensor, grp: RotationGroup) -> None:
    """Raise a clear ``ValueError`` unless the two tensors are comparable feature maps for ``grp``."""
    if features.shape != features_transformed.shape:
        raise ValueError(
            "equivariance_difference: features and features_transformed must have the same shape, got "
            f"{tuple(features.shape)} and {tuple(features_transformed.shape)}."
        )
    if features.ndim != 4:
        raise ValueError(f"equivariance_difference expects (B, C, H, W) features, got shape {tuple(features.shape)}.")
    if not grp.acts_on(*features.shape[-2:]):
        raise ValueError(
            f"{grp.name} rotations need square feature maps, got {features.shape[-2]}x{features.shape[-1]}."
        )


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    # fp32 keeps the tiny residuals of nearly equivariant layers meaningful under AMP; fp64 stays fp64.
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def equivariance_difference(
    features: torch.Tensor,
    features_transformed: torch.Tensor,
    n: int,
    group: str | RotationGroup = "C4",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``g · features - shift_g(features_transformed)`` in float32 and the valid-region mask.

    Args:
        features: ``F(x)``, shape (B, C, H, W) with C divisible by the group order.
        features_transformed: ``F(g · x)``, same shape.
        n: group element index.
        group: group name or instance.

    Returns:
        The difference (masked to the valid region where the group has one) and the mask or None.
    """
    grp = get_group(group)
    _check_pair(features, features_transformed, grp)
    z0, z1 = _at_least_fp32(features), _at_least_fp32(features_transformed)
    diff = grp.act(z0, n) - grp.shift(z1, n)
    mask = grp.valid_region(diff.shape[-2], diff.shape[-1], diff.device)
    if mask is not None:
        diff = diff * mask
    return diff, mask


def equivariance_residual(
    features: torch.Tensor,
    features_transformed: torch.Tensor,
    n: int,
    group: str | RotationGroup = "C4",
    reduction: Reduction = "norm",
) -> torch.Tensor:
    """The EQ-Reg term of one layer: ``|| g · F(x) - shift_g(F(g · x)) ||``.

    Args:
        features: ``F(x)``, (B, C, H, W).
        features_transformed: ``F(g · x)``, (B, C, H, W).
        n: group element index (0 is the identity, giving 0 for a deterministic layer).
        group: "C2", "C4", "C8", "D4" or a :class:`~eqmar.equivariance.groups.RotationGroup`.
        reduction: "norm" for the published Frobenius norm, "mean" for its root-mean-square form
            (see the module docstring for the equivalent weights).

    Returns:
        A 0-d float32 tensor, differentiable with respect to both inputs. Its gradient at a zero
        difference is zero (not NaN).
    """
    if reduction not in ("norm", "mean"):
        raise ValueError(f"reduction must be 'norm' or 'mean', got {reduction!r}.")
    grp = get_group(group)
    diff, mask = equivariance_difference(features, features_transformed, grp.check_element(n), grp)
    residual = torch.linalg.vector_norm(diff)
    count = diff.numel() if mask is None else int(mask.sum()) * diff.shape[0] * diff.shape[1]
    if reduction == "mean":
        residual = residual / math.sqrt(count)
    return residual


def _channel_groups(t: torch.Tensor, order: int) -> torch.Tensor:
    """``(B, C, H, W)`` viewed as ``(B, C / order, order, H, W)`` (orientation index fastest)."""
    # a plain view works on the transposed layouts rot90 returns; Tensor.unflatten costs more per call
    return t.view(t.shape[0], -1, order, t.shape[2], t.shape[3])


def _subtract_shifted(d: torch.Tensor, z1: torch.Tensor, n: int, grp: RotationGroup) -> None:
    """``d -= shift_n(z1)`` in place, without materialising the shifted tensor for cyclic groups."""
    order = grp.order
    if n == 0:
        d.sub_(z1)
    elif isinstance(grp, _CyclicRot90):
        dv, zv = _channel_groups(d, order), _channel_groups(z1, order)
        dv[:, :, : order - n].sub_(zv[:, :, n:])
        dv[:, :, order - n :].sub_(zv[:, :, :n])
    else:
        d.sub_(grp.shift(z1, n))


def _add_unshifted_scaled(
    out: torch.Tensor, grad: torch.Tensor | None, diff: torch.Tensor, factor: torch.Tensor, n: int, grp: RotationGroup
) -> None:
    """``out = grad + factor * shift_n^T(diff)`` in one pass for cyclic groups (``grad=None`` reads as 0)."""
    order = grp.order
    if n == 0 or not isinstance(grp, _CyclicRot90):
        # shift_g^T = shift_{g^-1} because the channel shift is a permutation.
        _add_scaled(out, grad, diff if n == 0 else grp.shift(diff, grp.inverse(n)), factor)
        return
    ov, dv = _channel_groups(out, order), _channel_groups(diff, order)
    gv = None if grad is None else _channel_groups(grad, order)
    _add_scaled(ov[:, :, n:], None if gv is None else gv[:, :, n:], dv[:, :, : order - n], factor)
    _add_scaled(ov[:, :, :n], None if gv is None else gv[:, :, :n], dv[:, :, order - n :], factor)


def _add_scaled(out: torch.Tensor, grad: torch.Tensor | None, term: torch.Tensor, factor: torch.Tensor) -> None:
    """``out = grad + factor * term`` (``out = factor * term`` without ``grad``), written into ``out``."""
    torch.mul(term, factor, out=out)
    if grad is not None:
        # Two roundings, as autograd's accumulation of a separate residual gradient makes: a fused
        # addcmul rounds once (FMA), which is not faster here and would change every trained weight.
        out.add_(grad)


class _TappedResidual(torch.autograd.Function):
    """``|| g · z[:B] - shift_g(z[B:]) ||`` on one paired feature tensor, with a lean backward.

    Returns ``(features, residual)``: the features pass through unchanged (sharing their storage),
    so that a forward hook can hand them on in place of the layer's output. The backward then
    receives the network's gradient for the features and the residual's gradient together and
    writes their sum into one buffer: rotations by multiples of 90° and channel shifts are
    permutations, so the residual's gradient is ``rot^-1(d) g / r`` on the first half and
    ``-shift^-1(d) g / r`` on the second. Autograd's generic path would instead build the
    residual's gradient in its own buffer (zero-filling and copying one full-size tensor per slice)
    and then add it to the network's gradient in a further pass.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, half: int, n: int, grp: RotationGroup):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        z0, z1 = _at_least_fp32(features[:half]), _at_least_fp32(features[half:])
        diff = grp.act(z0, n).clone() if n == 0 else grp.act(z0, n)
        _subtract_shifted(diff, z1, n, grp)
        norm = torch.linalg.vector_norm(diff)
        ctx.save_for_backward(diff, norm)
        ctx.half, ctx.n, ctx.grp, ctx.dtype = half, n, grp, features.dtype
        # a detached alias rather than ``features`` itself: autograd would turn a returned input into
        # a view, and a view made by a custom Function may not be modified in place (``ReLU(inplace=True)``
        # after a conv); the alias shares the version counter, so misuse is still caught.
        return features.detach(), norm

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_features: torch.Tensor | None, grad_residual: torch.Tensor | None):  # type: ignore[override]
        if grad_residual is None:  # the residual was not used in the loss
            return grad_features, None, None, None
        diff, norm = ctx.saved_tensors
        half, n, grp = ctx.half, ctx.n, ctx.grp
        # zero subgradient at a zero difference (identity steps), never NaN; no host sync on GPUs
        factor = torch.nan_to_num(grad_residual / norm, nan=0.0, posinf=0.0, neginf=0.0)
        out_dtype = ctx.dtype if grad_features is None else grad_features.dtype
        grad = torch.empty((2 * half, *diff.shape[1:]), dtype=out_dtype, device=diff.device)
        g0 = None if grad_features is None else grad_features[:half]
        g1 = None if grad_features is None else grad_features[half:]
        _add_scaled(grad[:half], g0, grp.act(diff, grp.inverse(n)), factor)
        _add_unshifted_scaled(grad[half:], g1, diff, -factor, n, grp)
        return grad, None, None, None


def tapped_residual(
    features: torch.Tensor,
    half: int,
    n: int,
    group: str | RotationGroup = "C4",
    reduction: Reduction = "norm",
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`paired_residual` that also returns the features, for a forward hook to pass on.

    Using the returned features downstream (instead of the original tensor) lets the backward pass
    add the residual's gradient to the network's gradient in one pass. Value and gradients are the
    same as with :func:`paired_residual`.

    Returns:
        ``(features, residual)``.
    """
    if reduction not in ("norm", "mean"):
        raise ValueError(f"reduction must be 'norm' or 'mean', got {reduction!r}.")
    grp = get_group(group)
    n = grp.check_element(n)
    if features.shape[0] != 2 * half:
        raise ValueError(f"EQ-Reg residual: expected a paired batch of 2 x {half}, got {features.shape[0]}.")
    if not grp.exact:
        return features, equivariance_residual(features[:half], features[half:], n, grp, reduction)
    z0, z1 = features[:half], features[half:]
    _check_pair(z0, z1, grp)
    if features.shape[1] % grp.order:
        raise ValueError(f"{grp.name}: {features.shape[1]} channels are not divisible by the group order {grp.order}.")
    passed_on, residual = _TappedResidual.apply(features, half, n, grp)
    if reduction == "mean":
        residual = residual / math.sqrt(z0.numel())
    return passed_on, residual


def paired_residual(
    features: torch.Tensor,
    half: int,
    n: int,
    group: str | RotationGroup = "C4",
    reduction: Reduction = "norm",
) -> torch.Tensor:
    """:func:`equivariance_residual` of ``features[:half]`` and ``features[half:]`` (a paired batch).

    Same value and gradient as ``equivariance_residual(features[:half], features[half:], n, group,
    reduction)``, computed with fewer memory passes for the exact groups (C2, C4, D4). C8
    (interpolating) falls back to the generic path. EQ-Reg's hooks use :func:`tapped_residual`.
    """
    return tapped_residual(features, half, n, group, reduction)[1]
