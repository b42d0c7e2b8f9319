"""Tests for the MAR backbones (DICDNet, ACDNet, OSCNet) and the UNet baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eqmar.losses import MARLoss
from eqmar.networks import ACDNet, DICDNet, MAROutput, OSCNet, mar_baseline_unet, proximal_conv_names
from eqmar.networks.acdnet import adaptive_analyze, adaptive_synthesize, coefficient_gradient
from eqmar.networks.blocks import analyze, oriented_gaussian_dictionary, synthesize
from eqmar.networks.oscnet import OrientationSharedDictionary

BACKBONES = {"dicdnet": DICDNet, "acdnet": ACDNet, "oscnet": OSCNet}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _mar_batch(batch: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A disc phantom (µ map) with a metal square: input (B,3,H,W) and target (B,2,H,W)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    body = 0.2 * ((xx**2 + yy**2) < 0.8).float()
    gt = body + 0.01 * torch.rand(batch, 1, size, size, generator=g)
    mask = torch.ones(batch, 1, size, size)
    mask[..., size // 2 - 3 : size // 2 + 3, size // 3 - 3 : size // 3 + 3] = 0.0
    streaks = 0.03 * torch.sin(6 * torch.atan2(yy, xx + 0.3)) * torch.ones(batch, 1, 1, 1)
    ma = gt + streaks + 2.4 * (1 - mask)
    li = gt + 0.3 * streaks
    return torch.cat((ma, li, mask), dim=1), torch.cat((gt, mask), dim=1)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_forward_backward_train_and_eval(name: str) -> None:
    torch.manual_seed(0)
    net = BACKBONES[name](num_stages=2)
    x, target = _mar_batch()
    out = net(x)
    assert isinstance(out, MAROutput)
    assert out.image.shape == (2, 1, 64, 64)
    assert len(out.stage_images) == len(out.stage_artifacts) == 2
    for t in (*out.stage_images, *out.stage_artifacts, out.init_image, out.ma_image):
        assert t.shape == (2, 1, 64, 64)
    assert torch.equal(out.ma_image, x[:, :1])
    assert len(out.warmup_images) == (2 if name == "acdnet" else 0)
    MARLoss()(out, target).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"zero gradient at {pname}"
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 1, 64, 64)
    assert torch.isfinite(y).all()


def _resblock_convs(num_nets: int, num_res_blocks: int) -> int:
    return num_nets * 2 * num_res_blocks


@pytest.mark.parametrize("num_stages,num_res_blocks", [(10, 3), (2, 1), (4, 2)])
def test_regularisable_conv_counts(num_stages: int, num_res_blocks: int) -> None:
    t, r = num_stages, num_res_blocks
    for cls in (DICDNet, OSCNet):
        net = cls(num_stages=t, num_res_blocks=r)
        x_names = proximal_conv_names(net, "x_net", group_order=4)
        m_names = proximal_conv_names(net, "m_net", group_order=4)
        assert len(x_names) == _resblock_convs(t + 2, r)
        assert len(m_names) == _resblock_convs(t, r)
        assert len(proximal_conv_names(net)) == _resblock_convs(2 * t + 2, r)
        assert all(net.get_submodule(n).out_channels % 4 == 0 for n in x_names + m_names)
    acd = ACDNet(num_stages=t, num_res_blocks=r)
    assert len(proximal_conv_names(acd, "x_net", group_order=4)) == _resblock_convs(t + 4, r)
    assert len(proximal_conv_names(acd, "m_net")) == _resblock_convs(t + 2, r)
    with pytest.raises(ValueError, match="out_channels=6"):
        proximal_conv_names(acd, "m_net", group_order=4)
    assert len(proximal_conv_names(acd, "m_net", group_order=2)) == _resblock_convs(t + 2, r)


def test_published_dicdnet_has_132_regularised_convs_named_by_stage() -> None:
    names = proximal_conv_names(DICDNet())
    assert len(names) == 132
    assert "stages.0.x_net.res_blocks.0.conv_1" in names
    assert "stages.9.m_net.res_blocks.2.conv_2" in names
    assert "init.x_net.res_blocks.0.conv_1" in names and "final_x_net.res_blocks.2.conv_2" in names
    assert not any("dictionary" in n or "feature_transition" in n for n in names)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="features=33 is not divisible by group_order=4"):
        DICDNet(features=33)
    DICDNet(num_stages=1, features=33, group_order=None)
    with pytest.raises(ValueError, match="num_filters=30"):
        DICDNet(num_filters=30)
    with pytest.raises(ValueError, match="spatial_dims=3"):
        ACDNet(spatial_dims=3)
    with pytest.raises(ValueError, match="num_stages"):
        OSCNet(num_stages=0)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_bad_input_is_named(name: str) -> None:
    net = BACKBONES[name](num_stages=1, num_res_blocks=1)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        net(torch.zeros(1, 2, 16, 16))


def test_dictionary_convolution_adjoints() -> None:
    g = torch.Generator().manual_seed(1)
    filters = torch.randn(1, 5, 9, 9, generator=g)
    m = torch.randn(2, 5, 20, 24, generator=g)
    r = torch.randn(2, 1, 20, 24, generator=g)
    assert torch.allclose(synthesize(m, filters), F.conv2d(m, filters, padding=4), atol=1e-4)
    assert torch.allclose(analyze(r, filters), F.conv_transpose2d(r, filters, padding=4), atol=1e-4)
    lhs = (synthesize(m, filters) * r).sum()
    rhs = (m * analyze(r, filters)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-4)
    coeffs = torch.randn(2, 3, 5, generator=g)
    m3 = torch.randn(2, 3, 20, 24, generator=g)
    lhs = (adaptive_synthesize(m3, coeffs, filters) * r).sum()
    rhs = (m3 * adaptive_analyze(r, coeffs, filters)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-4)


def test_adaptive_synthesis_matches_per_sample_filters_and_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    d = torch.randn(1, 4, 5, 5, generator=g, dtype=torch.float64)
    coeffs = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    m = torch.randn(2, 3, 12, 12, generator=g, dtype=torch.float64)
    r = torch.randn(2, 1, 12, 12, generator=g, dtype=torch.float64)
    a = adaptive_synthesize(m, coeffs, d)
    for b in range(2):
        per_sample = torch.einsum("nd,dhw->nhw", coeffs[b], d[0]).unsqueeze(0)
        assert torch.allclose(a[b : b + 1], synthesize(m[b : b + 1], per_sample))
    (0.5 * ((r - a) ** 2).sum()).backward()
    expected = -coefficient_gradient(m, r - a.detach(), d)
    assert torch.allclose(coeffs.grad, expected)


def test_dictionary_initialisation() -> None:
    bank = oriented_gaussian_dictionary(32, 9)
    assert bank.shape == (1, 32, 9, 9)
    assert torch.allclose(bank.flatten(2).norm(dim=2), torch.ones(1, 32), atol=1e-6)
    assert (bank.flatten(2)[0] @ bank.flatten(2)[0].T).fill_diagonal_(0).max() < 0.999


def test_orientation_shared_filters_rotate_exactly() -> None:
    torch.manual_seed(3)
    dic = OrientationSharedDictionary(num_filters=4, num_rotations=8, kernel_size=9, order=5)
    with torch.no_grad():
        dic.coefficients.normal_()
    filters = dic.raw_filters()[0].view(4, 8, 9, 9)
    for quarter in range(4):
        assert torch.allclose(filters[:, 2 * quarter], torch.rot90(filters[:, 0], quarter, dims=(1, 2)), atol=1e-5)
    # weights are shared: 4 filters x 25 Fourier coefficients, whatever the number of orientations
    assert dic.coefficients.shape == (4, 25)
    assert dic.num_atoms == 32


def test_state_dict_round_trip_strict() -> None:
    torch.manual_seed(4)
    net = ACDNet(num_stages=2, num_res_blocks=1).eval()
    clone = ACDNet(num_stages=2, num_res_blocks=1).eval()
    clone.load_state_dict(net.state_dict(), strict=True)
    x, _ = _mar_batch(batch=1, size=32)
    with torch.no_grad():
        assert torch.equal(net(x), clone(x))


def test_baseline_unet_is_li_plus_residual() -> None:
    net = mar_baseline_unet()
    x, target = _mar_batch(size=64)
    assert net.unet.conv_0.conv_0.conv.out_channels == 36
    # zero-initialised residual: training starts exactly from LI (clamped at µ = 0), and the residual still learns
    assert torch.equal(net(x), x[:, 1:2].clamp(min=0))
    assert torch.equal(mar_baseline_unet(nonnegative=False)(x), x[:, 1:2])
    x_negative = x.clone()
    x_negative[:, 1] -= 0.5  # LI below µ = 0 (streaks in air): the output never goes below 0
    assert net(x_negative).min() == 0 and (mar_baseline_unet(nonnegative=False)(x_negative) < 0).any()
    MARLoss()(net(x), target).backward()
    assert net.unet.final_conv.weight.grad.abs().sum() > 0
    random_start = mar_baseline_unet(zero_init_residual=False)
    assert random_start(x).shape == (2, 1, 64, 64)
    assert not torch.allclose(random_start(x), x[:, 1:2])
    with pytest.raises(ValueError, match="6 entries"):
        mar_baseline_unet(features=(8, 8, 8))


def test_dicdnet_learns_on_a_phantom() -> None:
    """A few Adam steps must reduce the published loss on a fixed batch (a real training signal)."""
    torch.manual_seed(5)
    net = DICDNet(num_stages=2, num_res_blocks=1)
    x, target = _mar_batch(batch=2, size=32)
    loss_fn = MARLoss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = loss_fn(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_proximal_convs_can_be_hooked_on_a_paired_batch() -> None:
    """EQ-Reg attaches forward hooks by name on a [x ; rot90(x)] batch: every hooked conv must fire once
    per forward with a (2B, C, H, W) output whose C splits into groups of 4 orientations."""
    torch.manual_seed(6)
    net = DICDNet(num_stages=2, num_res_blocks=1)
    names = proximal_conv_names(net, group_order=4)
    seen: dict[str, torch.Size] = {}
    handles = [
        net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.shape)) for n in names
    ]
    x, _ = _mar_batch(batch=1, size=32)
    net(torch.cat((x, torch.rot90(x, 1, dims=(2, 3))), dim=0))
    for h in handles:
        h.remove()
    assert sorted(seen) == sorted(names)
    assert all(s[0] == 2 and s[1] % 4 == 0 and s[2:] == (32, 32) for s in seen.values())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_eval_mode_traces_at_other_sizes() -> None:
    """MONAI bundle export (``ckpt_export(use_trace=True)``) traces the eval-mode network; the trace
    must stay valid at another batch and image size (ACDNet's K step depends on H·W)."""
    torch.manual_seed(7)
    net = ACDNet(num_stages=2, num_res_blocks=1).eval()
    x, _ = _mar_batch(batch=1, size=32)
    with torch.no_grad():
        traced = torch.jit.trace(net, x, check_trace=False)
        x2, _ = _mar_batch(batch=2, size=48)
        assert torch.allclose(traced(x2), net(x2), atol=1e-6)


def _naive_acdnet(net: ACDNet, x: torch.Tensor) -> torch.Tensor:
    """ACDNet's published updates written literally: per-sample filters C_b = K_b D, direct F.conv2d."""
    s, pad = net.intensity_scale, 4
    ma, li, mask = x[:, :1] * s, x[:, 1:2] * s, x[:, 2:3]
    image, aux = net.init(li)

    def x_step(stage, image, aux, artifact):
        xq = stage.x_net(torch.cat((image + stage.eta_x * 0.1 * mask * (ma - artifact - image), aux), 1))
        return xq[:, :1], xq[:, 1:], xq

    d0 = net.warmup_dictionary.weight * 0.1
    m = a = None  # both bound by the first stage, read from the second on
    for stage in net.warmup_stages:
        if m is None:
            m = stage.m_net(F.conv_transpose2d(F.relu(mask * (ma - image) - net.artifact_threshold), d0, padding=pad))
        else:
            m = stage.m_net(m - stage.eta_m * 0.1 * F.conv_transpose2d(mask * (a - ma + image), d0, padding=pad))
        a = F.conv2d(m, d0, padding=pad)
        image, aux, xq = x_step(stage, image, aux, a)
    m = net.feature_transition(F.relu(m))
    d = net.dictionary.weight * 0.1
    b, n, h, w = m.shape

    def filters(k):
        return [torch.einsum("nd,dhw->nhw", k[i], d[0]).unsqueeze(0) for i in range(b)]

    def syn(m, k):
        return torch.cat([F.conv2d(m[i : i + 1], c, padding=pad) for i, c in enumerate(filters(k))])

    def ana(r, k):
        return torch.cat([F.conv_transpose2d(r[i : i + 1], c, padding=pad) for i, c in enumerate(filters(k))])

    def grad_k(m, r):
        dm = F.conv2d(m.reshape(b * n, 1, h, w), d.transpose(0, 1), padding=pad).view(b, n, -1, h, w)
        return (dm * r.unsqueeze(1)).sum((-1, -2))

    k = None
    for stage in net.stages:
        r = mask * (ma - image)
        if k is None:
            k = stage.k_net(grad_k(m, r))
        else:
            k = stage.k_net(k + stage.eta_k / (h * w * 50) * grad_k(m, r - mask * syn(m, k)))
        m = stage.m_net(m + stage.eta_m * 0.1 * ana(r - mask * syn(m, k), k))
        image, aux, xq = x_step(stage, image, aux, syn(m, k))
    return net.final_x_net(xq)[:, :1] / s


def test_acdnet_matches_literal_per_sample_updates() -> None:
    # train mode: BatchNorm uses batch statistics, so the fresh M-nets pass non-zero feature maps and
    # the adaptive-dictionary path really shapes the output (checked below through eta_k)
    torch.manual_seed(8)
    net = ACDNet(num_stages=3, num_res_blocks=1).double().train()
    x, _ = _mar_batch(batch=2, size=24)
    x = x.double()
    with torch.no_grad():
        got = net(x).image
        assert torch.allclose(got, _naive_acdnet(net, x), rtol=1e-9, atol=1e-12)
        net.stages[1].eta_k.fill_(50.0)
        changed = net(x).image
        assert (changed - got).norm() > 1e-4 * got.norm()
        assert torch.allclose(changed, _naive_acdnet(net, x), rtol=1e-9, atol=1e-12)


def _conformance_pairs(root) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input (3,416,416), target (2,416,416)) for the ten test masks of the SynDeepLesion sample."""
    h5py = pytest.importorskip("h5py")
    import numpy as np
    from PIL import Image

    with h5py.File(root / "gt.h5", "r") as f:
        gt = f["image"][()]
    masks = np.load(root / "testmask.npy")
    pairs = []
    for k in range(masks.shape[-1]):
        with h5py.File(root / f"{k}.h5", "r") as f:
            ma, li = f["ma_CT"][()], f["LI_CT"][()]
        metal = np.asarray(Image.fromarray(masks[:, :, k]).resize((416, 416), Image.BILINEAR), dtype=np.float32)
        pairs.append(
            (torch.from_numpy(np.stack([ma, li, 1 - metal])).float(),
             torch.from_numpy(np.stack([gt, 1 - metal])).float())
        )
    return pairs


def _protocol_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """SynDeepLesion PSNR: clamp µ to [0, 0.5], 8-bit quantise, metal excluded, mean over images."""

    def quantise(x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.floor(torch.clamp(x, 0, 0.5) / 0.5 * 256), 0, 255) / 255

    gt, mask = target[:, :1], target[:, 1:2]
    mse = ((quantise(pred) - quantise(gt)) * mask).pow(2).mean((1, 2, 3))
    return (10 * torch.log10(1 / mse)).mean().item()


@pytest.mark.slow
def test_baseline_unet_beats_li_on_conformance_slice(conformance_dir) -> None:
    """200 steps of 8 random 64×64 patches (masks 0-7) must lift held-out masks 8-9 above LI (~2 min)."""
    import numpy as np

    pairs = _conformance_pairs(conformance_dir)
    x_test = torch.stack([p[0] for p in pairs[8:]])
    t_test = torch.stack([p[1] for p in pairs[8:]])
    li_psnr = _protocol_psnr(x_test[:, 1:2], t_test)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = mar_baseline_unet()
    loss_fn = MARLoss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    for _ in range(200):
        crops = []
        for _ in range(8):
            x, t = pairs[rng.integers(8)]
            r, c = rng.integers(0, 416 - 64, 2)
            crops.append((x[:, r : r + 64, c : c + 64], t[:, r : r + 64, c : c + 64]))
        opt.zero_grad()
        loss_fn(net(torch.stack([c[0] for c in crops])), torch.stack([c[1] for c in crops])).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        net_psnr = _protocol_psnr(net(x_test), t_test)
    assert net_psnr > li_psnr + 0.5, (net_psnr, li_psnr)
