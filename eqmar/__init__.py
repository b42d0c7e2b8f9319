"""eqmar: rotation-equivariance regularisation (EQ-Reg) for image restoration, built on MONAI.

Sub-packages:

- :mod:`eqmar.equivariance`: group actions, the EQ-Reg residual, the Ignite/MONAI handler and diagnostics.
- :mod:`eqmar.ct`: fan-beam CT geometry, projectors and the SynDeepLesion metal-artifact simulator.
- :mod:`eqmar.data`: image readers and the SynDeepLesion on-disk layout.
- :mod:`eqmar.metrics`: the SynDeepLesion MAR metric.
- :mod:`eqmar.networks`: restoration backbones (DICDNet, ACDNet, ...).

Sub-packages are imported lazily so that ``import eqmar`` stays light.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
