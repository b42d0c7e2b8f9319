"""The restoration experiment shared by inpainting and deraining: four arms, one table, the same files.

A task describes itself with a :class:`RestorationExperimentConfig` — network factories, clean (or
paired) train/test items, a degradation transform, loss and metric options — and
:func:`run_restoration_experiment` does the rest:

1. training data: ``load`` → random ``patch_size`` crop of ``"image"``/``"label"`` → ``degradation``
   (fresh randomness every draw), ``batch_size × iters_per_epoch`` draws per epoch;
2. test data: ``load`` → centred square crop (sides a multiple of 16) → ``degradation`` drawn once
   from ``test_seed``, so every arm and every run sees the same degraded test images;
3. :func:`~eqmar.engines.run_arms` over plain / aug / eqreg / strict with identical seeds;
4. PSNR/SSIM (:mod:`eqmar.apps.restoration.metrics`, through a MONAI evaluator) of the degraded
   input and of every arm, per image and averaged;
5. ``results.json``, ``results.md`` (the arm table and the equivariance table, with the arms an
   earlier run with the same settings left there), then ``examples.png`` (input, each arm of this
   run, ground truth) and ``equivariance.png`` in ``output_dir``.

In a data-parallel run (``--nproc``/``torchrun``) every rank runs this alike and returns the same
results; rank 0 alone writes the files.
"""

from __future__ import annotations

import copy
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqmar.apps.restoration.metrics import RestorationPSNR, RestorationSSIM, restoration_psnr, restoration_ssim
from eqmar.apps.restoration.natural_images import square_crop_size
from eqmar.engines import ARMS, STRICT_ARM, EQRegSettings, TaskSpec, TrainingConfig, config_as_json, run_arms
from eqmar.engines.config import training_field
from eqmar.engines.distributed import is_main_process
from eqmar.utils import resolve_torch_device, torch_threads

__all__ = [
    "RestorationExperimentConfig",
    "run_restoration_experiment",
    "training_loader",
    "degraded_test_items",
    "evaluate_restoration",
    "strict_label",
]

logger = logging.getLogger("eqmar.restoration")

_IMAGE_KEYS = ("image", "label")
_STRICT_NAMES = {"C4": "P4", "D4": "P4M", "C2": "P2", "C8": "P8"}


@dataclass
class RestorationExperimentConfig:
    """Everything :func:`run_restoration_experiment` needs.

    Attributes:
        task: a title for tables and figures (e.g. "inpainting (30 % missing, Poisson γ = 0.05)").
        make_network: ``() -> nn.Module`` mapping the network input ``"image"`` to the restored image.
        train_items: dicts with the clean ``"label"`` (``(C, H, W)`` in [0, 1], or whatever ``load``
            turns into one), optional ``"image"`` (paired data) and ``"name"``.
        test_items: the same for testing.
        degradation: MONAI dict transform writing the network input ``"image"`` from ``"label"``
            (None for paired data); random transforms are re-seeded per arm (training) and from
            ``test_seed`` (test set).
        make_strict_network: ``() -> nn.Module``, the strictly equivariant baseline of the "strict" arm.
        strict_group: the strict network's group, for its table name (default ``group``).
        load: deterministic dict transform applied first (e.g. ``LoadImaged`` for file paths).
        loss_function: training loss ``loss(pred, label)``.
        image_channels: the degraded image is the first this-many channels of ``"image"`` (None: all;
            e.g. 3 when a mask channel is appended); used for the "degraded input" row and figures.
        baselines: untrained restorers scored as extra table rows after "degraded input", e.g.
            ``{"masked 3×3 average": MaskedAverage()}`` (name → module mapping ``"image"`` to an image).
        y_channel: score PSNR/SSIM on the BT.601 Y channel (deraining convention).
        quantize: score 8-bit quantised images.
        test_seed: seed of the test-set degradation.
        layers: regularised layers (default: every conv whose width is divisible by the group order).
        test_size: cap on the side of the square test crops (None: the largest square).
        size_multiple: test-crop sides are multiples of this (16 for a 4-level U-Net).
        square_test_crops: centre-crop test images to squares (False: score whole images, as
            published benchmarks such as Rain100L do; needs a network that takes any size).
        probe_size: side of the centre crops of the test images used for the equivariance report.
        probe_images: how many test images the equivariance report uses (0: no report).
        examples: test images shown in ``examples.png``.
        example_crop: side of the centre crop shown in ``examples.png`` (None: whole image).
        meta: task settings recorded in ``results.json`` (degradation parameters, data source...).
        training: the training settings (:class:`~eqmar.engines.TrainingConfig`; arms from plain / aug
            / eqreg / strict, ``patch_size`` a multiple of ``size_multiple``); the same seed drives
            weights, data order, crops, degradations and rotations, identically for every arm.
    """

    task: str
    make_network: Callable[[], nn.Module]
    train_items: Sequence[Mapping[str, Any]]
    test_items: Sequence[Mapping[str, Any]]
    degradation: Callable | None = None
    make_strict_network: Callable[[], nn.Module] | None = None
    strict_group: str | None = None
    load: Callable | None = None
    loss_function: Callable = field(default_factory=nn.L1Loss)
    image_channels: int | None = None
    baselines: Mapping[str, nn.Module] = field(default_factory=dict)
    y_channel: bool = False
    quantize: bool = False
    training: TrainingConfig = training_field(
        output_dir=Path("runs/restoration"), arms=(*ARMS, STRICT_ARM), epochs=5, iters_per_epoch=30, batch_size=8,
        patch_size=48, lr=1e-3, weight=1e-6,
    )
    test_seed: int = 0
    layers: Any = None
    test_size: int | None = None
    size_multiple: int = 16
    square_test_crops: bool = True
    probe_size: int = 128
    probe_images: int = 2
    examples: int = 2
    example_crop: int | None = 160
    meta: dict[str, Any] = field(default_factory=dict)


def strict_label(group: str) -> str:
    """Table name of the strict arm, e.g. "strict (P4)" for C4."""
    return f"strict ({_STRICT_NAMES.get(group, group)})"


def _compose(*transforms: Callable | None) -> Any:
    from monai.transforms import Compose

    return Compose([t for t in transforms if t is not None])


def _check_patch_size(items: Sequence[Mapping[str, Any]], patch_size: int) -> None:
    """Fail early, naming the image, when an in-memory training image is smaller than a patch."""
    for index, item in enumerate(items):
        label = item.get("label")
        if isinstance(label, torch.Tensor) and min(label.shape[-2:]) < patch_size:
            name = item.get("name", f"#{index}")
            raise ValueError(
                f"training image {name} is {label.shape[-2]}x{label.shape[-1]}, smaller than the "
                f"{patch_size}-pixel patches; use a smaller --patch-size."
            )


def _copy(image: Any) -> torch.Tensor:
    """A plain-tensor copy (MetaTensor metadata dropped: the training step only needs the data)."""
    as_tensor = getattr(image, "as_tensor", None)
    return (as_tensor() if callable(as_tensor) else torch.as_tensor(image)).clone()


def training_loader(
    items: Sequence[Mapping[str, Any]],
    patch_size: int,
    batch_size: int,
    iters_per_epoch: int,
    degradation: Callable | None = None,
    load: Callable | None = None,
    workers: int = 0,
) -> Any:
    """A loader of ``iters_per_epoch`` random batches of degraded patches ``{"image", "label"}``.

    ``load`` results are cached (MONAI ``CacheDataset``); crops and degradations are drawn anew for
    every sample, images with replacement. Re-seed with ``monai.data.utils.set_rnd(loader.dataset, s)``
    (``run_arms`` does) and ``torch.manual_seed`` (the sampler).
    """
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import Lambdad, RandSpatialCropd, SelectItemsd
    from torch.utils.data import RandomSampler

    _check_patch_size(items, patch_size)
    transform = _compose(
        load,
        RandSpatialCropd(
            keys=_IMAGE_KEYS, roi_size=(patch_size, patch_size), random_size=False, allow_missing_keys=True
        ),
        # The crop is a view of the cached image: copy the patch so no degradation can write into the
        # cache. Copying patches instead of whole cached images (copy_cache) is ~10x cheaper.
        Lambdad(keys=_IMAGE_KEYS, func=_copy, allow_missing_keys=True),
        degradation,
        SelectItemsd(keys=_IMAGE_KEYS),
    )
    dataset = CacheDataset(
        list(items), transform=transform, cache_rate=1.0, num_workers=0, progress=False, copy_cache=False
    )
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch_size * iters_per_epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers)


def degraded_test_items(
    items: Sequence[Mapping[str, Any]],
    degradation: Callable | None = None,
    seed: int = 0,
    load: Callable | None = None,
    size_limit: int | None = None,
    size_multiple: int = 16,
    square: bool = True,
) -> list[dict[str, Any]]:
    """The test set as the networks see it: loaded, centre-cropped to a square, degraded once from ``seed``.

    Square crops (sides a multiple of ``size_multiple``, at most ``size_limit``) keep every image
    valid for rot90 equivariance and for a U-Net. ``degradation`` is copied before seeding, so the
    caller's transform (and its random state) is untouched. ``square=False`` keeps whole images.
    """
    from monai.data.utils import set_rnd
    from monai.transforms import CenterSpatialCropd

    degrade = copy.deepcopy(degradation) if degradation is not None else None
    if degrade is not None:
        set_rnd(degrade, seed)
    prepared = []
    for item in items:
        data = dict(load(dict(item)) if load is not None else item)
        if square:
            side = square_crop_size(*data["label"].shape[-2:], multiple=size_multiple, limit=size_limit)
            data = CenterSpatialCropd(keys=_IMAGE_KEYS, roi_size=(side, side), allow_missing_keys=True)(data)
        if degrade is not None:
            data = degrade(data)
        prepared.append({k: _copy(v).float() if k in _IMAGE_KEYS else v for k, v in data.items()})
    return prepared


class _DegradedInput(nn.Module):
    """The identity restorer: returns the degraded image (the first ``channels`` input channels)."""

    def __init__(self, channels: int | None) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.channels is None else x[:, : self.channels]


def evaluate_restoration(
    network: nn.Module,
    items: Sequence[Mapping[str, Any]],
    device: str | torch.device = "cpu",
    y_channel: bool = False,
    quantize: bool = False,
) -> dict[str, Any]:
    """PSNR/SSIM of ``network`` on degraded test items (one image per batch), via a MONAI evaluator.

    Returns:
        ``{"PSNR": mean, "SSIM": mean, "per_image": {name: {"PSNR": ..., "SSIM": ...}}}`` (keys
        ``PSNR-Y``/``SSIM-Y`` with ``y_channel``).
    """
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator

    names = _metric_names(y_channel)
    options = {"y_channel": y_channel, "quantize": quantize}
    loader = DataLoader([{k: v for k, v in item.items() if k in _IMAGE_KEYS} for item in items], batch_size=1)
    evaluator = SupervisedEvaluator(
        device=torch.device(device), val_data_loader=loader, network=network,
        key_val_metric={names[0]: RestorationPSNR(**options)},
        additional_metrics={names[1]: RestorationSSIM(**options)},
    )
    evaluator.run()
    state = evaluator.state
    per_image = {}
    for index, item in enumerate(items):
        name = str(item.get("name", index))
        per_image[name] = {metric: float(state.metric_details[metric][index].reshape(-1)[0]) for metric in names}
    return {**{metric: float(state.metrics[metric]) for metric in names}, "per_image": per_image}


def _metric_names(y_channel: bool) -> tuple[str, str]:
    return ("PSNR-Y", "SSIM-Y") if y_channel else ("PSNR", "SSIM")


def _probe_batches(items: Sequence[Mapping[str, Any]], count: int, size: int) -> list[dict[str, torch.Tensor]]:
    """One batch of centre crops of the first ``count`` test images, for the equivariance report."""
    from monai.transforms import CenterSpatialCropd

    crops = []
    for item in items[:count]:
        side = min(size, *item["label"].shape[-2:])
        crops.append(CenterSpatialCropd(keys=_IMAGE_KEYS, roi_size=(side, side))({k: item[k] for k in _IMAGE_KEYS}))
    if not crops:
        return []
    side = min(int(c["label"].shape[-1]) for c in crops)
    crop = CenterSpatialCropd(keys=_IMAGE_KEYS, roi_size=(side, side))
    return [{k: torch.stack([torch.as_tensor(crop(c)[k]) for c in crops]) for k in _IMAGE_KEYS}]


def _example_figure(
    cfg: RestorationExperimentConfig,
    items: Sequence[Mapping[str, Any]],
    networks: Mapping[str, nn.Module],
    device: torch.device,
) -> Path | None:
    """``examples.png``: per test image the degraded input, each baseline and arm, the ground truth, with scores."""
    from monai.transforms import CenterSpatialCrop

    from eqmar.engines import plot_image_grid

    chosen = list(items[: cfg.examples])
    if not chosen:
        return None
    degraded = _DegradedInput(cfg.image_channels)
    names = _metric_names(cfg.y_channel)
    rows, captions = [], []
    for item in chosen:
        x = item["image"][None].to(device)
        outputs = {"input": degraded(x)}
        with torch.no_grad():
            for label, net in networks.items():
                outputs[label] = net.eval()(x)
        outputs["ground truth"] = item["label"][None].to(device)
        side = cfg.example_crop or min(item["label"].shape[-2:])
        crop = CenterSpatialCrop((min(side, item["label"].shape[-2]), min(side, item["label"].shape[-1])))
        row = {k: torch.as_tensor(crop(v[0].float().cpu())) for k, v in outputs.items()}
        options = {"y_channel": cfg.y_channel, "quantize": cfg.quantize}
        caption = {
            k: f"{float(restoration_psnr(v, row['ground truth'], **options)[0]):.2f} dB / "
            f"{float(restoration_ssim(v, row['ground truth'], **options)[0]):.3f}"
            for k, v in row.items() if k != "ground truth"
        }
        caption["ground truth"] = str(item.get("name", ""))
        rows.append(row)
        captions.append(caption)
    title = f"{cfg.task}: {names[0]} (dB) / {names[1]} of the shown crop"
    return plot_image_grid(rows, Path(cfg.training.output_dir) / "examples.png", captions=captions, title=title)


def _config_summary(cfg: RestorationExperimentConfig) -> dict[str, Any]:
    """The scalar settings of ``cfg`` (factories, items and transforms are described by type)."""
    summary: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ("train_items", "test_items"):
            summary[f.name] = [str(item.get("name", i)) for i, item in enumerate(value)]
        elif isinstance(value, Path):
            summary[f.name] = str(value)
        elif isinstance(value, TrainingConfig):
            summary[f.name] = config_as_json(value)
        elif f.name == "baselines":
            summary[f.name] = list(value)
        elif value is None or isinstance(value, (bool, int, float, str, tuple, list, dict)):
            summary[f.name] = value
        else:
            summary[f.name] = type(value).__name__
    return summary


def _optimizer_factory(cfg: RestorationExperimentConfig) -> Callable[[nn.Module], tuple[torch.optim.Optimizer, Any]]:
    def make(network: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        optimizer = torch.optim.Adam(network.parameters(), lr=cfg.training.lr)
        scheduler = (
            torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.training.milestones), gamma=cfg.training.lr_decay)
            if cfg.training.milestones else None
        )
        return optimizer, scheduler

    return make


def run_restoration_experiment(cfg: RestorationExperimentConfig) -> dict[str, Any]:
    """Train every configured arm, score the degraded input and the arms, write results and figures.

    Writes ``results.json``, ``results.md``, ``examples.png`` and (with a probe) ``equivariance.png``
    into ``cfg.training.output_dir``, and ``<arm>/model.pt``, checkpoints and TensorBoard logs below it. The
    results files are written before the figures are drawn. Arms that an earlier run with the same
    settings wrote to ``results.json`` there, and that this run does not retrain, stay in the results
    and tables (see :func:`~eqmar.engines.merge_earlier_arms`); the figures show this run's arms only.

    Returns:
        The content of ``results.json``; ``"table"`` and ``"equivariance_table"`` hold the Markdown.
    """
    with torch_threads(cfg.training.threads):
        return _run_restoration_experiment(cfg)


def _run_restoration_experiment(cfg: RestorationExperimentConfig) -> dict[str, Any]:
    from eqmar.engines import (
        arm_summary,
        format_arm_table,
        format_equivariance_table,
        merge_earlier_arms,
        note_earlier_arms,
        write_results,
    )
    from eqmar.equivariance import convs_divisible_by, plot_equivariance_report

    started = time.perf_counter()
    unknown = [arm for arm in cfg.training.arms if arm not in (*ARMS, STRICT_ARM)]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {(*ARMS, STRICT_ARM)}.")
    if cfg.training.patch_size <= 0 or cfg.training.patch_size % cfg.size_multiple:
        raise ValueError(
            f"patch size must be a positive multiple of {cfg.size_multiple}, got {cfg.training.patch_size}."
        )
    if not cfg.train_items or not cfg.test_items:
        raise ValueError("the experiment needs at least one training and one test image.")
    device = resolve_torch_device(cfg.training.device)
    out = Path(cfg.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    loader = training_loader(
        cfg.train_items, cfg.training.patch_size, cfg.training.batch_size, cfg.training.iters_per_epoch,
        cfg.degradation, cfg.load, cfg.training.workers,
    )
    test = degraded_test_items(
        cfg.test_items, cfg.degradation, cfg.test_seed, cfg.load, cfg.test_size, cfg.size_multiple,
        cfg.square_test_crops,
    )
    probe = _probe_batches(test, cfg.probe_images, cfg.probe_size)
    options = {"device": device, "y_channel": cfg.y_channel, "quantize": cfg.quantize}

    settings = EQRegSettings(
        weight=cfg.training.weight, group=cfg.training.group, reduction=cfg.training.reduction,  # type: ignore[arg-type]
        layers=cfg.layers if cfg.layers is not None else convs_divisible_by(cfg.training.group),
    )
    task = TaskSpec(
        make_network=cfg.make_network,
        make_optimizer=_optimizer_factory(cfg),
        loss_function=cfg.loss_function,
        train_loader=loader,
        evaluate=lambda network: evaluate_restoration(network, test, **options),
        max_epochs=cfg.training.epochs,
        image_keys=_IMAGE_KEYS,
        probe_loader=probe or None,
        make_strict_network=cfg.make_strict_network,
    )
    results = run_arms(
        task, cfg.training.arms, settings, seed=cfg.training.seed, device=device, output_dir=out,
        resume=cfg.training.resume, checkpoint_interval=cfg.training.checkpoint_interval,
        progress=cfg.training.progress,
    )
    references = {"degraded input": _DegradedInput(cfg.image_channels), **cfg.baselines}
    baselines = {name: evaluate_restoration(module.to(device), test, **options) for name, module in references.items()}
    config = _config_summary(cfg)
    order = (*ARMS, STRICT_ARM)  # every arm this runner knows (checked above), also those of earlier runs
    labels = {arm: strict_label(cfg.strict_group or cfg.training.group) if arm == STRICT_ARM else arm for arm in order}
    summaries = {arm: {**arm_summary(r), "label": labels[arm]} for arm, r in results.items()}
    names = _metric_names(cfg.y_channel)

    def row(summary: Mapping[str, Any]) -> dict[str, float]:
        return {**{n: float(summary["metrics"][n]) for n in names}, "train (s)": float(summary["train_seconds"])}

    # ``row`` also checks an earlier run's arms: one this run cannot tabulate sets that file aside
    arms = merge_earlier_arms(out, config, summaries, order=order, check=row)
    rows = {**baselines, **{labels[arm]: row(s) for arm, s in arms.items()}}
    table = format_arm_table(rows, columns=[*names, "train (s)"], digits={"train (s)": 0})
    table = note_earlier_arms(table, arms, labels)
    equivariance_table = format_equivariance_table({labels[arm]: s.get("equivariance") for arm, s in arms.items()})
    payload = {
        "task": cfg.task,
        "config": config,
        "meta": cfg.meta,
        "device": str(device),
        "machine": {
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()
        },
        "test_images": {str(item.get("name", i)): list(item["label"].shape) for i, item in enumerate(test)},
        "baselines": baselines,
        "arms": arms,
        "table": table,
        "equivariance_table": equivariance_table,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    header = (
        f"## {cfg.task}\n\nseed {cfg.training.seed}; {cfg.training.epochs} epochs × "
        f"{cfg.training.iters_per_epoch} iterations of batch "
        f"{cfg.training.batch_size} (+{cfg.training.batch_size} rotated for aug/eqreg), "
        f"{cfg.training.patch_size}² patches, Adam {cfg.training.lr:g}; "
        f"EQ-Reg {cfg.training.group}, λ = {cfg.training.weight:g} ({cfg.training.reduction}); "
        f"test: {', '.join(payload['test_images'])}"
    )
    if not is_main_process():  # every rank evaluates alike; rank 0 alone writes files
        return payload
    # The numbers go to disk before any figure is drawn: a plotting error must not lose a finished run.
    write_results(out, payload, [header, table, "Equivariance (held-out test crops)", equivariance_table])
    reports = {labels[arm]: r.equivariance for arm, r in results.items() if r.equivariance is not None}
    if reports:
        # Per-layer bars only compare like with like: the strict network's layers are other layers
        # (its errors are in the table), so the figure shows the arms sharing the first arm's layers.
        first = list(next(iter(reports.values())).layers)
        same = {label: report for label, report in reports.items() if list(report.layers) == first}
        plot_equivariance_report(
            same, out / "equivariance.png", title=f"{cfg.task}: equivariance error ({cfg.training.group})"
        )
    _example_figure(
        cfg, test, {**dict(cfg.baselines), **{labels[arm]: r.network for arm, r in results.items()}}, device
    )
    return payload
