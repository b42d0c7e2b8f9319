"""The shared trainer: arms, logging of the EQ-Reg term, checkpoint and resume."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.networks.nets import BasicUNet
from torch import nn

from eqmar.engines import EQRegSettings, build_arm, build_trainer, latest_checkpoint
from eqmar.equivariance import convs_divisible_by


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 16, 4))
    data = [{"image": torch.rand(1, 32, 32), "label": torch.rand(1, 32, 32)} for _ in range(8)]
    return net, DataLoader(data, batch_size=2), torch.optim.Adam(net.parameters(), 1e-3)


SETTINGS = EQRegSettings(weight=1e-3, layers=convs_divisible_by("C4"), elements=[1, 2, 3])


@pytest.mark.parametrize(("arm", "batch", "has_term"), [("plain", 2, False), ("aug", 4, False), ("eqreg", 4, True)])
def test_arms_batch_size_and_term(arm: str, batch: int, has_term: bool) -> None:
    net, loader, opt = _setup()
    sizes = []
    net.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    trainer = build_trainer(net, loader, opt, nn.MSELoss(), max_epochs=1, arm=arm, settings=SETTINGS, progress=False)
    trainer.run()
    assert set(sizes) == {batch}
    assert ("eq_reg" in trainer.state.output[0]) is has_term


def _rotation_between(first: torch.Tensor, second: torch.Tensor) -> int | None:
    """The k of ``second == rot90(first, k)`` over the spatial dims, or None."""
    return next((k for k in range(4) if torch.equal(second, torch.rot90(first, k, dims=(-2, -1)))), None)


@pytest.mark.parametrize("arm", ["aug", "eqreg"])
def test_paired_arms_train_on_rotated_copies_of_image_and_label(arm: str) -> None:
    """The second half of every batch is the first half rotated by a drawn element, image and label alike."""
    net, loader, opt = _setup()
    inputs, labels = [], []
    net.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach().clone()))

    def loss(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        labels.append(label.detach().clone())
        return nn.functional.mse_loss(pred, label)

    trainer = build_trainer(net, loader, opt, loss, max_epochs=1, arm=arm, settings=SETTINGS, progress=False)
    trainer.run()
    first_images = [batch["image"] for batch in loader]
    assert len(inputs) == len(labels) == len(first_images) == 4
    drawn = []
    for x, y, original in zip(inputs, labels, first_images, strict=True):
        assert torch.equal(x[:2], original)  # the original half is untouched
        k = _rotation_between(x[:2], x[2:])
        assert k in SETTINGS.elements
        assert _rotation_between(y[:2], y[2:]) == k  # the label is rotated with its image
        drawn.append(k)
    assert len(set(drawn)) > 1  # drawn per step, not fixed


def test_unknown_arm() -> None:
    net, _, _ = _setup()
    with pytest.raises(ValueError, match="Unknown arm 'rot'"):
        build_arm("rot", net)


def test_interrupted_run_resumes_at_the_right_iteration(tmp_path) -> None:
    net, loader, opt = _setup()
    trainer = build_trainer(
        net, loader, opt, nn.MSELoss(), max_epochs=3, settings=SETTINGS, output_dir=tmp_path,
        checkpoint_interval=3, progress=False,
    )

    @trainer.on(Events.ITERATION_COMPLETED(once=7))
    def _crash(engine) -> None:
        raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    # A SIGKILL leaves no final checkpoint: drop it to resume from the last interval one (iteration 6).
    for final in (tmp_path / "checkpoints").glob("*final*"):
        final.unlink()
    assert "iteration=6" in latest_checkpoint(tmp_path / "checkpoints").name

    net2, loader2, opt2 = _setup(seed=1)
    steps = []
    resumed = build_trainer(
        net2, loader2, opt2, nn.MSELoss(), max_epochs=3, settings=SETTINGS, output_dir=tmp_path,
        checkpoint_interval=3, resume=True, progress=False,
    )
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: steps.append(e.state.iteration))
    resumed.run()
    assert steps[0] == 7 and resumed.state.iteration == 12 and len(steps) == 6
    assert (tmp_path / "checkpoints" / "checkpoint_final.pt").exists()
    assert list((tmp_path / "tensorboard").glob("events.*"))


def test_run_arms_is_reproducible_with_random_transforms() -> None:
    """Same seed, same data order and random crops: identical weights, run after run and arm after arm."""
    from monai.transforms import RandSpatialCropd

    from eqmar.engines import TaskSpec, run_arms

    data = [{"image": torch.rand(1, 48, 48), "label": torch.rand(1, 48, 48)} for _ in range(6)]
    from monai.data import Dataset

    loader = DataLoader(
        Dataset(data, transform=RandSpatialCropd(keys=["image", "label"], roi_size=(32, 32), random_size=False)),
        batch_size=2, shuffle=True,
    )
    task = TaskSpec(
        make_network=lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 16, 4)),
        make_optimizer=lambda net: (torch.optim.Adam(net.parameters(), 1e-3), None),
        loss_function=nn.MSELoss(), train_loader=loader, evaluate=lambda net: {}, max_epochs=2,
    )
    first = run_arms(task, ["plain", "aug"], SETTINGS, seed=5, progress=False)["aug"].network.state_dict()
    second = run_arms(task, ["aug"], SETTINGS, seed=5, progress=False)["aug"].network.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_strict_arm_trains_the_strict_network_and_reports_zero_equivariance_error(tmp_path) -> None:
    from eqmar.engines import TaskSpec, format_arm_table, format_equivariance_table, run_arms, write_results
    from eqmar.networks import StrictRestorationNet

    data = [{"image": torch.rand(1, 32, 32), "label": torch.rand(1, 32, 32)} for _ in range(4)]
    loader = DataLoader(data, batch_size=2)
    task = TaskSpec(
        make_network=lambda: BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 16, 4)),
        make_optimizer=lambda net: (torch.optim.Adam(net.parameters(), 1e-3), None),
        loss_function=nn.MSELoss(), train_loader=loader, evaluate=lambda net: {"mse": 0.5}, max_epochs=1,
        probe_loader=loader, make_strict_network=lambda: StrictRestorationNet(1, 1, fields=2, depth=3),
    )
    results = run_arms(task, ["plain", "strict"], SETTINGS, progress=False, output_dir=tmp_path)
    assert isinstance(results["strict"].network, StrictRestorationNet)
    assert results["strict"].iterations == 2  # plain batches: no rotated half
    strict_report, plain_report = results["strict"].equivariance, results["plain"].equivariance
    assert strict_report.layers and max(strict_report.layers.values()) < 1e-5 and strict_report.output < 1e-5
    assert plain_report.output > 1e-3
    table = format_arm_table({arm: r.metrics for arm, r in results.items()})
    assert "| strict | 0.5000 |" in table
    json_path, md_path = write_results(tmp_path, {"arms": list(results)}, [table, format_equivariance_table(results)])
    assert json_path.exists() and "| strict | 3 | 0.0000 | 0.0000 |" in md_path.read_text()
    assert (tmp_path / "strict" / "model.pt").exists()


def test_strict_arm_sees_the_data_order_of_the_other_arms() -> None:
    """A strict network initialises with other random draws; the loader must still shuffle alike."""
    from monai.data import Dataset

    from eqmar.engines import TaskSpec, run_arms
    from eqmar.networks import StrictRestorationNet

    data = [{"image": torch.rand(1, 32, 32), "label": torch.rand(1, 32, 32), "index": i} for i in range(8)]
    seen: dict[str, list[int]] = {}
    current: list[str] = []

    def prepare_batch(batch, device=None, non_blocking=False, **kwargs):
        seen.setdefault(current[-1], []).extend(int(i) for i in batch["index"])
        return batch["image"].to(device), batch["label"].to(device)

    def make_network() -> nn.Module:
        current.append("plain")
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(4, 4, 8, 8, 16, 4))

    def make_strict_network() -> nn.Module:
        current.append("strict")
        return StrictRestorationNet(1, 1, fields=2, depth=3)

    task = TaskSpec(
        make_network=make_network, make_strict_network=make_strict_network,
        make_optimizer=lambda net: (torch.optim.SGD(net.parameters(), 1e-3), None),
        loss_function=nn.MSELoss(), train_loader=DataLoader(Dataset(data), batch_size=2, shuffle=True),
        evaluate=lambda net: {}, max_epochs=3, prepare_batch=prepare_batch,
    )
    run_arms(task, ["strict", "plain"], SETTINGS, seed=3, progress=False)
    assert len(seen["plain"]) == 24 and seen["strict"] == seen["plain"]
    assert seen["plain"][:8] != list(range(8))  # shuffled, so the comparison means something


def test_strict_arm_needs_a_strict_network() -> None:
    from eqmar.engines import TaskSpec, run_arms

    task = TaskSpec(make_network=nn.Identity, make_optimizer=lambda n: (None, None), loss_function=nn.MSELoss(),
                    train_loader=[], evaluate=lambda net: {}, max_epochs=1)
    with pytest.raises(ValueError, match="make_strict_network"):
        run_arms(task, ["strict"], SETTINGS, progress=False)
