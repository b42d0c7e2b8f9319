"""EQReg inside MONAI's SupervisedTrainer: paired batches, the loss term, activity, errors, lifecycle."""

from __future__ import annotations

import math
import socket

import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.networks.nets import BasicUNet
from torch import nn

from eqmar.equivariance import EQReg, convs_divisible_by, equivariance_report, get_group

FEATURES = (8, 8, 16, 16, 32, 8)
CPU = torch.device("cpu")


def _smooth_images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 1, size, size, generator=gen)
    return nn.functional.avg_pool2d(noise, 5, 1, 2) * 3


def _denoising_data(count: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    clean = _smooth_images(count, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=gen)
    return [{"image": noisy[i], "label": clean[i]} for i in range(count)]


def _unet(seed: int = 0) -> BasicUNet:
    torch.manual_seed(seed)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=FEATURES)


def _trainer(
    network: nn.Module,
    eqreg: EQReg | None,
    epochs: int = 1,
    data=None,
    handlers=(),
    lr: float = 2e-3,
    device: torch.device = CPU,
) -> SupervisedTrainer:
    loader = DataLoader(data or _denoising_data(), batch_size=4, shuffle=False)
    return SupervisedTrainer(
        device=device,
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr),
        loss_function=nn.MSELoss(),
        prepare_batch=eqreg.prepare_batch if eqreg is not None else default_prepare_batch,
        train_handlers=[eqreg, *handlers] if eqreg is not None else list(handlers),
    )


def test_prepare_batch_doubles_and_rotates_every_image_key() -> None:
    net = _unet()
    eqreg = EQReg(net, layers=convs_divisible_by("C4"), seed=3)
    batch = {
        "image": torch.randn(2, 1, 8, 8),
        "label": torch.randn(2, 1, 8, 8),
        "mask": torch.randint(0, 2, (2, 1, 8, 8)).float(),
        "LI": torch.randn(2, 1, 8, 8),
        "mask_index": torch.tensor([3, 5]),
        "image_id": ["a", "b"],
    }
    n = eqreg.draw_element()
    eqreg._generator.manual_seed(3)  # replay the same draw inside prepare_batch
    image, label = eqreg.prepare_batch(batch)
    paired = eqreg.pair(batch, n)
    assert image.shape[0] == 4 and label.shape[0] == 4
    assert torch.equal(image[:2], batch["image"]) and torch.equal(image[2:], torch.rot90(batch["image"], n, (2, 3)))
    assert torch.equal(label[2:], torch.rot90(batch["label"], n, (2, 3)))
    for key in ("mask", "LI"):
        assert torch.equal(paired[key][2:], torch.rot90(batch[key], n, (2, 3)))
    assert paired["mask_index"].tolist() == [3, 5, 3, 5]
    assert paired["image_id"] == ["a", "b", "a", "b"]


def test_loss_includes_weighted_term_and_output_logs_it(device: torch.device) -> None:
    net = _unet().to(device)
    weight = 1e-2
    eqreg = EQReg(net, layers=convs_divisible_by("C4"), weight=weight, elements=[1, 2, 3])
    trainer = _trainer(net, eqreg, device=device)
    seen: list[tuple[float, float, float]] = []

    def check(engine: SupervisedTrainer) -> None:
        out = engine.state.output
        task = nn.functional.mse_loss(out["pred"], out["label"])
        seen.append((float(out["loss"]), float(task), float(out["eq_reg"])))

    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, check)
    trainer.run()
    assert len(seen) == 4
    for loss, task, term in seen:
        assert term > 0
        assert math.isclose(loss, task + weight * term, rel_tol=1e-5)
    assert "eq_reg" in trainer.state.output[0]
    assert not eqreg.hooks_registered  # removed on COMPLETED


def test_one_forward_pass_per_step() -> None:
    net = _unet()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    eqreg = EQReg(net, layers=convs_divisible_by("C4"), weight=1.0)
    _trainer(net, eqreg).run()
    assert calls == [8, 8, 8, 8]


def _train_and_measure(weight: float) -> float:
    net = _unet(seed=0)
    eqreg = EQReg(net, layers=convs_divisible_by("C4"), weight=weight, reduction="mean", seed=0)
    torch.manual_seed(0)
    _trainer(net, eqreg, epochs=6, lr=1e-2).run()
    report = equivariance_report(net, DataLoader(_denoising_data(8, seed=7), batch_size=4),
                                 layers=convs_divisible_by("C4"))
    return report.mean_layer_error


def test_regulariser_is_really_active() -> None:
    """Same seed, same data, same augmentation: a large weight gives a more equivariant network.

    Measured when written: mean relative layer error 1.43 with weight 0 vs 0.57 with weight 1.
    """
    plain = _train_and_measure(0.0)
    regularised = _train_and_measure(1.0)
    assert regularised < 0.6 * plain, (plain, regularised)


def test_identity_steps_have_finite_gradients(device: torch.device) -> None:
    net = _unet().to(device)
    eqreg = EQReg(net, layers=convs_divisible_by("C4"), weight=1.0, elements=[0])
    grads_finite = []

    def check(engine: SupervisedTrainer) -> None:
        grads_finite.append(all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None))

    trainer = _trainer(net, eqreg, device=device)
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, check)
    trainer.run()
    assert grads_finite == [True] * 4


def test_unknown_layer_name_is_reported_with_suggestion() -> None:
    with pytest.raises(ValueError, match="no layer named 'down_1.conv'.*Did you mean"):
        EQReg(_unet(), layers=["down_1.conv"])


def test_indivisible_channels_are_named_at_setup() -> None:
    with pytest.raises(ValueError, match=r"final_conv \(1 channels\)"):
        EQReg(_unet(), layers=nn.Conv2d)
    conv = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1))
    with pytest.raises(ValueError, match=r"divisible by 8; these layers are not: 0 \(6 channels\)"):
        EQReg(conv, layers=nn.Conv2d, group="D4")
    with pytest.raises(ValueError, match=r"divisible by the order 8 of D4 \(0 \(6 channels\)\); choose layers="):
        EQReg(conv, group="D4")  # the default selection leaves nothing


def test_batch_without_expected_keys() -> None:
    eqreg = EQReg(_unet(), layers=convs_divisible_by("C4"), image_keys=["image", "label"])
    with pytest.raises(KeyError, match=r"no key\(s\) \['label'\]; available keys: \['image'\]"):
        eqreg.prepare_batch({"image": torch.zeros(1, 1, 8, 8)})
    with pytest.raises(ValueError, match="no image tensor"):
        EQReg(_unet(), layers=convs_divisible_by("C4")).prepare_batch({"ct": torch.zeros(1, 8, 8)})


def test_trainer_without_paired_batch_fails_loudly() -> None:
    net = _unet()
    eqreg = EQReg(net, layers=convs_divisible_by("C4"))
    trainer = _trainer(net, None, handlers=[eqreg])
    with pytest.raises(RuntimeError, match="no paired batch"):
        trainer.run()
    assert not eqreg.hooks_registered  # removed on EXCEPTION_RAISED, and the error still propagated


def test_hooks_are_registered_again_on_a_second_run() -> None:
    net = _unet()
    eqreg = EQReg(net, layers=convs_divisible_by("C4"), weight=1e-3)
    trainer = _trainer(net, eqreg)
    trainer.run()
    assert not eqreg.hooks_registered
    trainer.state.max_epochs = 2
    trainer.run()
    assert trainer.state.iteration == 8 and "eq_reg" in trainer.state.output[0]


def test_draw_state_resumes_the_same_element_sequence() -> None:
    eqreg = EQReg(_unet(), layers=convs_divisible_by("C4"), seed=11)
    [eqreg.draw_element() for _ in range(5)]
    state = eqreg.state_dict()
    expected = [eqreg.draw_element() for _ in range(6)]
    other = EQReg(_unet(), layers=convs_divisible_by("C4"), seed=0)
    other.load_state_dict(state)
    assert [other.draw_element() for _ in range(6)] == expected


def test_plain_loop_with_bfloat16_autocast(device: torch.device) -> None:
    net = _unet().to(device)
    eqreg = EQReg(net, layers=convs_divisible_by("C4"), weight=1e-3)
    batch = _denoising_data(2)
    image = torch.stack([b["image"] for b in batch]).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        paired = eqreg.pair(image, n=1)
        pred = net(paired)
    term = eqreg.pop_term()
    assert term.dtype == torch.float32 and torch.isfinite(term) and term > 0
    (pred.float().mean() + eqreg.weight * term).backward()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_wrapped_network_is_hooked_on_the_inner_module() -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        net = _unet()
        ddp = nn.parallel.DistributedDataParallel(net)
        eqreg = EQReg(ddp, layers=["module.conv_0.conv_0.conv", "down_1.convs.conv_0.conv"], weight=1e-2, elements=[1])
        assert set(eqreg.layers) == {"conv_0.conv_0.conv", "down_1.convs.conv_0.conv"}
        trainer = _trainer(ddp, eqreg)
        trainer.run()
        assert trainer.state.output[0]["eq_reg"] > 0
    finally:
        dist.destroy_process_group()


def test_layers_by_predicate_and_regex() -> None:
    net = _unet()
    by_regex = EQReg(net, layers=[r"down_\d\.convs\.conv_0\.conv"])
    assert list(by_regex.layers) == [f"down_{i}.convs.conv_0.conv" for i in range(1, 5)]
    by_pred = EQReg(net, layers=lambda name, m: isinstance(m, nn.Conv2d) and name.startswith("upcat"))
    assert len(by_pred.layers) == 8 and get_group("C4").order == 4


def test_hook_gradients_equal_an_independent_reference_with_in_place_activations(device: torch.device) -> None:
    """EQ-Reg's hooks pass each layer's output on; with ``ReLU(inplace=True)`` after every conv the
    parameter gradients still equal those of ``task + λ Σ residual`` built from the generic formula."""
    from eqmar.equivariance import equivariance_residual

    def make_net() -> nn.Sequential:
        torch.manual_seed(3)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(8, 1, 3, padding=1),
        ).to(device)

    x, y = torch.randn(2, 1, 12, 12, device=device), torch.randn(2, 1, 12, 12, device=device)
    weight, n = 0.3, 1

    hooked = make_net()
    eqreg = EQReg(hooked, layers=["0", "2"], weight=weight)
    px, py = eqreg.pair((x, y), n)
    loss = nn.functional.mse_loss(hooked(px), py) + weight * eqreg.pop_term()
    loss.backward()

    reference = make_net()
    residuals: list[torch.Tensor] = []
    for index in (0, 2):
        reference[index].register_forward_hook(
            lambda m, i, out: residuals.append(equivariance_residual(out[:2], out[2:], n))
        )
    loss_ref = nn.functional.mse_loss(reference(px), py) + weight * torch.stack(residuals).sum()
    loss_ref.backward()

    # cuDNN may reduce weight gradients in another order for the two networks (atomics, TF32)
    atol = 1e-6 if device.type == "cpu" else 1e-4
    assert torch.allclose(loss, loss_ref, atol=atol)
    for (name, p), p_ref in zip(hooked.named_parameters(), reference.parameters(), strict=False):
        assert torch.allclose(p.grad, p_ref.grad, atol=atol), name


def test_resume_keeps_the_requested_weight(caplog) -> None:
    net = _unet()
    stored = EQReg(net, layers=convs_divisible_by("C4"), weight=1e-3).state_dict()
    resumed = EQReg(_unet(), layers=convs_divisible_by("C4"), weight=5e-2)
    with caplog.at_level("WARNING", logger="eqmar.equivariance.eqreg"):
        resumed.load_state_dict(stored)
    assert resumed.weight == 5e-2 and "trained with weight 0.001" in caplog.text


def test_non_square_images_are_refused_for_every_draw_of_c4() -> None:
    from eqmar.equivariance import pair_batch

    batch = {"image": torch.randn(2, 1, 8, 12), "label": torch.randn(2, 1, 8, 12)}
    for n in range(4):  # also n = 0 and 2, which would pair fine, so the error never depends on the draw
        with pytest.raises(ValueError, match=r"batch\['image'\] is 8x12; C4 rotations need square images"):
            pair_batch(batch, "C4", n)
    assert pair_batch(batch, "C2", 1)["image"].shape == (4, 1, 8, 12)


class _DictOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": x}


def test_a_layer_output_that_is_not_4d_is_named_with_its_shape_or_type() -> None:
    image = torch.randn(2, 1, 8, 8)
    flat = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(2))
    eqreg = EQReg(flat, layers=["1"])
    with pytest.raises(ValueError, match=r"layer '1' must output a \(B, C, H, W\) tensor, "
                                         r"got a tensor of shape \(4, 4, 64\)\."):
        flat(eqreg.pair(image, n=1))
    wrapped = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), _DictOutput())
    eqreg = EQReg(wrapped, layers=["1"])
    with pytest.raises(ValueError, match=r"got dict \(no tensor\)"):
        wrapped(eqreg.pair(image, n=1))
