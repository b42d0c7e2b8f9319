"""Single-image deraining: Rain100L data, synthetic rain streaks, and the RCDNet experiment behind
``recipes/derain_rain100l.py`` (four arms: plain, aug, eqreg, strict)."""

from __future__ import annotations

from eqmar.apps.derain.data import (
    CLEAN_DIR,
    RAIN_DIR,
    Rain100LDataset,
    find_rain_folder,
    load_pair_transform,
    pair_key,
    rain_pairs,
    write_rain_pairs,
)
from eqmar.apps.derain.transforms import (
    RainParameters,
    RandRainStreaks,
    RandRainStreaksd,
    blend_rain,
    line_kernel,
    rain_streak_layer,
)
from eqmar.apps.derain.workflow import (
    ALL_ARMS,
    DerainExperimentConfig,
    build_rcdnet,
    rain_degradation,
    regularised_layers,
    restoration_config,
    run_derain_experiment,
)

__all__ = [
    "ALL_ARMS",
    "CLEAN_DIR",
    "RAIN_DIR",
    "DerainExperimentConfig",
    "Rain100LDataset",
    "RainParameters",
    "RandRainStreaks",
    "RandRainStreaksd",
    "blend_rain",
    "build_rcdnet",
    "find_rain_folder",
    "line_kernel",
    "load_pair_transform",
    "pair_key",
    "rain_degradation",
    "rain_pairs",
    "rain_streak_layer",
    "regularised_layers",
    "restoration_config",
    "run_derain_experiment",
    "write_rain_pairs",
]
