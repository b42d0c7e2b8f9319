"""Run the same task under several training arms with identical seeds and budgets.

A task supplies factories (network, optimizer/scheduler, loss), data loaders and an evaluation
function; :func:`run_arms` trains one network per arm with :func:`~eqmar.engines.build_trainer`,
evaluates it, measures its equivariance, saves its weights and collects everything in one
:class:`ArmResult` per arm. Besides the three arms of :mod:`eqmar.engines.arms`, the ``"strict"`` arm
trains the task's strictly equivariant network (``TaskSpec.make_strict_network``) on the plain batches:
the hard-constraint baseline. Recipes stay thin: they only describe the task.

Under ``torchrun`` or :func:`~eqmar.engines.distributed.launch` with several processes, every rank
calls :func:`run_arms` alike: training is data-parallel, every rank evaluates and returns the same
results, and rank 0 alone writes the files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqmar.engines.arms import EQRegSettings
from eqmar.engines.distributed import average_over_ranks, barrier, is_main_process, rank_device
from eqmar.engines.trainer import build_trainer
from eqmar.equivariance import EquivarianceReport, equivariance_report

__all__ = ["STRICT_ARM", "TaskSpec", "ArmResult", "run_arms"]

STRICT_ARM = "strict"

logger = logging.getLogger("eqmar.experiment")


@dataclass
class TaskSpec:
    """Everything :func:`run_arms` needs to know about a task.

    Attributes:
        make_network: ``() -> nn.Module``, called after seeding, once per arm.
        make_optimizer: ``(network) -> (optimizer, lr_scheduler or None)``.
        loss_function: task loss.
        train_loader: training loader (the same for every arm); its batch size is the global batch,
            split over the ranks in a distributed run.
        evaluate: ``(network) -> dict`` of test results for a trained network (in eval mode).
        max_epochs: training epochs.
        prepare_batch: the task's ``prepare_batch`` (applied after pairing).
        image_keys: dict-batch keys rotated together.
        probe_loader: held-out batches for the equivariance report (None: no report).
        probe_layers: layers measured by the report (default: the regularised layers).
        make_evaluator: ``(network) -> evaluator`` for validation during training (optional).
        val_interval: validation interval in epochs.
        save_network: ``(network, path)`` writing the trained weights (default: the state dict).
        make_strict_network: ``() -> nn.Module``, the strictly equivariant baseline of the ``"strict"``
            arm (e.g. :class:`~eqmar.networks.StrictRestorationNet`); its report probes its group convs.
    """

    make_network: Callable[[], nn.Module]
    make_optimizer: Callable[[nn.Module], tuple[torch.optim.Optimizer, Any]]
    loss_function: Callable
    train_loader: Any
    evaluate: Callable[[nn.Module], dict[str, Any]]
    max_epochs: int
    prepare_batch: Callable | None = None
    image_keys: Sequence[str] | None = None
    probe_loader: Any = None
    probe_layers: Any = None
    make_evaluator: Callable[[nn.Module], Any] | None = None
    val_interval: int = 1
    save_network: Callable[[nn.Module, Path], Any] | None = None
    make_strict_network: Callable[[], nn.Module] | None = None


@dataclass
class ArmResult:
    """Outcome of one arm."""

    arm: str
    metrics: dict[str, Any]
    equivariance: EquivarianceReport | None
    train_seconds: float
    iterations: int
    final_loss: float
    weights: Path | None
    validation: dict[str, float] = field(default_factory=dict)
    network: nn.Module = field(repr=False, default=None)  # type: ignore[assignment]


def run_arms(
    task: TaskSpec,
    arms: Sequence[str],
    settings: EQRegSettings,
    seed: int = 0,
    device: str | torch.device = "cpu",
    output_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_interval: int = 0,
    progress: bool = True,
) -> dict[str, ArmResult]:
    """Train, evaluate and measure one network per arm, each from the same seed.

    Args:
        task: the task description.
        arms: e.g. ``("plain", "aug", "eqreg", "strict")``.
        settings: rotation group and EQ-Reg settings.
        seed: seed for weights, data order and group-element draws (identical in every arm).
        device: training device (``cuda`` means this rank's GPU in a distributed run).
        output_dir: per-arm checkpoints, logs and ``<arm>/model.pt`` go to ``output_dir/<arm>`` (rank 0 writes).
        resume: continue each arm from its newest checkpoint.
        checkpoint_interval: checkpoint every this many iterations.
        progress: progress bars.

    Returns:
        One :class:`ArmResult` per arm, on every rank; ``final_loss`` is averaged over the ranks.
    """
    from monai.data.utils import set_rnd
    from monai.utils import set_determinism

    if STRICT_ARM in arms and task.make_strict_network is None:
        raise ValueError("The 'strict' arm needs TaskSpec.make_strict_network.")
    device = rank_device(device)
    data_order = _random_state_after_init(task, seed) if STRICT_ARM in arms else None
    results: dict[str, ArmResult] = {}
    for arm in arms:
        strict = arm == STRICT_ARM
        set_determinism(seed=seed)
        # MONAI random transforms own their RandomState, which set_determinism does not touch:
        # without this, every arm (and every run) would see different random crops.
        set_rnd(getattr(task.train_loader, "dataset", task.train_loader), seed)
        network = (task.make_strict_network() if strict else task.make_network()).to(device)
        if data_order is not None and strict:
            # The loader shuffles with the global generators, which the strict network's initialisation
            # advances differently: without this the strict arm would train on another data order.
            _set_random_state(data_order)
        optimizer, scheduler = task.make_optimizer(network)
        arm_dir = Path(output_dir) / arm if output_dir is not None else None
        evaluator = task.make_evaluator(network) if task.make_evaluator else None
        trainer = build_trainer(
            network, task.train_loader, optimizer, task.loss_function, task.max_epochs,
            arm="plain" if strict else arm, settings=settings,
            prepare_batch=task.prepare_batch, image_keys=task.image_keys, device=device, output_dir=arm_dir,
            evaluator=evaluator, val_interval=task.val_interval,
            lr_scheduler=scheduler, checkpoint_interval=checkpoint_interval, resume=resume, progress=progress,
            seed=seed,
        )
        started = time.perf_counter()
        trainer.run()
        seconds = time.perf_counter() - started
        set_determinism(seed=None)
        network.eval()
        metrics = task.evaluate(network)
        report = None
        if task.probe_loader is not None:
            layers = _probe_layers(task, settings, strict)
            report = equivariance_report(
                network, task.probe_loader, layers=layers, group=settings.group,
                image_keys=task.image_keys, prepare_batch=task.prepare_batch, device=device,
            )
        weights = _save_weights(task, network, arm_dir)
        output = trainer.state.output
        final_loss = float(output[0]["loss"]) if isinstance(output, list) and output else float("nan")
        final_loss = average_over_ranks(final_loss)
        validation = {k: float(v) for k, v in evaluator.state.metrics.items()} if evaluator is not None else {}
        results[arm] = ArmResult(
            arm, metrics, report, seconds, trainer.state.iteration, final_loss, weights, validation, network
        )
        if is_main_process():
            logger.info("%s: %d iterations in %.1f s, %s", arm, trainer.state.iteration, seconds, metrics)
    return results


def _random_state_after_init(task: TaskSpec, seed: int) -> tuple[Any, Any, Any]:
    """The global random state the CNN arms train from: seeded with ``seed``, advanced by ``task.make_network()``."""
    import random

    import numpy as np
    from monai.utils import set_determinism

    set_determinism(seed=seed)
    task.make_network()
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_random_state(state: tuple[Any, Any, Any]) -> None:
    import random

    import numpy as np

    torch_state, numpy_state, python_state = state
    torch.set_rng_state(torch_state)
    np.random.set_state(numpy_state)
    random.setstate(python_state)


def _save_weights(task: TaskSpec, network: nn.Module, arm_dir: Path | None) -> Path | None:
    """Write ``arm_dir/model.pt`` on rank 0; every rank returns its path once it exists."""
    if arm_dir is None:
        return None
    weights = arm_dir / "model.pt"
    if is_main_process():
        if task.save_network is not None:
            task.save_network(network, weights)
        else:
            from eqmar.utils import atomic_write

            atomic_write(weights, lambda tmp: torch.save(network.state_dict(), tmp))
    barrier()
    return weights


def _probe_layers(task: TaskSpec, settings: EQRegSettings, strict: bool) -> Any:
    """Layers the equivariance report measures: the group convs of a strict network, else the task's choice."""
    if strict:
        from eqmar.equivariance.gconv import GroupConv2d, GroupLiftingConv2d

        return (GroupLiftingConv2d, GroupConv2d)
    return task.probe_layers if task.probe_layers is not None else settings.layers
