"""The deraining experiment: RCDNet under four arms on Rain100L or on embedded rainy photographs.

``recipes/derain_rain100l.py`` is the command-line front end to :func:`run_derain_experiment`, which
describes the task to the shared restoration runner
(:func:`~eqmar.apps.restoration.run_restoration_experiment`): RCDNet and its multi-stage loss,
EQ-Reg on the background (B-net) convs only as in the EQ-Reg paper, a parameter-matched strictly
equivariant baseline, and PSNR/SSIM on the BT.601 Y channel of 8-bit images (the Rain100L
convention).

- With a Rain100L root (:meth:`DerainExperimentConfig.published`): the published protocol —
  RCDNet with S = 17 stages, batch 16 (+16 rotated) of 64×64 patches, Adam 1e-3 decayed by 0.2
  every 25 of 100 epochs (1000 iterations each, the RCDNet code's ``--test_every``), λ = 1e-8 with
  the published Frobenius-norm residual, whole test images scored.
- Without data (:meth:`DerainExperimentConfig.demo_default`): scikit-image's bundled photographs
  (:func:`~eqmar.apps.restoration.natural_image_split`) with synthetic streaks from
  :class:`~eqmar.apps.derain.transforms.RandRainStreaksd` — fresh rain on every training patch, the
  test rain drawn once from ``test_seed`` — and a small RCDNet that trains all four arms in a few
  minutes on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from eqmar.engines import ARMS, STRICT_ARM, config_as_json
from eqmar.engines.config import TrainingConfig, training_field, with_overrides

__all__ = [
    "ALL_ARMS",
    "DerainExperimentConfig",
    "build_rcdnet",
    "regularised_layers",
    "rain_degradation",
    "restoration_config",
    "run_derain_experiment",
]

logger = logging.getLogger("eqmar.derain")

ALL_ARMS = (*ARMS, STRICT_ARM)
_STRICT_GROUPS = ("C4", "D4", "C2")


@dataclass
class DerainExperimentConfig:
    """Settings of the deraining experiment (defaults: the published RCDNet/EQ-Reg protocol).

    Attributes:
        data: Rain100L root (``train/`` and ``test/`` with ``rain/`` + ``norain/``), or None for the
            embedded photographs with synthetic rain.
        train_split: training sub-folder of ``data`` (an absolute path is used as is).
        test_split: test sub-folder of ``data``.
        in_channels: 3 (RGB, published) or 1 (grey).
        num_stages: RCDNet stages S.
        num_filters: rain kernels / rain-map channels.
        features: B-net width (divisible by the group order).
        num_res_blocks: ResBlocks per proximal net.
        strict_depth: group-conv layers of the strict baseline (its width matches RCDNet's parameters).
        regularised: proximal nets whose convs carry EQ-Reg (the paper: the B-net, ``x_net``).
        train_images: use only the first N training pairs/photographs.
        test_images: score only the first N test pairs/photographs.
        test_size: cap on the side of square test crops (None: whole images for Rain100L, the largest
            square for photographs).
        test_seed: seed of the synthetic test rain.
        rain: :class:`~eqmar.apps.derain.transforms.RandRainStreaks` settings of the synthetic rain.
        training: the training settings (:class:`~eqmar.engines.TrainingConfig`; arms from
            :data:`ALL_ARMS`; the strict baseline uses ``group``). The demo runs on one CPU thread: its
            small convolutions gain little from intra-op threads, and on a shared CPU OpenMP
            spin-waiting made them far slower (the plain demo arm took 672 s with 2 threads and 32 s
            with 1 on a 2-core machine under load).
    """

    data: Path | None = None
    train_split: str = "train"
    test_split: str = "test"
    training: TrainingConfig = training_field(
        output_dir=Path("runs/derain_rain100l"), arms=ALL_ARMS, epochs=100, iters_per_epoch=1000, batch_size=16,
        patch_size=64, lr=1e-3, milestones=(25, 50, 75), lr_decay=0.2, weight=1e-8, group="C4", reduction="norm",
    )
    in_channels: int = 3
    num_stages: int = 17
    num_filters: int = 32
    features: int = 36
    num_res_blocks: int = 4
    strict_depth: int = 5
    regularised: tuple[str, ...] = ("x_net",)
    train_images: int | None = None
    test_images: int | None = None
    test_size: int | None = None
    test_seed: int = 0
    rain: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def published(cls, data: str | Path, **overrides: Any) -> DerainExperimentConfig:
        """The published RCDNet + EQ-Reg protocol on a Rain100L root."""
        return with_overrides(cls(data=Path(data)), **overrides)

    @classmethod
    def demo_default(cls, **overrides: Any) -> DerainExperimentConfig:
        """A small RCDNet on the embedded rainy photographs: all four arms in minutes on a CPU.

        λ: the published 1e-8 on the Frobenius norm is calibrated for 17 stages, batch 16 and a
        100-epoch schedule; here the term is about 2e-5 of the loss at the start and changes
        nothing in a hundred iterations, so the demo uses the RMS residual ("mean", independent of
        batch and patch size) with λ = 1e-2, about 6 % of the loss at the start.
        """
        base = with_overrides(
            cls(),
            data=None,
            num_stages=3,
            num_filters=16,
            features=16,
            num_res_blocks=2,
            strict_depth=4,
            epochs=5,
            iters_per_epoch=20,
            batch_size=4,
            patch_size=48,
            lr=1e-3,
            milestones=(4,),
            lr_decay=0.2,
            weight=1e-2,
            reduction="mean",
            test_size=192,
            threads=1,
        )
        return with_overrides(base, **overrides)

    def validate(self) -> None:
        """Raise ``ValueError`` for unknown arms, a strict arm without a strict group, or bad sizes."""
        self.training.validate()
        unknown = [a for a in self.training.arms if a not in ALL_ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; choose from {ALL_ARMS}.")
        if STRICT_ARM in self.training.arms and self.training.group not in _STRICT_GROUPS:
            raise ValueError(f"the strict arm needs group in {_STRICT_GROUPS}, got {self.training.group!r}.")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}.")
        if self.num_stages < 1:
            raise ValueError(f"num_stages must be positive, got {self.num_stages}.")


def _group_order(group: str) -> int:
    from eqmar.equivariance import get_group

    return get_group(group).order


def build_rcdnet(cfg: DerainExperimentConfig) -> nn.Module:
    """The configured RCDNet, untrained."""
    from eqmar.networks import RCDNet

    return RCDNet(
        in_channels=cfg.in_channels, num_stages=cfg.num_stages, num_filters=cfg.num_filters, features=cfg.features,
        num_res_blocks=cfg.num_res_blocks, group_order=_group_order(cfg.training.group),
    )


def regularised_layers(cfg: DerainExperimentConfig, network: nn.Module) -> list[str]:
    """Qualified names of the convs that carry EQ-Reg (the B-net convs by default)."""
    from eqmar.networks import background_conv_names

    return background_conv_names(network, group_order=_group_order(cfg.training.group), which=cfg.regularised)


def _strict_factory(cfg: DerainExperimentConfig, reference: nn.Module) -> Callable[[], nn.Module]:
    from eqmar.networks import count_parameters
    from eqmar.networks.restoration import matched_strict_network

    params = count_parameters(reference)
    return lambda: matched_strict_network(
        params, cfg.in_channels, cfg.in_channels, depth=cfg.strict_depth, group=cfg.training.group
    )


def rain_degradation(cfg: DerainExperimentConfig) -> Any:
    """``label`` (clean) → ``image`` (clean + random streaks), the synthetic-data degradation."""
    from monai.transforms import Compose, CopyItemsd

    from eqmar.apps.derain.transforms import RandRainStreaksd

    return Compose([CopyItemsd(keys="label", names="image"), RandRainStreaksd(keys="image", **cfg.rain)])


def _limit(items: list[dict[str, Any]], count: int | None) -> list[dict[str, Any]]:
    return items if count is None else items[: max(count, 0)]


def _data(cfg: DerainExperimentConfig) -> dict[str, Any]:
    """Train/test items, their load transform, the degradation and a description for results.json."""
    if cfg.data is not None:
        from eqmar.apps.derain.data import find_rain_folder, load_pair_transform, rain_pairs

        folders = {
            split: find_rain_folder(cfg.data, name)
            for split, name in (("train", cfg.train_split), ("test", cfg.test_split))
        }
        train, test = (
            _limit(rain_pairs(folders[s]), n) for s, n in (("train", cfg.train_images), ("test", cfg.test_images))
        )
        return {
            "train": train, "test": test, "load": load_pair_transform(channels=cfg.in_channels), "degradation": None,
            "meta": {"source": "Rain100L", **{f"{s}_folder": str(f) for s, f in folders.items()}},
        }
    from eqmar.apps.restoration import natural_image_split

    split = natural_image_split("rgb" if cfg.in_channels == 3 else "grey")
    from eqmar.apps.derain.transforms import RandRainStreaks

    rain = RandRainStreaks(**cfg.rain)
    return {
        "train": _limit(split["train"], cfg.train_images), "test": _limit(split["test"], cfg.test_images),
        "load": None, "degradation": rain_degradation(cfg),
        "meta": {"source": "scikit-image bundled photographs + synthetic rain streaks", "rain": rain.ranges,
                 "blend": rain.blend},
    }


def restoration_config(cfg: DerainExperimentConfig) -> Any:
    """The :class:`~eqmar.apps.restoration.RestorationExperimentConfig` of this deraining experiment."""
    from eqmar.apps.restoration import RestorationExperimentConfig
    from eqmar.losses import DerainLoss
    from eqmar.networks import count_parameters

    cfg.validate()
    data = _data(cfg)
    reference = build_rcdnet(cfg)
    strict = _strict_factory(cfg, reference)
    source = "Rain100L" if cfg.data is not None else "embedded photographs"
    meta = {
        **data["meta"],
        "derain": config_as_json(cfg),
        "parameters": {"rcdnet": count_parameters(reference), "strict": count_parameters(strict())},
        "regularised_layers": len(regularised_layers(cfg, reference)),
    }
    return RestorationExperimentConfig(
        task=f"deraining ({source}, RCDNet S={cfg.num_stages})",
        make_network=lambda: build_rcdnet(cfg),
        train_items=data["train"],
        test_items=data["test"],
        degradation=data["degradation"],
        make_strict_network=strict,
        load=data["load"],
        loss_function=DerainLoss(),
        y_channel=cfg.in_channels == 3,
        quantize=True,
        training=cfg.training,
        test_seed=cfg.test_seed,
        test_size=cfg.test_size,
        layers=regularised_layers(cfg, reference),
        square_test_crops=cfg.data is None or cfg.test_size is not None,
        size_multiple=4,
        probe_size=64,
        meta=meta,
    )


def run_derain_experiment(cfg: DerainExperimentConfig) -> dict[str, Any]:
    """Train and score every configured arm; write ``results.json``, ``results.md`` and ``examples.png``.

    Returns:
        The ``results.json`` payload; ``"table"`` holds the Markdown arm table.
    """
    from eqmar.apps.restoration import run_restoration_experiment

    return run_restoration_experiment(restoration_config(cfg))
