"""EQ-Reg's hook lifecycle: hooks only during an armed step; saving, pickling and copying the network;
EMA/teacher copies never add to the term; the handler's state round-trips."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from eqmar.equivariance import EQReg


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 1, 3, padding=1))


def _layers(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.out_channels == 8


def _forward_hooks(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


def test_hooks_exist_only_while_a_step_is_armed() -> None:
    net = _net()
    eqreg = EQReg(net, layers=_layers, weight=1.0)
    assert _forward_hooks(net) == 0 and not eqreg.hooks_registered
    x = eqreg.pair(torch.rand(2, 1, 16, 16), 1)
    assert _forward_hooks(net) == 2
    net(x)
    assert float(eqreg.pop_term()) > 0
    assert _forward_hooks(net) == 0
    eqreg.pair(torch.rand(2, 1, 16, 16), 1)
    with pytest.raises(RuntimeError, match="boom"):
        with eqreg:  # leaving the context on an error takes the hooks off too
            raise RuntimeError("boom")
    assert _forward_hooks(net) == 0


def test_save_pickle_and_deepcopy_work_before_during_and_after_a_step(tmp_path) -> None:
    net = _net()
    eqreg = EQReg(net, layers=_layers, weight=1.0)
    x = torch.rand(2, 1, 16, 16)
    for stage in ("before", "armed", "after"):
        if stage == "armed":
            net(eqreg.pair(x, 1))
        elif stage == "after":
            eqreg.pop_term()
        torch.save(net, tmp_path / f"{stage}.pt")
        loaded = torch.load(tmp_path / f"{stage}.pt", weights_only=False)
        torch.testing.assert_close(loaded.eval()(x), net.eval()(x))
        net.train()
        pickle.loads(pickle.dumps(net))
        buffer = io.BytesIO()
        torch.save(copy.deepcopy(net), buffer)


def test_a_deep_copy_run_during_an_armed_step_adds_nothing() -> None:
    net = _net()
    eqreg = EQReg(net, layers=_layers, weight=1.0)
    x = torch.rand(2, 1, 16, 16)
    net(eqreg.pair(x, 1))
    alone = float(eqreg.pop_term())
    paired = eqreg.pair(x, 1)
    teacher = copy.deepcopy(net)  # copied while armed: it carries the (now inert) hooks
    net(paired)
    teacher(paired)
    assert float(eqreg.pop_term()) == pytest.approx(alone)
    teacher(paired)  # and outside any step it does nothing either
    assert _forward_hooks(net) == 0


def test_trainer_with_an_ema_model_updated_and_run_every_step_counts_the_term_once() -> None:
    """An EMA teacher (torch.optim.swa_utils.AveragedModel) run on the paired batch inside each step."""
    data = [{"image": torch.rand(1, 16, 16), "label": torch.rand(1, 16, 16)} for _ in range(8)]

    def run(with_ema: bool) -> list[float]:
        net = _net()
        eqreg = EQReg(net, layers=_layers, weight=1e-3, seed=3)
        trainer = SupervisedTrainer(
            device=torch.device("cpu"), max_epochs=2, train_data_loader=DataLoader(data, batch_size=2),
            network=net, optimizer=torch.optim.Adam(net.parameters(), 1e-3), loss_function=nn.MSELoss(),
            prepare_batch=eqreg.prepare_batch, train_handlers=[eqreg],
        )
        terms: list[float] = []
        if with_ema:
            ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9))

            @trainer.on(IterationEvents.FORWARD_COMPLETED)
            def teacher_forward(engine) -> None:  # the teacher sees the armed step's paired batch
                ema.train()
                ema(engine.state.output["image"])

            @trainer.on(Events.ITERATION_COMPLETED)
            def update(engine) -> None:
                ema.update_parameters(net)

        @trainer.on(Events.ITERATION_COMPLETED)
        def record(engine) -> None:
            terms.append(float(engine.state.output[0]["eq_reg"]))  # MONAI decollates the output per sample

        trainer.run()
        return terms

    alone, with_teacher = run(False), run(True)
    assert len(alone) == 8 and any(t > 0 for t in alone)
    assert with_teacher == pytest.approx(alone, rel=1e-6)


def test_state_dict_round_trips_the_draws() -> None:
    first = EQReg(_net(), layers=_layers, seed=5)
    [first.draw_element() for _ in range(3)]
    state = first.state_dict()
    second = EQReg(_net(), layers=_layers, seed=0)
    second.load_state_dict(state)
    assert [first.draw_element() for _ in range(10)] == [second.draw_element() for _ in range(10)]
    assert state["weight"] == first.weight


def test_default_layers_skip_convs_that_do_not_fit_the_group_with_one_warning() -> None:
    from monai.networks.nets import BasicUNet

    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(8, 8, 16, 16, 32, 8))
    with pytest.warns(UserWarning, match=r"1 conv\(s\) left out.*final_conv \(1 channels\)") as caught:
        eqreg = EQReg(net, group="C4")
    assert len(caught) == 1 and "final_conv" not in eqreg.layers and len(eqreg.layers) == 18
    with pytest.raises(ValueError, match="no nn.Conv2d of Conv2d has output channels divisible"):
        EQReg(nn.Conv2d(1, 3, 3), group="C4")
    # an explicit choice is never trimmed silently
    with pytest.raises(ValueError, match="these layers are not: final_conv"):
        EQReg(net, layers=nn.Conv2d, group="C4")
    with pytest.raises(ValueError, match="no layer named 'nothing'"):
        EQReg(net, layers=["nothing"], group="C4")


def test_public_face_and_the_docstring_example() -> None:
    import doctest
    import subprocess
    import sys

    import eqmar
    import eqmar.equivariance.eqreg as module
    from eqmar import C4, EQReg, convs_divisible_by, equivariance_report, get_group

    assert EQReg is module.EQReg and isinstance(get_group("C4"), C4) and callable(equivariance_report)
    assert callable(convs_divisible_by) and "EQReg" in dir(eqmar)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        eqmar.Nope  # noqa: B018
    result = doctest.testmod(module, verbose=False)
    assert result.attempted >= 8 and result.failed == 0
    # importing eqmar alone loads no sub-package (and no torch)
    code = "import sys, eqmar; print(any(m.startswith(('eqmar.', 'torch')) for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.slow
def test_a_torch_compiled_network_gets_the_eager_term_and_gradients() -> None:
    """torch.compile on CPU (inductor): the term and the gradients equal the eager network's."""

    def step(compiled: bool) -> tuple[float, torch.Tensor]:
        net = _net()
        run = torch.compile(net) if compiled else net
        eqreg = EQReg(run, weight=1.0)
        x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        terms = []
        for _ in range(2):  # the second step reuses the compiled graph with freshly registered hooks
            net.zero_grad()
            out = run(eqreg.pair(x, 1))
            term = eqreg.pop_term()
            (out.square().mean() + term).backward()
            terms.append(float(term))
        assert terms[0] == pytest.approx(terms[1])
        return terms[0], net[0].weight.grad.clone()

    eager_term, eager_grad = step(False)
    compiled_term, compiled_grad = step(True)
    assert compiled_term == pytest.approx(eager_term, rel=1e-5)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)
