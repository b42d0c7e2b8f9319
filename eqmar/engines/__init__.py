"""Training workflows shared by every eqmar recipe: the three arms and a configured trainer."""

from __future__ import annotations

from eqmar.engines.arms import ARMS, ArmComponents, EQRegSettings, build_arm
from eqmar.engines.experiment import ArmResult, TaskSpec, run_arms
from eqmar.engines.trainer import build_trainer, latest_checkpoint, loss_terms

__all__ = [
    "ARMS",
    "ArmComponents",
    "ArmResult",
    "EQRegSettings",
    "TaskSpec",
    "build_arm",
    "build_trainer",
    "latest_checkpoint",
    "loss_terms",
    "run_arms",
]
