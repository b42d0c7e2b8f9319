"""A MONAI ``SupervisedTrainer`` wired for eqmar recipes: arms, logging, checkpoints, resume.

Every recipe (MAR, deraining, inpainting, classification) builds its trainer here, so they share
one behaviour: a progress bar, stats and TensorBoard logging of the loss and the EQ-Reg term,
checkpoints every ``checkpoint_interval`` iterations and at the end (and when an exception stops
the run), and ``resume=True`` continuing from the newest checkpoint at the right iteration.

In a distributed run (see :mod:`eqmar.engines.distributed`) the same call trains data-parallel: the
network is wrapped in ``DistributedDataParallel``, the loader is sharded (its batch size is the global
batch), and only rank 0 writes checkpoints, logs and progress; every rank resumes from the same file.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqmar.engines.arms import EQRegSettings, build_arm
from eqmar.engines.distributed import is_main_process, rank_device, shard_loader, wrap_network
from eqmar.equivariance import unwrap_network

__all__ = ["build_trainer", "latest_checkpoint", "loss_terms", "CHECKPOINT_NETWORK_KEY"]

_CHECKPOINT_PREFIX = "checkpoint"
#: Key of the network's state dict in the checkpoints :func:`build_trainer` writes (next to
#: "optimizer", "trainer", "lr_scheduler" and the arm's "pairing" state).
CHECKPOINT_NETWORK_KEY = "network"


def loss_terms(output: Any) -> dict[str, float]:
    """The loss and (when present) the EQ-Reg term from a trainer's (decollated) output."""
    first = output[0] if isinstance(output, (list, tuple)) else output
    return {k: float(first[k]) for k in ("loss", "eq_reg") if k in first}


def latest_checkpoint(directory: str | Path) -> Path | None:
    """Most recently written complete checkpoint of :func:`build_trainer` in ``directory`` (by file time), or None.

    MONAI's ``CheckpointSaver`` writes in place, so a run killed during a save leaves a truncated newest
    file; such files (not a complete zip archive, which ``torch.save`` writes) are skipped with a warning.
    """
    directory = Path(directory)
    found = sorted(directory.glob(f"{_CHECKPOINT_PREFIX}*.pt"), key=lambda p: (p.stat().st_mtime, p.name))
    for path in reversed(found):
        if zipfile.is_zipfile(path):
            return path
        logging.getLogger("eqmar.train").warning("skipping incomplete checkpoint %s (interrupted while saving?)", path)
    return None


def build_trainer(
    network: nn.Module,
    train_loader: Any,
    optimizer: torch.optim.Optimizer,
    loss_function: Callable,
    max_epochs: int,
    arm: str = "eqreg",
    settings: EQRegSettings | None = None,
    prepare_batch: Callable | None = None,
    image_keys: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    output_dir: str | Path | None = None,
    evaluator: Any = None,
    val_interval: int = 1,
    lr_scheduler: Any = None,
    checkpoint_interval: int = 0,
    resume: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
    seed: int = 0,
    amp: bool = False,
    extra_handlers: Sequence[Any] = (),
) -> Any:
    """Build a ``SupervisedTrainer`` for one training arm.

    Args:
        network: the network (wrapped in ``DistributedDataParallel`` here in a distributed run).
        train_loader: training data loader; in a distributed run its batch size is the global batch,
            split over the ranks (see :func:`~eqmar.engines.distributed.shard_loader`).
        optimizer: optimizer.
        loss_function: task loss ``loss(pred, label)``.
        max_epochs: epochs to train.
        arm: "plain", "aug" or "eqreg" (see :mod:`eqmar.engines.arms`).
        settings: rotation and EQ-Reg settings.
        prepare_batch: the task's ``prepare_batch`` (applied after pairing).
        image_keys: dict-batch keys rotated together.
        device: training device (``cuda`` means this rank's GPU in a distributed run).
        output_dir: where checkpoints and TensorBoard logs go (none written when None; rank 0 writes).
        evaluator: a MONAI evaluator run every ``val_interval`` epochs.
        val_interval: validation interval in epochs.
        lr_scheduler: a torch LR scheduler stepped every epoch.
        checkpoint_interval: also checkpoint every this many iterations (0: only at the end).
        resume: continue from the newest checkpoint in ``output_dir/checkpoints`` if there is one.
        progress: show a progress bar.
        tensorboard: write TensorBoard logs to ``output_dir/tensorboard``.
        seed: seed of the group-element draws (the same on every rank) and of the sharded data order.
        amp: automatic mixed precision (CUDA).
        extra_handlers: more handlers to attach.

    Returns:
        The trainer; ``trainer.eqmar_arm`` holds the :class:`~eqmar.engines.arms.ArmComponents`.
    """
    from monai.engines import SupervisedTrainer
    from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler, StatsHandler, ValidationHandler

    device = rank_device(device)
    # Hooks, checkpoints and evaluation use the bare module; only the trainer's forward goes through DDP.
    module = unwrap_network(network)
    main = is_main_process()
    components = build_arm(arm, module, settings, prepare_batch, image_keys, seed)
    handlers: list[Any] = list(components.handlers)
    if lr_scheduler is not None:
        handlers.append(LrScheduleHandler(lr_scheduler=lr_scheduler, print_lr=False))
    if evaluator is not None:
        # Every rank validates (identical weights): metrics that all-reduce would wait forever otherwise.
        handlers.append(ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True))
    if main:
        handlers.append(StatsHandler(name="eqmar.train", output_transform=loss_terms, iteration_log=False))
    if output_dir is not None and tensorboard and main:
        from monai.handlers import TensorBoardStatsHandler

        from eqmar.utils import require_extra

        require_extra("build_trainer(tensorboard=True)", "tensorboard")

        handlers.append(
            TensorBoardStatsHandler(log_dir=str(Path(output_dir) / "tensorboard"), output_transform=loss_terms)
        )
    handlers.extend(extra_handlers)

    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=shard_loader(train_loader, seed),
        network=wrap_network(network, device),
        optimizer=optimizer,
        loss_function=loss_function,
        prepare_batch=components.prepare_batch,
        train_handlers=handlers,
        amp=amp,
    )
    trainer.eqmar_arm = components

    if output_dir is not None:
        ckpt_dir = Path(output_dir) / "checkpoints"
        state = {
            CHECKPOINT_NETWORK_KEY: module, "optimizer": optimizer, "trainer": trainer, **components.checkpoint_state
        }
        if lr_scheduler is not None:
            state["lr_scheduler"] = lr_scheduler
        previous = latest_checkpoint(ckpt_dir) if resume else None
        if previous is not None:
            logging.getLogger("eqmar.train").info("resuming from %s", previous)
            CheckpointLoader(load_path=str(previous), load_dict=state, strict=True).attach(trainer)
        if main:
            CheckpointSaver(
                save_dir=str(ckpt_dir),
                save_dict=state,
                file_prefix=_CHECKPOINT_PREFIX,
                save_final=True,
                final_filename=f"{_CHECKPOINT_PREFIX}_final.pt",
                epoch_level=checkpoint_interval <= 0,
                save_interval=checkpoint_interval if checkpoint_interval > 0 else 1,
                n_saved=2,
            ).attach(trainer)

    if progress and main:
        from ignite.handlers import ProgressBar

        ProgressBar(persist=False, desc=f"{arm} ").attach(trainer, output_transform=loss_terms)
    return trainer
