"""The MAR experiment: data, three training arms, the official metric, a table, JSON and figures.

``recipes/mar_deeplesion.py`` is a command-line front end to :func:`run_mar_experiment`. With no
data root it synthesizes (or reuses) a small demo set and uses a small, fast configuration
(:meth:`MARExperimentConfig.demo`); with a SynDeepLesion root it defaults to the published
protocol (:meth:`MARExperimentConfig.published`).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from torch import nn

from eqmar.apps.mar.evaluation import (
    evaluate_mar,
    format_region_table,
    input_predictor,
    network_predictor,
    region_errors,
)
from eqmar.apps.mar.figures import plot_mar_examples
from eqmar.apps.mar.transforms import MARInputsd
from eqmar.engines import (
    ARMS,
    EQRegSettings,
    TaskSpec,
    arm_summary,
    config_as_json,
    is_main_process,
    main_process_first,
    merge_earlier_arms,
    note_earlier_arms,
    run_arms,
    write_results,
)
from eqmar.engines.config import TrainingConfig, training_field, with_overrides
from eqmar.engines.distributed import rank_device
from eqmar.utils import resolve_torch_device, torch_threads

__all__ = ["MARExperimentConfig", "run_mar_experiment", "build_network", "mar_network_spec", "mar_inference_roi",
           "ensure_demo_data", "ensure_holdout_data", "BACKBONES"]

logger = logging.getLogger("eqmar.mar")

BACKBONES = ("dicdnet", "acdnet", "oscnet", "unet")


@dataclass
class MARExperimentConfig:
    """Settings of a MAR experiment (defaults: the published DICDNet protocol).

    ``training`` holds the settings every experiment shares (:class:`~eqmar.engines.TrainingConfig`:
    output folder, arms, schedule, optimiser, EQ-Reg, seed, device); the other attributes are the
    MAR task's and mirror the recipe's command-line flags; see ``recipes/mar_deeplesion.py --help``.
    """

    data: Path | None = None
    geometry_tag: str = "640geo"
    training: TrainingConfig = training_field(
        output_dir=Path("runs/mar_deeplesion"), arms=ARMS, epochs=200, iters_per_epoch=800, batch_size=16,
        patch_size=64, lr=2e-4, milestones=(30, 60, 90, 120, 150, 180), lr_decay=0.5, weight=1e-8, group="C4",
        reduction="norm", checkpoint_interval=500,
    )
    backbone: str = "dicdnet"
    num_stages: int = 10
    features: int = 36
    num_filters: int = 32
    num_res_blocks: int = 3
    betas: tuple[float, float] = (0.5, 0.999)
    regularised: tuple[str, ...] | None = None
    train_masks: tuple[int, ...] = tuple(range(80))
    val_masks: tuple[int, ...] = tuple(range(80, 90))
    val_images: int = 4
    test_images: int | None = None
    holdout_images: tuple[Path, ...] = ()
    train_image_files: tuple[Path, ...] = ()
    init_weights: Path | None = None
    route_fraction: float = 0.0
    route_masks: tuple[int, ...] | None = None
    metal_crop_fraction: float = 0.0
    route_metal_crop_fraction: float | None = None
    demo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse settings that would train on something else than asked, before any data is made or read.

        Raises:
            ValueError: negative or shared training/validation mask indices, or an unknown ``regularised`` name.
        """
        _check_mask_indices(self.train_masks, self.val_masks)
        for name, flag in (("holdout_images", "--holdout-image"), ("train_image_files", "--train-image")):
            paths = tuple(Path(p) for p in getattr(self, name))
            setattr(self, name, paths)
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                raise ValueError(f"{name} ({flag}): not found: {', '.join(missing)}")
            if paths and self.data is not None:
                raise ValueError(
                    f"{name} ({flag}) adds images to the built-in data set, which is simulated at its own geometry; "
                    "with --data, synthesize them into the root with data_tools/synthesize_mar.py instead."
                )
        if self.regularised:
            _check_regularised_names(self)
        for name in ("route_fraction", "metal_crop_fraction", "route_metal_crop_fraction"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.route_masks is not None and not set(self.route_masks) <= set(self.train_masks):
            extra = sorted(set(self.route_masks) - set(self.train_masks))
            raise ValueError(f"route_masks {extra} are not training masks (train_masks)")
        if self.init_weights is not None:
            self.init_weights = Path(self.init_weights)
            if not self.init_weights.is_file():
                raise ValueError(f"init_weights (--init-weights): {self.init_weights}: model file not found")

    @classmethod
    def published(cls, data: Path, **overrides: Any) -> MARExperimentConfig:
        """The published DICDNet/EQ-Reg protocol on a SynDeepLesion root."""
        return with_overrides(cls(data=Path(data)), **overrides)

    @classmethod
    def demo_default(cls, **overrides: Any) -> MARExperimentConfig:
        """A small configuration that trains all three arms on the built-in demo set on a laptop CPU.

        The backbone is the LI-residual BasicUNet (:func:`eqmar.networks.mar_baseline_unet`, widths
        16-128, output clamped at µ = 0): in the demo's CPU budget (1000 steps of batch 4 per arm) it
        beats LI clearly, where DICDNet, whose unrolled stages need a long training to learn the
        artifact dictionary, stays at LI level (``docs/results.md``). Training anatomy: 24
        procedural abdomen/thorax/pelvis slices × 12 masks; the held-out set (``head`` phantoms,
        ``CT_small.dcm`` and any ``holdout_images``) has none of it.

        λ = 1e-4: the published 1e-8 is set for DICDNet's features on the 0-255 scale; the UNet's
        features live on the µ scale, where the summed Frobenius norms of its 18 regularised convs are
        2 000-10 000, so 1e-8 weighs 1e-5 of the task loss and does nothing. 1e-4 makes the term a
        few percent of the loss (about 0.2-1 against a loss of 8-25).
        """
        from eqmar.data.synthesis import DEMO_TRAIN_PHANTOMS, HOLDOUT_PHANTOMS

        base = with_overrides(
            cls(),
            data=None,
            backbone="unet",
            num_stages=3,
            features=16,
            num_filters=16,
            num_res_blocks=2,
            epochs=40,
            iters_per_epoch=25,
            batch_size=4,
            patch_size=64,
            lr=1e-3,
            betas=(0.5, 0.999),
            milestones=(30,),
            weight=1e-4,
            train_masks=tuple(range(12)),
            val_masks=(),
            val_images=0,
            checkpoint_interval=0,
            demo={"cache": ".cache/eqmar/mar_demo_v2", "image_size": 128, "views": 160, "train_images": 24,
                  "test_images": 4, "seed": 0, "kinds": DEMO_TRAIN_PHANTOMS, "holdout": 4,
                  "holdout_kinds": HOLDOUT_PHANTOMS},
        )
        return with_overrides(base, **overrides)

    @classmethod
    def reference_default(cls, **overrides: Any) -> MARExperimentConfig:
        """The reference model: one EQ-Reg LI-residual UNet at the full 640geo geometry (416 px, 640 views).

        Trains on built-in procedural anatomy of all four families (48 slices) plus any
        ``train_image_files`` (e.g. real DeepLesion training slices), each with 20 generated
        training masks; tests on the demo test images (CT_small and phantoms) at full geometry.
        12 000 steps of batch 4 (+4 rotated) on 96×96 patches take about 80 min on one core of a 2-core
        x86_64 machine (``docs/results.md``). Checkpoints every 500 steps, so ``--resume`` continues an interrupted run.
        """
        from eqmar.data.synthesis import DEMO_PHANTOMS

        base = cls.demo_default(
            output_dir=Path("runs/mar_reference"),
            arms=("eqreg",),
            epochs=24,
            iters_per_epoch=500,
            patch_size=96,
            milestones=(16, 21),
            train_masks=tuple(range(20)),
            checkpoint_interval=500,
            demo={"cache": ".cache/eqmar/mar_reference", "image_size": 416, "views": 640, "train_images": 48,
                  "test_images": 4, "seed": 0, "kinds": DEMO_PHANTOMS, "holdout": 0},
        )
        return with_overrides(base, **overrides)

    @classmethod
    def clinical_default(cls, **overrides: Any) -> MARExperimentConfig:
        """The shipped model: the reference model fine-tuned for the clinical route.

        Starts from ``init_weights`` (the reference run's ``eqreg/model.pt``) on the reference data
        set and trains 3 000 more steps at the reference run's final learning rate, on a mix: half
        of the samples keep the protocol's inputs (patches centred on a random non-metal pixel), half
        carry the inputs the clinical route makes from a stored image (:mod:`eqmar.apps.mar.route`:
        clipped HU, threshold mask, image-domain LI with the line trace; every other training mask),
        each patch of those centred on a metal pixel, where the two kinds of input differ. Centring
        the protocol's patches on metal too cost 2 dB on the published sample (``docs/results.md``).
        About 13 min on one core of a 2-core x86_64 machine, plus about 12 min to make the route
        inputs once.
        """
        base = cls.reference_default(
            output_dir=Path("runs/mar_clinical"),
            epochs=6,
            iters_per_epoch=500,
            lr=2.5e-4,
            milestones=(4,),
            route_fraction=0.5,
            route_masks=tuple(range(0, 20, 2)),
            metal_crop_fraction=0.0,
            route_metal_crop_fraction=1.0,
        )
        return with_overrides(base, **overrides)


def _check_mask_indices(train_masks: Sequence[int], val_masks: Sequence[int]) -> None:
    """Mask indices must be >= 0, and validation masks must not be trained on.

    The upper bound depends on the data (``trainmask.npy`` of the root); the data set checks it and
    names the file.
    """
    negative = sorted({int(k) for k in (*train_masks, *val_masks) if int(k) < 0})
    if negative:
        raise ValueError(f"mask indices must be >= 0, got {negative} in train_masks/val_masks.")
    shared = sorted({int(k) for k in train_masks} & {int(k) for k in val_masks})
    if shared:
        # validating on training masks scores the network on what it has fitted: inflated numbers
        raise ValueError(
            f"train_masks (--train-masks) and val_masks (--val-masks) share mask indices {_index_ranges(shared)}; "
            "validation masks must not be trained on (published split: 0-79 train, 80-89 validation; "
            "--val-masks none skips validation)."
        )


def _index_ranges(indices: Sequence[int]) -> str:
    """Sorted indices in the recipe's range syntax, e.g. ``[80, 81, 82, 85]`` -> ``"80-82,85"``."""
    parts: list[str] = []
    start = prev = indices[0]
    for k in (*indices[1:], None):
        if k is not None and k == prev + 1:
            prev = k
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if k is not None:
            start = prev = k
    return ",".join(parts)


def _check_regularised_names(cfg: MARExperimentConfig) -> None:
    """An unknown proximal-net name would silently select no layer; name the valid ones instead."""
    from eqmar.networks import proximal_conv_names

    if cfg.backbone == "unet":
        raise ValueError(
            f"regularised (--regularise) = {','.join(cfg.regularised or ())} names proximal nets, which only the "
            "unrolled backbones have; the unet regularises every conv whose width fits the group."
        )
    # a config constructor must not move the global random state that seeds the arms' weights
    with torch.random.fork_rng(devices=[]):
        network = build_network(cfg)
    try:
        proximal_conv_names(network, which=cfg.regularised or ())
    except ValueError as error:
        raise ValueError(f"regularised (--regularise): {error}") from None


def mar_network_spec(cfg: MARExperimentConfig) -> dict[str, Any]:
    """The backbone named by ``cfg.backbone`` with the configured width and depth, as a model spec."""
    from eqmar.apps.mar.model_file import network_spec

    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {cfg.backbone!r}; choose one of {BACKBONES}")
    if cfg.backbone == "unet":
        width = cfg.features
        return network_spec("unet", features=[width, width, 2 * width, 4 * width, 8 * width, width])
    order = {"C2": 2, "C4": 4, "D4": 8, "C8": 8}[cfg.training.group]
    kwargs: dict[str, Any] = {
        "num_stages": cfg.num_stages, "features": cfg.features, "num_res_blocks": cfg.num_res_blocks,
        "group_order": order,
    }
    if cfg.backbone != "oscnet":  # OSCNet's filters are base filters per orientation (4 published)
        kwargs["num_filters"] = cfg.num_filters
    return network_spec(cfg.backbone, **kwargs)


def mar_inference_roi(cfg: MARExperimentConfig) -> int | None:
    """Patch size to run the trained network with: the training patch for the UNet, whole slices otherwise.

    The UNet's instance normalisation makes its output depend on the statistics of what it is given
    (:mod:`eqmar.apps.mar.sliding`); the unrolled backbones normalise with batch statistics learned
    in training and run on whole slices, as published.
    """
    return cfg.training.patch_size if cfg.backbone == "unet" else None


def build_network(cfg: MARExperimentConfig) -> nn.Module:
    """The configured backbone: untrained, or with the weights of ``cfg.init_weights``.

    Raises:
        ValueError: ``cfg.init_weights`` holds another network than the configured one.
    """
    from eqmar.apps.mar.model_file import build_from_spec, load_mar_model

    spec = mar_network_spec(cfg)
    network = build_from_spec(spec)
    if cfg.init_weights is not None:
        loaded, payload = load_mar_model(cfg.init_weights)
        import json

        if json.dumps(payload.get("network"), sort_keys=True) != json.dumps(spec, sort_keys=True):
            raise ValueError(
                f"{cfg.init_weights}: holds network {payload.get('network')}, the configuration builds {spec}")
        network.load_state_dict(loaded.state_dict())
    return network


#: The proximal nets the authors regularise per backbone (ACDNet's M-net is 6 channels wide).
PUBLISHED_REGULARISED = {"dicdnet": ("x_net", "m_net"), "oscnet": ("x_net", "m_net"), "acdnet": ("x_net",)}


def regularised_layers(cfg: MARExperimentConfig, network: nn.Module) -> list[str] | Any:
    """EQ-Reg layers: the proximal-net convs of unrolled backbones, every fitting conv of the UNet.

    ``cfg.regularised`` names the proximal nets; ``None`` takes the published choice of the backbone.
    """
    from eqmar.equivariance import convs_divisible_by
    from eqmar.networks import proximal_conv_names

    if cfg.backbone == "unet":
        return convs_divisible_by(cfg.training.group)
    return proximal_conv_names(network, which=cfg.regularised or PUBLISHED_REGULARISED[cfg.backbone])


def _check_regularised_layers(cfg: MARExperimentConfig, network: nn.Module, layers: Any) -> None:
    """Fail before any arm trains when the EQ-Reg layers do not fit the group (not after plain and aug)."""
    from eqmar.equivariance.layers import check_channel_divisibility, select_layers

    if "eqreg" in cfg.training.arms:
        check_channel_divisibility(select_layers(network, layers), cfg.training.group)


def _files_digest(files: Sequence[str]) -> str:
    """A short digest of a file list: data made with other extra files gets a folder of its own."""
    import hashlib

    return hashlib.sha256("\n".join(files).encode()).hexdigest()[:10]


def _demo_synthesis(demo: dict[str, Any]) -> Any:
    """The :class:`~eqmar.data.synthesis.SynthesisConfig` of the built-in data (640geo at the demo's size)."""
    from eqmar.data.synthesis import SynthesisConfig

    return SynthesisConfig(geometry="640geo", image_size=demo["image_size"], num_views=demo["views"], seed=demo["seed"])


def _raise_on_failure(report: Any, what: str) -> None:
    """Built-in data must be complete: the first failed image, named, as a user error."""
    if report.failures:
        first = report.failures[0]
        raise ValueError(f"{what} image {first['source']}: {first['error']}")


def ensure_demo_data(cfg: MARExperimentConfig) -> tuple[Path, str]:
    """Synthesize the demo set if its files are not all there yet; return (root, geometry tag).

    ``cfg.train_image_files`` are added to the training split (never to the test split).
    """
    from eqmar.data.masks import generate_mask_set
    from eqmar.data.synthesis import DEMO_PHANTOMS, demo_sources, file_sources, select_split_masks, synthesize_dataset

    demo = cfg.demo
    files = [str(Path(p).resolve()) for p in cfg.train_image_files]
    root = Path(demo["cache"] + (f"_{_files_digest(files)}" if files else ""))
    synth = _demo_synthesis(demo)
    masks = generate_mask_set(seed=demo["seed"])
    for split, count in (("train", demo["train_images"]), ("test", demo["test_images"])):
        split_masks = select_split_masks(masks, split)
        indices = (
            sorted(set(cfg.train_masks) | set(cfg.val_masks)) if split == "train" else range(split_masks.shape[-1])
        )
        sources = demo_sources(count, demo["seed"], split, demo.get("kinds", DEMO_PHANTOMS))
        if split == "train":
            sources += file_sources(files)
        report = synthesize_dataset(
            sources, split_masks, root, split, synth, mask_indices=indices, progress=cfg.training.progress
        )
        _raise_on_failure(report, split)
    return root, synth.resolve_tag()


def ensure_holdout_data(cfg: MARExperimentConfig) -> tuple[Path, str] | None:
    """Synthesize (or reuse) the demo's held-out set; ``None`` when the demo configures none.

    The held-out set is anatomy the demo never trains on: pydicom's ``CT_small.dcm``,
    ``cfg.demo["holdout"]`` phantoms of the families in ``cfg.demo["holdout_kinds"]`` (by default
    ``head``, which the training set leaves out) and every file of ``cfg.holdout_images``, each
    with the ten test masks, at the demo geometry. Its folder name carries a digest of the extra
    files, so adding one makes a new set instead of mixing two.
    """
    from eqmar.data.masks import generate_mask_set
    from eqmar.data.synthesis import HOLDOUT_PHANTOMS, holdout_sources, select_split_masks, synthesize_dataset

    demo = cfg.demo
    if cfg.data is not None or not demo.get("holdout"):
        return None
    files = [str(Path(p).resolve()) for p in cfg.holdout_images]
    root = Path(demo["cache"]) / ("holdout" + (f"_{_files_digest(files)}" if files else ""))
    synth = _demo_synthesis(demo)
    masks = select_split_masks(generate_mask_set(seed=demo["seed"]), "test")
    sources = holdout_sources(demo["holdout"], demo["seed"], demo.get("holdout_kinds", HOLDOUT_PHANTOMS), files)
    _raise_on_failure(
        synthesize_dataset(sources, masks, root, "test", synth, progress=cfg.training.progress), "held-out"
    )
    return root, synth.resolve_tag()


def _train_transform(patch: int, metal_crop_fraction: float = 0.0, by_label: bool = False) -> Any:
    """Random ``patch``-sized crops; a ``metal_crop_fraction`` of them centred on a metal pixel.

    Uniform crops of a 416 px slice rarely hold metal (about one in ten at 96 px), so what the
    network learns next to the metal, where the clinical route's inputs differ most, would be
    learned from few patches. ``by_label`` uses the metal-centred cropper (which returns a list of
    one sample) even at fraction 0, so that data sets mixed in one loader collate alike.
    """
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandSpatialCropd, SelectItemsd

    if metal_crop_fraction <= 0.0 and not by_label:
        return Compose([
            MARInputsd(),
            SelectItemsd(keys=["image", "label"]),
            RandSpatialCropd(keys=["image", "label"], roi_size=(patch, patch), random_size=False),
        ])
    return Compose([
        MARInputsd(),
        SelectItemsd(keys=["image", "label", "mask"]),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="mask", spatial_size=(patch, patch),
                               pos=metal_crop_fraction, neg=1.0 - metal_crop_fraction, num_samples=1),
        SelectItemsd(keys=["image", "label"]),
    ])


def route_data_masks(cfg: MARExperimentConfig) -> tuple[int, ...]:
    """Training masks whose pairs get clinical-route inputs (default: every other training mask)."""
    return tuple(cfg.route_masks) if cfg.route_masks is not None else tuple(cfg.train_masks[::2])


def ensure_route_data(cfg: MARExperimentConfig, root: Path, tag: str) -> None:
    """Make the clinical-route inputs of the training split when ``cfg.route_fraction > 0`` (resumable)."""
    if cfg.route_fraction <= 0.0:
        return
    from eqmar.apps.mar.inference import model_geometry
    from eqmar.apps.mar.route import ensure_route_inputs
    from eqmar.data.syndeeplesion import SynDeepLesionLayout, read_clean

    layout = SynDeepLesionLayout(root, "train", tag)
    size = int(read_clean(layout.gt_path(layout.read_list()[0]), keys=("image",))["image"].shape[-1])
    geometry = model_geometry({"geometry_tag": tag, "image_size": size})
    ensure_route_inputs(root, "train", tag, geometry, route_data_masks(cfg), progress=cfg.training.progress)


def _training_set(cfg: MARExperimentConfig, root: Path, tag: str) -> tuple[Any, Any]:
    """The training data set and its sampler (``route_fraction`` of the draws from route inputs)."""
    from torch.utils.data import ConcatDataset, RandomSampler, WeightedRandomSampler

    from eqmar.data.datasets import SynDeepLesionTrainDataset

    route_crops = cfg.metal_crop_fraction if cfg.route_metal_crop_fraction is None else cfg.route_metal_crop_fraction
    mixed = cfg.route_fraction > 0.0
    # one loader collates both sets: both crop alike (a list of one sample) when either centres on metal
    by_label = mixed and max(cfg.metal_crop_fraction, route_crops) > 0.0
    transform = _train_transform(cfg.training.patch_size, cfg.metal_crop_fraction, by_label)
    draws = cfg.training.batch_size * cfg.training.iters_per_epoch
    train = SynDeepLesionTrainDataset(root, mask_indices=cfg.train_masks, geometry=tag, transform=transform)
    if not mixed:
        return train, RandomSampler(train, replacement=True, num_samples=draws)
    from eqmar.apps.mar.route import RouteInputsDataset

    route_transform = _train_transform(cfg.training.patch_size, route_crops, by_label)
    route = RouteInputsDataset(root, "train", route_data_masks(cfg), transform=route_transform, geometry=tag)
    weights = torch.cat([torch.full((len(train),), (1.0 - cfg.route_fraction) / len(train), dtype=torch.float64),
                         torch.full((len(route),), cfg.route_fraction / len(route), dtype=torch.float64)])
    return ConcatDataset([train, route]), WeightedRandomSampler(weights, num_samples=draws, replacement=True)


def _loaders(cfg: MARExperimentConfig, root: Path, tag: str) -> dict[str, Any]:
    from monai.data import DataLoader
    from torch.utils.data import Subset

    from eqmar.data.datasets import SynDeepLesionTestDataset, SynDeepLesionTrainDataset

    train, sampler = _training_set(cfg, root, tag)
    loaders = {
        "train": DataLoader(
            train, batch_size=cfg.training.batch_size, sampler=sampler, num_workers=cfg.training.workers
        )
    }
    test = SynDeepLesionTestDataset(root, geometry=tag, transform=MARInputsd())
    if cfg.test_images is not None:
        test = Subset(test, range(min(len(test), cfg.test_images * len(test.mask_indices))))
    loaders["test"] = DataLoader(test, batch_size=4, num_workers=cfg.training.workers)
    loaders["probe"] = [next(iter(DataLoader(Subset(test, range(min(4, len(test)))), batch_size=4)))]
    if cfg.val_masks and cfg.val_images:
        val = SynDeepLesionTrainDataset(root, mask_indices=cfg.val_masks, geometry=tag, transform=MARInputsd())
        val = Subset(val, range(min(len(val), cfg.val_images * len(cfg.val_masks))))
        loaders["val"] = DataLoader(val, batch_size=4, num_workers=cfg.training.workers)
    return loaders


def _model_meta(cfg: MARExperimentConfig, tag: str, image_size: int, roi: int | None) -> dict[str, Any]:
    """What a model file records besides its network: EQ-Reg settings, geometry, patch size, route inputs.

    ``route_inputs`` tells :class:`~eqmar.apps.mar.inference.MARInference` which metal trace the
    clinical-route inputs of training were made with, so that inference makes the same by default.
    """
    from eqmar.apps.mar.route import ROUTE_METAL_THRESHOLD_HU, ROUTE_TRACE_MODEL

    meta: dict[str, Any] = {
        "group": cfg.training.group, "weight": cfg.training.weight, "geometry_tag": tag, "image_size": image_size
    }
    if roi is not None:
        meta["inference_roi"] = roi
    if cfg.route_fraction > 0.0:
        meta["route_inputs"] = {"fraction": cfg.route_fraction, "trace_model": ROUTE_TRACE_MODEL,
                                "metal_threshold_hu": ROUTE_METAL_THRESHOLD_HU}
    return meta


def _validation_evaluator(loader: Any, device: torch.device) -> Any:
    from monai.engines import SupervisedEvaluator

    from eqmar.metrics import MARPSNR

    def pred_and_gt(output: Any) -> tuple[list, list]:
        return [o["pred"] for o in output], [o["label"][:1] for o in output]

    def metal_masks(batch: Any) -> Any:
        # MONAI decollates engine.state.batch into per-sample dicts after each iteration
        return [sample["mask"] for sample in batch] if isinstance(batch, list) else batch["mask"]

    def make(network: nn.Module) -> Any:
        return SupervisedEvaluator(
            device=device, val_data_loader=loader, network=network,
            key_val_metric={"val_mar_psnr": MARPSNR(output_transform=pred_and_gt, batch_transform=metal_masks)},
        )

    return make


def _example_rows(
    dataset: Any, networks: dict[str, nn.Module], device: torch.device, count: int = 2, roi: int | None = None
) -> tuple[list, list]:
    """Figure rows for ``count`` test samples spread over the data set (different images and masks)."""
    from monai.data import list_data_collate

    from eqmar.apps.mar.sliding import mar_forward
    from eqmar.metrics import batch_mar_scores

    step = max(len(dataset) // count, 1) + 1
    batch = list_data_collate([dataset[j % len(dataset)] for j in range(0, step * count, step)])
    rows, captions = [], []
    for i in range(batch["gt"].shape[0]):
        row = {"metal-affected": batch["ma_CT"][i], "LI": batch["LI_CT"][i]}
        with torch.no_grad():
            for name, net in networks.items():
                row[name] = mar_forward(net.eval(), batch["image"][i : i + 1].to(device), roi)[0].cpu()
        row["ground truth"] = batch["gt"][i]
        caption = {}
        for name, image in row.items():
            if name != "ground truth":
                p, s = batch_mar_scores(
                    image[None].float(), batch["gt"][i : i + 1].float(), batch["mask"][i : i + 1].float()
                )
                caption[name] = f"{float(p):.2f} dB / {float(s):.4f}"
        rows.append(row)
        captions.append(caption)
    return rows, captions


def run_mar_experiment(cfg: MARExperimentConfig) -> dict[str, Any]:
    """Run every configured arm, score LI and the arms on the test set, and write the results.

    Writes ``results.json``, ``results.md`` (the table), ``examples.png`` and ``equivariance.png``
    into ``cfg.training.output_dir``, and per-arm checkpoints, TensorBoard logs and ``model.pt`` below it.
    Arms that an earlier run with the same settings wrote to ``results.json`` there, and that this run
    does not retrain, stay in the results and the table (see :func:`~eqmar.engines.merge_earlier_arms`);
    the figures show this run's arms only. In a distributed run every rank calls it:
    ``cfg.training.batch_size`` is the global batch, rank 0 synthesizes the demo set and writes the files, and
    every rank returns the same content.

    Returns:
        The content of ``results.json``.
    """
    with torch_threads(cfg.training.threads):
        return _run_mar_experiment(cfg)


def _run_mar_experiment(cfg: MARExperimentConfig) -> dict[str, Any]:
    from eqmar.losses import MARLoss
    from eqmar.metrics import MARScores, format_mar_table

    device = rank_device(resolve_torch_device(cfg.training.device))
    out = Path(cfg.training.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with main_process_first():  # the other ranks then find the demo set complete instead of writing it too
        root, tag = (Path(cfg.data), cfg.geometry_tag) if cfg.data is not None else ensure_demo_data(cfg)
        holdout = ensure_holdout_data(cfg)
        ensure_route_data(cfg, root, tag)
    loaders = _loaders(cfg, root, tag)
    if holdout is not None:
        from monai.data import DataLoader

        from eqmar.data.datasets import SynDeepLesionTestDataset

        loaders["holdout"] = DataLoader(
            SynDeepLesionTestDataset(holdout[0], geometry=holdout[1], transform=MARInputsd()), batch_size=4,
            num_workers=cfg.training.workers,
        )

    def make_optimizer(network: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        optimizer = torch.optim.Adam(network.parameters(), lr=cfg.training.lr, betas=cfg.betas)
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(
            optimizer, list(cfg.training.milestones), gamma=cfg.training.lr_decay
        )

    def evaluate(network: nn.Module) -> dict[str, Any]:
        predictor = network_predictor(network, device, roi=roi)
        # one forward pass over the test set serves both the metric and the region errors
        predicted = [{**batch, "pred": predictor(batch)} for batch in loaders["test"]]
        scores = {"mar": evaluate_mar(predicted, input_predictor("pred")),
                  "regions": region_errors(predicted, input_predictor("pred"))}
        if "holdout" in loaders:
            scores["holdout"] = evaluate_mar(loaders["holdout"], predictor)
        return scores

    from eqmar.apps.mar.model_file import save_mar_model

    spec = mar_network_spec(cfg)
    image_size = int(loaders["test"].dataset[0]["gt"].shape[-1])
    roi = mar_inference_roi(cfg)
    probe_net = build_network(cfg)
    layers = regularised_layers(cfg, probe_net)
    _check_regularised_layers(cfg, probe_net, layers)
    settings = EQRegSettings(
        weight=cfg.training.weight, group=cfg.training.group, layers=layers,
        reduction=cfg.training.reduction,  # type: ignore[arg-type]
    )
    task = TaskSpec(
        make_network=lambda: build_network(cfg),
        make_optimizer=make_optimizer,
        loss_function=MARLoss(),
        train_loader=loaders["train"],
        evaluate=evaluate,
        max_epochs=cfg.training.epochs,
        image_keys=("image", "label"),
        probe_loader=loaders["probe"],
        make_evaluator=_validation_evaluator(loaders["val"], device) if "val" in loaders else None,
        save_network=lambda network, path: save_mar_model(
            path, network, spec, meta=_model_meta(cfg, tag, image_size, roi)
        ),
    )
    results = run_arms(
        task, cfg.training.arms, settings, seed=cfg.training.seed, device=device, output_dir=out,
        resume=cfg.training.resume, checkpoint_interval=cfg.training.checkpoint_interval,
        progress=cfg.training.progress,
    )
    baselines = {
        "metal-affected": evaluate_mar(loaders["test"], input_predictor("ma_CT")),
        "LI": evaluate_mar(loaders["test"], input_predictor("LI_CT")),
    }
    config = config_as_json(cfg)
    summaries = {
        arm: {**arm_summary(r), "metrics": r.metrics["mar"].as_dict(), "train_seconds": round(r.train_seconds, 2)}
        for arm, r in results.items()
    }
    for arm, r in results.items():
        summaries[arm]["region_errors"] = r.metrics["regions"]
        if "holdout" in r.metrics:
            summaries[arm]["holdout_metrics"] = r.metrics["holdout"].as_dict()
    arms = merge_earlier_arms(out, config, summaries, order=ARMS, check=lambda s: MARScores.from_dict(s["metrics"]))
    table = format_mar_table({**baselines, **{arm: MARScores.from_dict(s["metrics"]) for arm, s in arms.items()}})
    table = note_earlier_arms(table, arms)
    li_regions = region_errors(loaders["test"], input_predictor("LI_CT"))
    tables = [table, "Mean signed error / RMSE (HU) by distance from the metal, test set:\n\n" + format_region_table(
        {"LI": li_regions, **{arm: s["region_errors"] for arm, s in arms.items() if "region_errors" in s}})]
    holdout_baselines: dict[str, MARScores] = {}
    if "holdout" in loaders:
        holdout_baselines = {
            "metal-affected": evaluate_mar(loaders["holdout"], input_predictor("ma_CT")),
            "LI": evaluate_mar(loaders["holdout"], input_predictor("LI_CT")),
        }
        rows = {arm: MARScores.from_dict(s["holdout_metrics"]) for arm, s in arms.items() if "holdout_metrics" in s}
        ids = ", ".join(loaders["holdout"].dataset.image_ids)
        tables.append(f"Held-out set (anatomy the demo never trains on: {ids}):\n\n" + format_mar_table(
            {**holdout_baselines, **rows}))
    payload = {
        "config": config,
        "data_root": str(root),
        "geometry_tag": tag,
        "device": str(device),
        "machine": {
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "processes": idist.get_world_size(),
        },
        "baselines": {name: s.as_dict() for name, s in baselines.items()},
        "holdout_baselines": {name: s.as_dict() for name, s in holdout_baselines.items()},
        "li_region_errors": li_regions,
        "arms": arms,
        "table": "\n\n".join(tables),
    }
    if is_main_process():
        _write_outputs(cfg, out, root, results, payload, loaders["test"].dataset, device)
    return payload


def _write_outputs(
    cfg: MARExperimentConfig, out: Path, root: Path, results: dict[str, Any], payload: dict[str, Any], test: Any,
    device: torch.device,
) -> None:
    """``results.json``, ``results.md`` (both written atomically), then ``equivariance.png`` and ``examples.png``.

    The numbers are written before the figures are drawn, so a plotting failure cannot lose them. The
    figures show only the arms trained in this run (earlier arms have no network here).
    """
    from eqmar.equivariance import plot_equivariance_report

    write_results(out, payload, [payload["table"]])
    reports = {arm: res.equivariance for arm, res in results.items() if res.equivariance is not None}
    if reports:
        plot_equivariance_report(
            reports, out / "equivariance.png", title=f"{cfg.backbone}: equivariance error ({cfg.training.group})"
        )
    networks = {arm: r.network for arm, r in results.items()}
    rows, captions = _example_rows(test, networks, device, roi=mar_inference_roi(cfg))
    plot_mar_examples(
        rows, out / "examples.png", captions=captions, title=f"{cfg.backbone} on {root.name} (PSNR / SSIM)"
    )
