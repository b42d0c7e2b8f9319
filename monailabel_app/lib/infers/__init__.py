"""Inference tasks of the MAR app."""

from lib.infers.mar import MARInfer, MARInputError

__all__ = ["MARInfer", "MARInputError"]
