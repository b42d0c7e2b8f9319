"""eqmar: rotation-equivariance regularisation (EQ-Reg) for image restoration, built on MONAI.

Sub-packages:

- :mod:`eqmar.equivariance`: group actions, the EQ-Reg residual, the Ignite/MONAI handler and diagnostics.
- :mod:`eqmar.ct`: fan-beam CT geometry, projectors and the SynDeepLesion metal-artifact simulator.
- :mod:`eqmar.data`: image readers and the SynDeepLesion on-disk layout.
- :mod:`eqmar.metrics`: the SynDeepLesion MAR metric.
- :mod:`eqmar.networks`: restoration backbones (DICDNet, ACDNet, ...).

Sub-packages are imported lazily so that ``import eqmar`` stays light. The regulariser's names are
available from the top level (imported on first use)::

    from eqmar import EQReg, convs_divisible_by, equivariance_report
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: Names served from :mod:`eqmar.equivariance` on first access (PEP 562), so importing eqmar stays light.
_EQUIVARIANCE_NAMES = (
    "EQReg", "equivariance_report", "convs_divisible_by", "EquivarianceReport", "RotationGroup", "get_group",
    "C2", "C4", "D4", "C8", "GROUPS",
)

__all__ = ["__version__", *_EQUIVARIANCE_NAMES]


def __getattr__(name: str) -> Any:
    if name in _EQUIVARIANCE_NAMES:
        from eqmar import equivariance

        return getattr(equivariance, name)
    raise AttributeError(f"module 'eqmar' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
