"""Rotated-digit classification: data on a rotation-safe canvas, the CNN and its strict baselines,
accuracy under rotation, and the experiment behind ``recipes/classify_rotated_digits.py``."""

from __future__ import annotations

from eqmar.apps.classify.data import (
    ClassificationData,
    ImageSet,
    canvas_transform,
    load_classification_data,
    load_digits_images,
    load_image_folder,
    make_loader,
    split_indices,
)
from eqmar.apps.classify.evaluation import RIGHT_ANGLES, evaluate_rotations, predict, rotate_images
from eqmar.apps.classify.figures import plot_accuracy_curves
from eqmar.apps.classify.workflow import (
    ALL_ARMS,
    STRICT_ARMS,
    ClassificationConfig,
    build_task,
    run_classification_experiment,
)
from eqmar.networks.classifier import (
    HEADS,
    FieldBatchNorm,
    RotationClassifierCNN,
    strict_classifier,
    strict_fields,
    with_field_norm,
)

__all__ = [
    "ALL_ARMS",
    "HEADS",
    "RIGHT_ANGLES",
    "STRICT_ARMS",
    "ClassificationConfig",
    "ClassificationData",
    "FieldBatchNorm",
    "ImageSet",
    "RotationClassifierCNN",
    "build_task",
    "canvas_transform",
    "evaluate_rotations",
    "load_classification_data",
    "load_digits_images",
    "load_image_folder",
    "make_loader",
    "plot_accuracy_curves",
    "predict",
    "rotate_images",
    "run_classification_experiment",
    "split_indices",
    "strict_classifier",
    "strict_fields",
    "with_field_norm",
]
