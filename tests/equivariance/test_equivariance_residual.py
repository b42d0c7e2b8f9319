"""The residual against a direct computation of the published formula, reductions, gradients, AMP."""

from __future__ import annotations

import math

import pytest
import torch

from eqmar.equivariance import equivariance_residual


def _published_residual(z0: torch.Tensor, z1: torch.Tensor, n: int) -> torch.Tensor:
    """Independent transcription of the published C4 term with explicit loops over channel groups."""
    rotated = torch.rot90(z0, n, dims=(2, 3))
    shifted = torch.empty_like(z1)
    for block in range(z1.shape[1] // 4):
        for k in range(4):
            shifted[:, 4 * block + k] = z1[:, 4 * block + (k + n) % 4]
    return torch.sqrt(((rotated - shifted) ** 2).sum())


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_residual_equals_direct_formula_on_random_tensors(n: int) -> None:
    torch.manual_seed(n)
    z0, z1 = torch.randn(3, 12, 10, 10), torch.randn(3, 12, 10, 10)
    assert torch.allclose(equivariance_residual(z0, z1, n), _published_residual(z0, z1, n), rtol=1e-5)


def test_mean_reduction_is_rms_and_lambda_conversion_holds() -> None:
    torch.manual_seed(0)
    z0, z1 = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6)
    norm = equivariance_residual(z0, z1, 1, reduction="norm")
    mean = equivariance_residual(z0, z1, 1, reduction="mean")
    count = z0.numel()
    assert torch.allclose(mean, norm / math.sqrt(count))
    lam_norm = 1e-8
    assert math.isclose(lam_norm * float(norm), lam_norm * math.sqrt(count) * float(mean), rel_tol=1e-6)


def test_mean_reduction_is_size_independent() -> None:
    torch.manual_seed(0)
    small = equivariance_residual(torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8), 1, reduction="mean")
    large = equivariance_residual(torch.randn(8, 32, 32, 32), torch.randn(8, 32, 32, 32), 1, reduction="mean")
    assert abs(float(small) - float(large)) < 0.15 * float(large)


def test_c8_residual_ignores_corners() -> None:
    z = torch.zeros(1, 8, 16, 16)
    corrupted = z.clone()
    corrupted[..., 0, 0] = 100.0  # outside the inscribed disc
    assert equivariance_residual(z, corrupted, 1, group="C8") == 0


def test_identity_element_gives_zero_and_finite_gradient() -> None:
    z = torch.randn(2, 4, 8, 8)
    z0 = z.clone().requires_grad_(True)
    z1 = z.clone().requires_grad_(True)
    residual = equivariance_residual(z0, z1, 0)
    residual.backward()
    assert residual == 0
    assert torch.isfinite(z0.grad).all() and torch.isfinite(z1.grad).all()
    assert z0.grad.abs().sum() == 0


def test_residual_is_float32_for_half_inputs() -> None:
    z0, z1 = torch.randn(1, 4, 8, 8).to(torch.bfloat16), torch.randn(1, 4, 8, 8).to(torch.bfloat16)
    assert equivariance_residual(z0, z1, 1).dtype == torch.float32


def test_shape_mismatch_and_bad_reduction() -> None:
    with pytest.raises(ValueError, match="same shape"):
        equivariance_residual(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 6), 1)
    with pytest.raises(ValueError, match="reduction"):
        equivariance_residual(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8), 1, reduction="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        equivariance_residual(torch.zeros(1, 4, 8, 6), torch.zeros(1, 4, 8, 6), 1)


@pytest.mark.parametrize("group", ["C2", "C4", "D4", "C8"])
def test_paired_residual_matches_generic_value_and_gradient(group: str) -> None:
    """The hooks' fused form equals the generic autograd form, for every element."""
    from eqmar.equivariance import get_group
    from eqmar.equivariance.functional import paired_residual

    torch.manual_seed(0)
    for n in get_group(group).elements():
        features = torch.randn(6, 8, 10, 10, requires_grad=True)
        fused = paired_residual(features, 3, n, group)
        (grad_fused,) = torch.autograd.grad(1.7 * fused, features)
        generic = equivariance_residual(features[:3], features[3:], n, group)
        (grad_generic,) = torch.autograd.grad(1.7 * generic, features)
        assert torch.allclose(fused, generic, rtol=1e-5)
        assert torch.allclose(grad_fused, grad_generic, atol=1e-6)


def test_paired_residual_gradcheck_and_identity() -> None:
    from eqmar.equivariance.functional import paired_residual

    features = torch.randn(4, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: paired_residual(t, 2, 1, "C4"), (features,))
    assert torch.autograd.gradcheck(lambda t: paired_residual(t, 2, 5, "D4"), (features,))
    same = torch.randn(2, 8, 6, 6).repeat(2, 1, 1, 1).requires_grad_(True)
    residual = paired_residual(same, 2, 0)
    (grad,) = torch.autograd.grad(residual, same)
    assert residual == 0 and torch.count_nonzero(grad) == 0
    with pytest.raises(ValueError, match="batch of 2 x 3"):
        paired_residual(torch.zeros(4, 4, 4, 4), 3, 1)


@pytest.mark.parametrize(("group", "n"), [("C4", 0), ("C4", 1), ("C4", 2), ("C4", 3), ("C2", 1), ("D4", 6)])
def test_tapped_residual_gradient_sums_both_paths(group: str, n: int, device: torch.device) -> None:
    """The pass-through features and the residual together give the gradient of their sum."""
    from eqmar.equivariance.functional import tapped_residual

    torch.manual_seed(0)
    features = torch.randn(4, 8, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    weights = torch.randn(4, 8, 6, 6, dtype=torch.float64, device=device)

    def objective(t: torch.Tensor) -> torch.Tensor:
        passed_on, residual = tapped_residual(t, 2, n, group)
        return (passed_on * weights).sum() + 1.3 * residual

    if n:  # the norm is not differentiable where the difference vanishes (n = 0 on a deterministic layer)
        assert torch.autograd.gradcheck(objective, (features,))
    passed_on, residual = tapped_residual(features, 2, n, group)
    assert passed_on.data_ptr() == features.data_ptr()  # no copy of the features
    assert torch.allclose(residual, equivariance_residual(features[:2], features[2:], n, group))
    (unused_residual_grad,) = torch.autograd.grad((passed_on * weights).sum(), features)
    assert torch.equal(unused_residual_grad, weights)


def test_tapped_residual_allows_in_place_ops_downstream() -> None:
    from eqmar.equivariance.functional import tapped_residual

    features = torch.randn(4, 4, 5, 5, requires_grad=True)
    passed_on, residual = tapped_residual(features * 1.0, 2, 1)
    torch.relu_(passed_on)  # as nn.ReLU(inplace=True) after a hooked conv would
    (passed_on.sum() + residual).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_tapped_residual_gradient_rounds_as_autograd_accumulation(device: torch.device) -> None:
    """``g + rot⁻¹(d)·(g_r / r)`` with a rounded product, then a rounded sum: bit-identical to adding a
    separately computed residual gradient, so trained weights do not depend on the hooks' internals."""
    from eqmar.equivariance.functional import equivariance_difference, tapped_residual

    torch.manual_seed(1)
    features = torch.randn(4, 8, 9, 9, device=device, requires_grad=True)
    grad_features = torch.randn(4, 8, 9, 9, device=device)
    passed_on, residual = tapped_residual(features, 2, 1)
    grad_residual = torch.tensor(1.7, device=device)
    (grad,) = torch.autograd.grad([passed_on, residual], features, [grad_features, grad_residual])
    diff, _ = equivariance_difference(features[:2].detach(), features[2:].detach(), 1)
    factor = 1.7 / torch.linalg.vector_norm(diff)
    expected_first_half = torch.rot90(diff, -1, dims=(2, 3)) * factor + grad_features[:2]
    assert torch.equal(grad[:2], expected_first_half)


def test_fused_path_mean_reduction_and_bad_reduction() -> None:
    from eqmar.equivariance.functional import paired_residual

    torch.manual_seed(2)
    features = torch.randn(4, 8, 6, 6)
    for group in ("C2", "C4", "D4"):
        assert torch.allclose(
            paired_residual(features, 2, 1, group, reduction="mean"),
            equivariance_residual(features[:2], features[2:], 1, group, reduction="mean"),
        )
    with pytest.raises(ValueError, match="reduction"):
        paired_residual(features, 2, 1, "C4", reduction="sum")


