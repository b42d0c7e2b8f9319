"""The rotated-digits experiment: train upright, test rotated, one network per arm.

Arms (identical seeds, data order and budget in epochs):

- ``plain``, ``aug``, ``eqreg``: :class:`~eqmar.networks.classifier.RotationClassifierCNN` on plain
  batches, on the paired batch ``[x ; g · x]`` (rot90 augmentation), and on the paired batch with
  EQ-Reg on every conv (:mod:`eqmar.engines.arms`). The class labels, a ``(B,)`` tensor, are
  repeated for the rotated half, not rotated (only the ``"image"`` key is): a rotated digit keeps
  its class.
- ``strict-p4``, ``strict-p4m``: :class:`~eqmar.networks.StrictClassifier` over C4 / D4 with about the
  CNN's parameter count (:func:`~eqmar.networks.match_fields`) and a per-field BatchNorm, trained on
  plain batches; invariant to the right-angle rotations (and, for P4M, flips) by construction. Their
  files go to ``output_dir/<arm>/strict`` (``run_arms`` names its one strict arm "strict").

``recipes/classify_rotated_digits.py`` is the command-line front end to
:func:`run_classification_experiment`.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqmar.apps.classify.data import ClassificationData, load_classification_data, make_loader
from eqmar.apps.classify.evaluation import evaluate_rotations
from eqmar.apps.classify.figures import plot_accuracy_curves
from eqmar.engines import (
    ARMS,
    STRICT_ARM,
    ArmResult,
    EQRegSettings,
    TaskSpec,
    arm_summary,
    config_as_json,
    format_arm_table,
    format_equivariance_table,
    merge_earlier_arms,
    note_earlier_arms,
    run_arms,
    write_results,
)
from eqmar.engines.config import TrainingConfig, training_field, with_overrides
from eqmar.networks.classifier import RotationClassifierCNN, strict_classifier
from eqmar.networks.group_equivariant import count_parameters
from eqmar.utils import resolve_torch_device, torch_threads

__all__ = [
    "STRICT_ARMS",
    "ALL_ARMS",
    "TABLE_COLUMNS",
    "ClassificationConfig",
    "build_task",
    "run_classification_experiment",
    "arm_row",
]

logger = logging.getLogger("eqmar.classify")

#: Strict baselines: arm name -> group of its :class:`~eqmar.networks.StrictClassifier`.
STRICT_ARMS = {"strict-p4": "C4", "strict-p4m": "D4"}
ALL_ARMS = (*ARMS, *STRICT_ARMS)

#: Table column -> (metric key, scale, decimals).
TABLE_COLUMNS = {
    "upright acc %": ("upright_acc", 100.0, 2),
    "rot90 acc %": ("rot90_acc", 100.0, 2),
    "random-angle acc %": ("random_acc", 100.0, 2),
    "rot90-consistent %": ("rot90_consistency", 100.0, 2),
    "params": ("params", 1.0, 0),
    "train s": ("train_seconds", 1.0, 1),
}


@dataclass
class ClassificationConfig:
    """Settings of the rotated-classification experiment; see ``recipes/classify_rotated_digits.py --help``.

    Attributes:
        data: image-folder root (class sub-folders), or None for scikit-learn's digits.
        image_size: canvas side (divisible by ``2 ** (len(channels) - 1)`` so pooling commutes with rot90).
        digit_size: side of the box the digit is resized into (default: MNIST's 20/28 of the canvas).
        test_fraction: test share (when the data has no given test split).
        val_fraction: validation share of the training split for ``evaluate_on="val"``.
        evaluate_on: "test", or "val" to choose settings on a validation split without the test set.
        data_seed: seed of the splits and of the random test angles (fixed across training seeds).
        channels: CNN stage widths (divisible by the group order).
        head: "orientation-pool" or "linear" (see :mod:`eqmar.networks.classifier`).
        norm: batch normalisation after every conv (per channel in the CNN, per field in the strict
            networks).
        angle_step: spacing of the accuracy-vs-angle curve (degrees).
        random_draws: random test angles per image.
        max_train: use only the first N training images (quick runs, tests).
        max_eval: score only the first N held-out images.
        training: the training settings (:class:`~eqmar.engines.TrainingConfig`; arms from
            :data:`ALL_ARMS`, the strict ones included); epochs are passes
            over the training split with Adam under cosine decay to 0; ``reduction`` "mean" (RMS
            residual per layer, λ independent of layer size) by default; one CPU thread, since small
            convolutions gain little from more and on a shared, busy CPU extra threads spin-wait.
    """

    data: Path | None = None
    training: TrainingConfig = training_field(
        output_dir=Path("runs/classify_rotated_digits"), arms=("plain", "aug", "eqreg", "strict-p4", "strict-p4m"),
        epochs=8, batch_size=32, lr=3e-3, group="C4", weight=0.1, reduction="mean", threads=1,
    )
    image_size: int = 28
    digit_size: int | None = None
    test_fraction: float = 0.25
    val_fraction: float = 0.2
    evaluate_on: str = "test"
    data_seed: int = 0
    channels: tuple[int, ...] = (8, 16, 32)
    head: str = "orientation-pool"
    norm: bool = True
    angle_step: float = 15.0
    random_draws: int = 4
    max_train: int | None = None
    max_eval: int | None = None

    @classmethod
    def published(cls, data: str | Path, **overrides: Any) -> ClassificationConfig:
        """The experiment on an image-folder data set (``DIR/<class>/*`` or ``DIR/train|test/<class>/*``)."""
        return with_overrides(cls(data=Path(data)), **overrides)

    @classmethod
    def demo_default(cls, **overrides: Any) -> ClassificationConfig:
        """The experiment on scikit-learn's bundled digits."""
        return with_overrides(cls(), **overrides)

    def validate(self) -> None:
        """Raise ``ValueError`` for unknown arms or sizes that break rot90 alignment of the pooling."""
        self.training.validate()
        unknown = [a for a in self.training.arms if a not in ALL_ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; choose from {ALL_ARMS}.")
        step = 2 ** (len(self.channels) - 1)
        if self.image_size % step:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by {step} so that every 2x2 pooling step "
                "sees an even size (otherwise pooling windows do not map onto each other under rot90)."
            )


def _make_optimizer(cfg: ClassificationConfig) -> Any:
    def make(network: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        optimizer = torch.optim.Adam(network.parameters(), lr=cfg.training.lr)
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.training.epochs)

    return make


def build_task(cfg: ClassificationConfig, data: ClassificationData) -> tuple[TaskSpec, EQRegSettings]:
    """The :class:`~eqmar.engines.TaskSpec` of the CNN arms and the EQ-Reg settings.

    The strict arms reuse the task with ``make_strict_network`` set (see
    :func:`run_classification_experiment`).
    """
    num_classes = len(data.class_names)

    def make_network() -> nn.Module:
        return RotationClassifierCNN(1, num_classes, cfg.channels, cfg.training.group, cfg.head, cfg.norm)

    def evaluate(network: nn.Module) -> dict[str, Any]:
        scores = evaluate_rotations(
            network, data.evaluation.images, data.evaluation.labels, cfg.angle_step, cfg.random_draws, cfg.data_seed
        )
        return {**scores, "params": count_parameters(network)}

    probe = data.evaluation.subset(range(min(64, len(data.evaluation))))
    task = TaskSpec(
        make_network=make_network,
        make_optimizer=_make_optimizer(cfg),
        loss_function=nn.CrossEntropyLoss(),
        train_loader=make_loader(
            data.train, cfg.training.batch_size, shuffle=True, drop_last=len(data.train) > cfg.training.batch_size,
            num_workers=cfg.training.workers,
        ),
        evaluate=evaluate,
        max_epochs=cfg.training.epochs,
        # Only the image rotates; the (B,) class labels are repeated for the rotated half.
        image_keys=("image",),
        probe_loader=[next(iter(make_loader(probe, len(probe))))],
    )
    settings = EQRegSettings(
        weight=cfg.training.weight, group=cfg.training.group, layers=nn.Conv2d,
        reduction=cfg.training.reduction,  # type: ignore[arg-type]
    )
    return task, settings


def _run_strict_arm(
    name: str, cfg: ClassificationConfig, task: TaskSpec, settings: EQRegSettings, num_classes: int,
    device: torch.device,
) -> ArmResult:
    """Train one strict baseline; its files go to ``output_dir/<name>/strict``."""
    reference = task.make_network()
    group = STRICT_ARMS[name]
    strict_task = replace(
        task, make_strict_network=lambda: strict_classifier(reference, cfg.channels, group, 1, num_classes, cfg.norm)
    )
    result = run_arms(
        strict_task, [STRICT_ARM], settings, seed=cfg.training.seed, device=device,
        output_dir=Path(cfg.training.output_dir) / name, resume=cfg.training.resume,
        checkpoint_interval=cfg.training.checkpoint_interval, progress=cfg.training.progress,
    )[STRICT_ARM]
    result.arm = name
    return result


def arm_row(result: ArmResult | Mapping[str, Any]) -> dict[str, float]:
    """One table row: accuracies in %, parameter count and training time.

    Args:
        result: an arm's result, or its JSON summary (:func:`~eqmar.engines.arm_summary`, e.g. an
            earlier run's entry in ``results.json``).
    """
    if isinstance(result, ArmResult):
        values = {**result.metrics, "train_seconds": result.train_seconds}
    else:
        values = {**result["metrics"], "train_seconds": result["train_seconds"]}
    return {column: values[key] * scale for column, (key, scale, _) in TABLE_COLUMNS.items()}


def _train_arms(cfg: ClassificationConfig, data: ClassificationData, device: torch.device) -> dict[str, ArmResult]:
    """Train and score every configured arm, in the configured order."""
    task, settings = build_task(cfg, data)
    cnn_arms = [a for a in cfg.training.arms if a in ARMS]
    results: dict[str, ArmResult] = {}
    if cnn_arms:
        results.update(run_arms(
            task, cnn_arms, settings, seed=cfg.training.seed, device=device, output_dir=cfg.training.output_dir,
            resume=cfg.training.resume, checkpoint_interval=cfg.training.checkpoint_interval,
            progress=cfg.training.progress,
        ))
    for name in (a for a in cfg.training.arms if a in STRICT_ARMS):
        results[name] = _run_strict_arm(name, cfg, task, settings, len(data.class_names), device)
    return {arm: results[arm] for arm in cfg.training.arms}


def _write_outputs(
    cfg: ClassificationConfig, data: ClassificationData, results: dict[str, ArmResult], device: torch.device,
    seconds: float,
) -> dict[str, Any]:
    """Tables, ``results.json`` and ``results.md``, then the figures; returns the JSON payload.

    The numbers are written before the figures are drawn, so a plotting failure cannot lose them.
    Arms of an earlier run with the same settings into ``cfg.training.output_dir`` that this run does not
    retrain stay in the results and tables (:func:`~eqmar.engines.merge_earlier_arms`); the figures
    show this run's arms only.
    """
    out = Path(cfg.training.output_dir)
    config = config_as_json(cfg)
    arms = merge_earlier_arms(
        out, config, {arm: arm_summary(r) for arm, r in results.items()}, order=ALL_ARMS, check=arm_row
    )
    digits = {column: places for column, (_, _, places) in TABLE_COLUMNS.items()}
    table = format_arm_table({arm: arm_row(s) for arm, s in arms.items()}, digits=digits, first_header="arm")
    table = note_earlier_arms(table, arms)
    equivariance = format_equivariance_table({arm: s.get("equivariance") for arm, s in arms.items()})
    payload = {
        "config": config,
        "data": {
            "source": str(cfg.data) if cfg.data is not None else "sklearn.datasets.load_digits",
            "split": data.split,
            "train": len(data.train),
            "evaluation": len(data.evaluation),
            "classes": data.class_names,
            "image_size": cfg.image_size,
        },
        "device": str(device),
        "machine": {
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()
        },
        "arms": arms,
        "table": table,
        "equivariance_table": equivariance,
        "wall_seconds": round(seconds, 1),
    }
    write_results(out, payload, [table, equivariance])
    plot_accuracy_curves(
        {arm: r.metrics["curve"] for arm, r in results.items()}, out / "accuracy_vs_angle.png",
        title=f"Trained upright, tested rotated ({data.split} split, {len(data.evaluation)} images, "
        f"seed {cfg.training.seed})",
    )
    # Strict networks are left out of this plot: their errors are zero, which a log axis cannot show.
    reports = {arm: r.equivariance for arm, r in results.items() if arm in ARMS and r.equivariance is not None}
    if reports:
        from eqmar.equivariance import plot_equivariance_report

        plot_equivariance_report(
            reports, out / "equivariance.png", title=f"CNN arms: equivariance error ({cfg.training.group})"
        )
    return payload


def run_classification_experiment(cfg: ClassificationConfig) -> dict[str, Any]:
    """Train and score every configured arm; write ``results.json``, ``results.md`` and the figures.

    Returns:
        The ``results.json`` payload (config, data, per-arm summaries with the accuracy curves, tables).
    """
    cfg.validate()
    started = time.perf_counter()
    with torch_threads(cfg.training.threads):
        device = resolve_torch_device(cfg.training.device)
        data = load_classification_data(
            cfg.data, cfg.image_size, cfg.digit_size, cfg.test_fraction, cfg.val_fraction, cfg.evaluate_on,
            cfg.data_seed, cfg.max_train, cfg.max_eval,
        )
        results = _train_arms(cfg, data, device)
        payload = _write_outputs(cfg, data, results, device, time.perf_counter() - started)
    logger.info("classification experiment finished in %.1f s", payload["wall_seconds"])
    return payload
