"""CT metal artifact reduction: inputs, evaluation with the SynDeepLesion metric, figures, the experiment, inference.

- :mod:`eqmar.apps.mar.workflow`: :class:`MARExperimentConfig` and :func:`run_mar_experiment`.
- :mod:`eqmar.apps.mar.inference`: :class:`MARInference`, correction of stored HU slices and volumes.
- :mod:`eqmar.apps.mar.inferer`: the MONAI inferer of HU volumes the bundle and the MONAI Label app use.
- :mod:`eqmar.apps.mar.model_file`: the self-describing model file, its reader and its saver.
- :mod:`eqmar.apps.mar.cli`: the ``eqmar-infer`` command line.

Names are resolved lazily, so that the command line's ``--help`` does not import the training stack.
"""

from __future__ import annotations

from eqmar.utils import lazy_exports

_EXPORTS = {
    "evaluate_mar": "evaluation",
    "input_predictor": "evaluation",
    "network_predictor": "evaluation",
    "DEFAULT_METAL_THRESHOLD_HU": "inference",
    "MARInference": "inference",
    "image_domain_li": "inference",
    "metal_trace_of": "inference",
    "model_geometry": "inference",
    "threshold_metal_mask": "inference",
    "DISPLAY_WINDOW_HU": "figures",
    "mu_to_hu": "figures",
    "plot_mar_examples": "figures",
    "MARInputs": "transforms",
    "MARInputsd": "transforms",
    "BACKBONES": "workflow",
    "MARExperimentConfig": "workflow",
    "build_network": "workflow",
    "ensure_demo_data": "workflow",
    "run_mar_experiment": "workflow",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
