"""CT metal artifact reduction: inputs, evaluation with the SynDeepLesion metric, figures, the experiment."""

from __future__ import annotations

from eqmar.apps.mar.evaluation import evaluate_mar, input_predictor, network_predictor
from eqmar.apps.mar.inference import (
    DEFAULT_METAL_THRESHOLD_HU,
    MARInference,
    image_domain_li,
    metal_trace_of,
    model_geometry,
    threshold_metal_mask,
)
from eqmar.apps.mar.figures import DISPLAY_WINDOW_HU, mu_to_hu, plot_mar_examples
from eqmar.apps.mar.transforms import MARInputs, MARInputsd
from eqmar.apps.mar.workflow import BACKBONES, MARExperimentConfig, build_network, ensure_demo_data, run_mar_experiment

__all__ = [
    "BACKBONES",
    "DEFAULT_METAL_THRESHOLD_HU",
    "MARInference",
    "image_domain_li",
    "metal_trace_of",
    "model_geometry",
    "threshold_metal_mask",
    "DISPLAY_WINDOW_HU",
    "MARExperimentConfig",
    "MARInputs",
    "MARInputsd",
    "build_network",
    "ensure_demo_data",
    "evaluate_mar",
    "input_predictor",
    "mu_to_hu",
    "network_predictor",
    "plot_mar_examples",
    "run_mar_experiment",
]
