"""Training losses for metal artifact reduction."""

from __future__ import annotations

from eqmar.losses.mar_loss import MARLoss

__all__ = ["MARLoss"]
