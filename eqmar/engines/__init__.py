"""Training workflows shared by every eqmar recipe: the training settings, the arms, a configured
trainer and the reports.
"""

from __future__ import annotations

from eqmar.engines.arms import ARMS, ArmComponents, EQRegSettings, build_arm
from eqmar.engines.config import TRAINING_FIELDS, TrainingConfig, training_field, with_overrides
from eqmar.engines.distributed import (
    ShardedSampler,
    add_distributed_arguments,
    is_main_process,
    launch,
    main_process_first,
    shard_loader,
)
from eqmar.engines.experiment import STRICT_ARM, ArmResult, TaskSpec, run_arms
from eqmar.engines.report import (
    RUN_ONLY_SETTINGS,
    arm_summary,
    config_as_json,
    format_arm_table,
    format_equivariance_table,
    merge_earlier_arms,
    note_earlier_arms,
    plot_image_grid,
    write_results,
)
from eqmar.engines.trainer import build_trainer, latest_checkpoint, loss_terms

__all__ = [
    "ARMS",
    "ArmComponents",
    "ArmResult",
    "EQRegSettings",
    "RUN_ONLY_SETTINGS",
    "STRICT_ARM",
    "ShardedSampler",
    "TaskSpec",
    "TRAINING_FIELDS",
    "TrainingConfig",
    "add_distributed_arguments",
    "build_arm",
    "arm_summary",
    "build_trainer",
    "config_as_json",
    "format_arm_table",
    "format_equivariance_table",
    "is_main_process",
    "latest_checkpoint",
    "launch",
    "loss_terms",
    "main_process_first",
    "merge_earlier_arms",
    "note_earlier_arms",
    "plot_image_grid",
    "run_arms",
    "shard_loader",
    "training_field",
    "with_overrides",
    "write_results",
]
