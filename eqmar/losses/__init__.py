"""Training losses for metal artifact reduction and deraining."""

from __future__ import annotations

from eqmar.losses.derain_loss import DerainLoss
from eqmar.losses.mar_loss import MARLoss

__all__ = ["MARLoss", "DerainLoss"]
