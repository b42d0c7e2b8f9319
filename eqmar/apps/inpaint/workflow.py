"""The inpainting experiment: random-pixel inpainting under Poisson noise with and without EQ-Reg.

``recipes/inpaint_natural.py`` is a command-line front end to :func:`run_inpainting_experiment`.
Without ``--data`` it uses scikit-image's bundled photographs and a configuration that trains all
four arms on a laptop CPU in minutes (:meth:`InpaintingConfig.demo_default`); with a folder of images
it defaults to a longer run of a wider network (:meth:`InpaintingConfig.published`). The paper does
not state its inpainting backbone or schedule, so neither configuration is "the published protocol":
only the degradation (30 % of pixels missing, Poisson γ = 0.05) is.

Network: MONAI ``BasicUNet`` on ``[noisy masked image, known-pixel mask]`` predicting a correction of
the masked average of the observed pixels (:mod:`eqmar.networks.inpainting`), EQ-Reg on every conv
whose width is divisible by the group order. Strict baseline: a
:class:`~eqmar.networks.StrictRestorationNet` of matched parameter count, same input, same estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from eqmar.apps.inpaint.transforms import DEFAULT_MASK_RATE, DEFAULT_POISSON_GAMMA, RandPixelMaskd
from eqmar.engines import ARMS, STRICT_ARM
from eqmar.engines.config import TrainingConfig, training_field, with_overrides

__all__ = [
    "InpaintingConfig",
    "inpainting_degradation",
    "build_inpainting_network",
    "build_strict_network",
    "run_inpainting_experiment",
    "strict_group",
]


@dataclass
class InpaintingConfig:
    """Settings of an inpainting experiment; fields mirror ``recipes/inpaint_natural.py --help``.

    Attributes:
        data: folder of clean images (None: the bundled scikit-image photographs); split rule in
            :func:`~eqmar.apps.restoration.image_folder_split`.
        color: "rgb" or "grey".
        rate: fraction of pixels dropped.
        gamma: Poisson gain γ.
        features: the six ``BasicUNet`` widths (multiples of 4 so every inner conv is regularised).
        strict_depth: group-conv layers of the strict baseline.
        average_size: window of the masked average the networks correct (also a table row).
        test_seed: seed of the test-set degradation.
        test_size: cap on the side of the square test crops (None: the largest square).
        training: the training settings (:class:`~eqmar.engines.TrainingConfig`; ``weight`` is the
            EQ-Reg λ on the published Frobenius norm, summed over the regularised convs). The demo
            runs on one CPU thread: its small convolutions gain little from a second thread, and on a
            busy shared CPU OpenMP spin-waiting made the plain arm take 528–674 s with 2 threads
            instead of 15–21 s.
    """

    data: Path | None = None
    color: str = "rgb"
    training: TrainingConfig = training_field(
        output_dir=Path("runs/inpaint_natural"), arms=(*ARMS, STRICT_ARM), epochs=50, iters_per_epoch=200,
        batch_size=16, patch_size=64, lr=1e-3, milestones=(25, 40), weight=1e-6, group="C4", reduction="norm",
    )
    rate: float = DEFAULT_MASK_RATE
    gamma: float = DEFAULT_POISSON_GAMMA
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    strict_depth: int = 5
    average_size: int = 3
    test_seed: int = 0
    test_size: int | None = None

    @classmethod
    def published(cls, data: str | Path, **overrides: Any) -> InpaintingConfig:
        """The real-data configuration on a folder of clean images.

        The degradation is the paper's (30 % missing, Poisson γ = 0.05); the paper does not state its
        inpainting network or schedule, so these are ours: BasicUNet widths (16, 16, 32, 64, 128, 16),
        50 epochs × 200 iterations of batch 16 (+16 rotated), 64² patches, Adam 1e-3 halved at
        epochs 25 and 40, λ = 1e-6 (chosen for the demo; the Frobenius norm grows with batch and
        patch size, so re-check it on validation images, or use ``reduction="mean"``).
        """
        return with_overrides(cls(data=Path(data)), **overrides)

    @classmethod
    def demo_default(cls, **overrides: Any) -> InpaintingConfig:
        """A small configuration that trains all four arms on the bundled photographs on a CPU in minutes.

        λ = 1e-6 was picked among 1e-6, 1e-5 and 1e-4 on a validation split of the training
        photographs (motorcycle held out, trained on the other three), never on the test images.
        """
        base = with_overrides(
            cls(), data=None, features=(8, 8, 16, 16, 32, 8), epochs=10, iters_per_epoch=30, batch_size=8,
            patch_size=32, milestones=(8,), test_size=256, weight=1e-6, threads=1,
        )
        return with_overrides(base, **overrides)

    @property
    def channels(self) -> int:
        """Image channels (3 for RGB, 1 for grey)."""
        return 3 if self.color == "rgb" else 1


def inpainting_degradation(rate: float = DEFAULT_MASK_RATE, gamma: float = DEFAULT_POISSON_GAMMA) -> Any:
    """Dict transform: ``"image"`` = mask ⊙ γ·Poisson(``"label"``/γ) with the known-pixel mask appended."""
    from monai.transforms import Compose, CopyItemsd

    return Compose([CopyItemsd(keys="label", names="image"), RandPixelMaskd(keys="image", rate=rate, gamma=gamma)])


def build_inpainting_network(cfg: InpaintingConfig) -> nn.Module:
    """The residual ``BasicUNet``: ``(C + 1)`` input channels (image, mask) to ``C``, correcting the masked average."""
    from eqmar.networks.inpainting import build_inpainting_unet

    return build_inpainting_unet(cfg.channels, cfg.features, cfg.average_size)


def strict_group(group: str) -> str:
    """Group of the strict baseline: the EQ-Reg group, or C4 (P4) for C8, which has no rot90 group conv."""
    return group if group in ("C2", "C4", "D4") else "C4"


def build_strict_network(cfg: InpaintingConfig) -> nn.Module:
    """The strict baseline (P4 for C4, P4M for D4) with the U-Net's parameter count."""
    from eqmar.networks.inpainting import build_inpainting_strict_network

    return build_inpainting_strict_network(
        build_inpainting_network(cfg), cfg.channels, cfg.strict_depth, strict_group(cfg.training.group),
        cfg.average_size,
    )


def _split(cfg: InpaintingConfig) -> dict[str, list[dict[str, Any]]]:
    from eqmar.apps.restoration import image_folder_split, natural_image_split

    return natural_image_split(cfg.color) if cfg.data is None else image_folder_split(cfg.data, cfg.color)


def run_inpainting_experiment(cfg: InpaintingConfig) -> dict[str, Any]:
    """Train the configured arms and write ``results.json``, ``results.md``, ``examples.png``, ``equivariance.png``.

    Raises:
        FileNotFoundError: when ``cfg.data`` is missing or holds no image.
        ValueError: for an unreadable image (named), or images smaller than a patch.

    Returns:
        The content of ``results.json``.
    """
    from eqmar.apps.restoration import RestorationExperimentConfig, run_restoration_experiment
    from eqmar.networks.inpainting import MaskedAverage

    cfg.training.validate()
    if cfg.training.patch_size < 32:
        # BasicUNet pools four times and instance-normalises: a 16-pixel patch leaves 1x1 maps.
        raise ValueError(f"the U-Net needs patches of at least 32 pixels, got --patch-size {cfg.training.patch_size}.")
    split = _split(cfg)
    source = "scikit-image bundled photographs" if cfg.data is None else str(cfg.data)
    experiment = RestorationExperimentConfig(
        task=f"inpainting ({cfg.rate:.0%} missing, Poisson γ = {cfg.gamma:g})",
        make_network=lambda: build_inpainting_network(cfg),
        make_strict_network=lambda: build_strict_network(cfg),
        strict_group=strict_group(cfg.training.group),
        train_items=split["train"],
        test_items=split["test"],
        degradation=inpainting_degradation(cfg.rate, cfg.gamma),
        image_channels=cfg.channels,
        baselines={f"masked {cfg.average_size}×{cfg.average_size} average": MaskedAverage(cfg.average_size)},
        training=cfg.training,
        test_seed=cfg.test_seed,
        test_size=cfg.test_size,
        meta={
            "data": source, "color": cfg.color, "rate": cfg.rate, "gamma": cfg.gamma, "features": list(cfg.features),
            "strict_depth": cfg.strict_depth, "average_size": cfg.average_size,
        },
    )
    return run_restoration_experiment(experiment)
