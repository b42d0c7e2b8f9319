"""Training tasks of the MAR app."""

from lib.trainers.mar import MARTrain

__all__ = ["MARTrain"]
