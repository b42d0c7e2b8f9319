"""Pieces shared by the natural-image restoration recipes (inpainting, deraining).

- :mod:`~eqmar.apps.restoration.natural_images`: bundled scikit-image photographs or a folder of
  images, split into train/test as ``{"label", "name"}`` dicts.
- :mod:`~eqmar.apps.restoration.metrics`: PSNR/SSIM in [0, 1], optionally on BT.601 Y, as functions
  and Ignite metrics.
- :mod:`~eqmar.networks.restoration`: a residual MONAI ``BasicUNet`` and its parameter-matched
  strict P4/P4M baseline.
- :mod:`~eqmar.apps.restoration.experiment`: the four-arm experiment, its table, JSON and figures.
"""

from __future__ import annotations

from eqmar.apps.restoration.experiment import (
    RestorationExperimentConfig,
    degraded_test_items,
    evaluate_restoration,
    run_restoration_experiment,
    strict_label,
    training_loader,
)
from eqmar.apps.restoration.metrics import (
    RestorationPSNR,
    RestorationSSIM,
    prepare_for_scoring,
    restoration_psnr,
    restoration_ssim,
    rgb_to_y,
)
from eqmar.apps.restoration.natural_images import (
    DEFAULT_SPLIT,
    IMAGE_SUFFIXES,
    NATURAL_IMAGES,
    image_folder_split,
    load_natural_image,
    natural_image_split,
    read_image,
    square_crop_size,
)
from eqmar.networks.restoration import ResidualRestorationNet, matched_strict_network, restoration_unet

__all__ = [
    "DEFAULT_SPLIT",
    "IMAGE_SUFFIXES",
    "NATURAL_IMAGES",
    "RestorationExperimentConfig",
    "RestorationPSNR",
    "RestorationSSIM",
    "ResidualRestorationNet",
    "degraded_test_items",
    "evaluate_restoration",
    "image_folder_split",
    "load_natural_image",
    "matched_strict_network",
    "natural_image_split",
    "prepare_for_scoring",
    "read_image",
    "restoration_psnr",
    "restoration_ssim",
    "restoration_unet",
    "rgb_to_y",
    "run_restoration_experiment",
    "square_crop_size",
    "strict_label",
    "training_loader",
]
