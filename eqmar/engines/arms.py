"""The three training arms of an honest EQ-Reg comparison.

- ``plain``: the network on the original batches (no rotation augmentation).
- ``aug``: the paired batch ``[x ; g · x]`` each step (rot90 augmentation in the EQ-Reg layout: same
  batches and compute as ``eqreg``), no regulariser.
- ``eqreg``: the paired batch plus the EQ-Reg term.

The published baselines were trained without the rotated half, which mixes the effect of the
regulariser with that of augmentation; ``aug`` separates the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from eqmar.equivariance import EQReg, RotationPairing
from eqmar.equivariance.functional import Reduction
from eqmar.equivariance.layers import LayerSpec

__all__ = ["ARMS", "EQRegSettings", "ArmComponents", "build_arm"]

ARMS = ("plain", "aug", "eqreg")


@dataclass
class EQRegSettings:
    """How the ``aug`` and ``eqreg`` arms rotate and regularise.

    Attributes:
        weight: λ of ``loss + λ · Σ residuals``.
        group: "C4" (published), "C2", "D4" or "C8".
        layers: the regularised layers (see :class:`~eqmar.equivariance.EQReg`).
        reduction: "norm" (published) or "mean".
        elements: group elements to draw from (default all).
    """

    weight: float = 1e-8
    group: str = "C4"
    layers: LayerSpec = nn.Conv2d
    reduction: Reduction = "norm"
    elements: Sequence[int] | None = None


@dataclass
class ArmComponents:
    """What a trainer needs for one arm.

    Attributes:
        prepare_batch: the trainer's ``prepare_batch``.
        handlers: handlers to attach (the EQ-Reg handler for ``eqreg``).
        checkpoint_state: objects whose state belongs in checkpoints (the draw generator).
        eqreg: the regulariser, for ``eqreg``.
    """

    prepare_batch: Callable
    handlers: list[Any] = field(default_factory=list)
    checkpoint_state: dict[str, Any] = field(default_factory=dict)
    eqreg: EQReg | None = None


def build_arm(
    arm: str,
    network: nn.Module,
    settings: EQRegSettings | None = None,
    prepare_batch: Callable | None = None,
    image_keys: Sequence[str] | None = None,
    seed: int = 0,
) -> ArmComponents:
    """Return the ``prepare_batch``, handlers and checkpoint state of a training arm.

    Args:
        arm: "plain", "aug" or "eqreg".
        network: the network (hooks go on it for ``eqreg``).
        settings: rotation/regulariser settings.
        prepare_batch: the task's inner ``prepare_batch`` (default MONAI's).
        image_keys: dict-batch keys rotated together (default every (B, C, H, W) tensor).
        seed: seed of the group-element draws.
    """
    if arm not in ARMS:
        raise ValueError(f"Unknown arm {arm!r}; choose one of {ARMS}.")
    settings = settings or EQRegSettings()
    if prepare_batch is None:
        from monai.engines.utils import default_prepare_batch

        prepare_batch = default_prepare_batch
    if arm == "plain":
        return ArmComponents(prepare_batch=prepare_batch)
    if arm == "aug":
        pairing = RotationPairing(settings.group, image_keys, prepare_batch, settings.elements, seed)
        return ArmComponents(prepare_batch=pairing.prepare_batch, checkpoint_state={"pairing": pairing})
    eqreg = EQReg(
        network,
        layers=settings.layers,
        group=settings.group,
        weight=settings.weight,
        reduction=settings.reduction,
        image_keys=image_keys,
        prepare_batch=prepare_batch,
        elements=settings.elements,
        seed=seed,
    )
    return ArmComponents(
        prepare_batch=eqreg.prepare_batch, handlers=[eqreg], checkpoint_state={"pairing": eqreg}, eqreg=eqreg
    )
