"""The training settings every eqmar experiment shares, in one place.

Each task's config (MAR, deraining, inpainting, classification) holds a :class:`TrainingConfig` as
its ``training`` field, next to its own task settings. The command line of every recipe
(:mod:`eqmar.engines.cli`) builds its common flags from the fields of this class, so renaming a
setting is a change here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from eqmar.engines.arms import ARMS

__all__ = ["TrainingConfig", "TRAINING_FIELDS", "training_field", "with_overrides"]

_Config = TypeVar("_Config")


@dataclass
class TrainingConfig:
    """How an experiment trains its arms: where to, how long, with which optimiser and regulariser.

    Attributes:
        output_dir: where results, figures, per-arm weights and checkpoints go.
        arms: the arms to train, in table order (the task says which it knows).
        epochs: training epochs.
        iters_per_epoch: iterations per epoch (None: one pass over the training data).
        batch_size: batch size before the rotated half of ``aug``/``eqreg`` is added.
        patch_size: side of the square training patches (None: whole images).
        lr: Adam learning rate.
        milestones: epochs at which the learning rate is multiplied by ``lr_decay``.
        lr_decay: that factor.
        weight: EQ-Reg weight λ.
        group: rotation group of the ``aug``/``eqreg`` arms ("C4" as published, "C2", "D4", "C8").
        reduction: EQ-Reg residual: "norm" (the published Frobenius norm) or "mean" (RMS).
        seed: seed of weights, data order, crops and rotation draws (identical for every arm).
        device: "auto", "cpu", "cuda" or "cuda:N".
        threads: torch CPU threads during the run (None: torch's default).
        workers: data-loader worker processes.
        checkpoint_interval: checkpoint every this many iterations (0: at the end of each epoch).
        resume: continue each arm from its newest checkpoint.
        progress: progress bars.
    """

    output_dir: Path = Path("runs/experiment")
    arms: tuple[str, ...] = ARMS
    epochs: int = 1
    iters_per_epoch: int | None = None
    batch_size: int = 8
    patch_size: int | None = None
    lr: float = 1e-3
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.5
    weight: float = 1e-8
    group: str = "C4"
    reduction: str = "norm"
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0
    checkpoint_interval: int = 0
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        self.arms = tuple(self.arms)
        self.milestones = tuple(self.milestones)

    def validate(self) -> None:
        """Raise ``ValueError`` for a setting no run can use (sizes, counts, threads, the residual)."""
        for name in ("epochs", "iters_per_epoch", "batch_size", "patch_size", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}.")
        if not self.arms:
            raise ValueError("arms: no arm to train.")
        if self.reduction not in ("norm", "mean"):
            raise ValueError(f"reduction must be 'norm' or 'mean', got {self.reduction!r}.")


#: The field names of :class:`TrainingConfig`.
TRAINING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TrainingConfig))


def with_overrides(cfg: _Config, **overrides: Any) -> _Config:
    """A copy of a task config with ``overrides`` applied, training settings by their own names.

    ``with_overrides(cfg, epochs=2, backbone="unet")`` sets ``cfg.training.epochs`` and
    ``cfg.backbone``; ``training=TrainingConfig(...)`` replaces the whole training block.

    Raises:
        TypeError: a name that is neither a field of the task config nor of :class:`TrainingConfig`.
    """
    if not is_dataclass(cfg) or not isinstance(getattr(cfg, "training", None), TrainingConfig):
        raise TypeError(f"{type(cfg).__name__} holds no TrainingConfig as its 'training' field")
    training = {k: overrides.pop(k) for k in list(overrides) if k in TRAINING_FIELDS}
    base = overrides.pop("training", cfg.training)
    return replace(cfg, training=replace(base, **training), **overrides)


def training_field(**defaults: Any) -> Any:
    """A dataclass field holding a :class:`TrainingConfig` with a task's own defaults."""
    return field(default_factory=lambda: TrainingConfig(**defaults))
