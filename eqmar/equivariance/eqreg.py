"""EQ-Reg: a soft rotation-equivariance regulariser for an unmodified network, as an Ignite handler.

One :class:`EQReg` object does three things around a MONAI ``SupervisedTrainer``:

1. ``prepare_batch`` draws one group element ``g`` per iteration and turns the batch into the paired
   batch ``[x ; g · x]`` with targets ``[y ; g · y]`` (so the trainer's single forward pass sees both);
2. forward hooks on the chosen layers, registered when a paired batch is prepared and removed when
   the term is taken (or the step fails), compute, during that one forward pass, the per-layer residual
   ``|| g · F(x) - shift_g(F(g · x)) ||`` from the two halves of each layer's output. Each hook hands
   the output on unchanged (the same storage, through one autograd node), so that the backward pass
   adds the residual's gradient to the network's gradient in a single pass
   (:func:`~eqmar.equivariance.functional.tapped_residual`);
3. ``attach(engine)`` adds ``weight · Σ residuals`` to ``engine.state.output["loss"]`` at
   ``IterationEvents.LOSS_COMPLETED`` (before the trainer calls ``backward``) and stores the
   unweighted sum in ``engine.state.output["eq_reg"]`` for logging.

Example::

    eqreg = EQReg(network, layers=torch.nn.Conv2d, group="C4", weight=1e-8)
    trainer = SupervisedTrainer(..., network=network, prepare_batch=eqreg.prepare_batch,
                                train_handlers=[eqreg, ...])

It can also drive a plain PyTorch loop: build the batch with :meth:`EQReg.pair`, run the network, and
add ``eqreg.weight * eqreg.pop_term()`` to the loss.

Between steps the network carries no hook, so ``torch.save(network)``, ``pickle`` and
``copy.deepcopy`` (an EMA or teacher copy) see a plain module. A copy made during an armed step gets
inert hooks: copies never add to the term, and only the layers given to the constructor do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from eqmar.equivariance.functional import Reduction, tapped_residual
from eqmar.equivariance.groups import RotationGroup
from eqmar.equivariance.layers import (
    LayerSpec,
    check_channel_divisibility,
    convs_divisible_by,
    output_channels,
    select_layers,
    unwrap_network,
)
from eqmar.equivariance.pairing import RotationPairing, infer_batch_size

__all__ = ["EQReg"]

logger = logging.getLogger(__name__)


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _describe_output(output: Any) -> str:
    """What a layer returned, for an error message: the shape of its tensor, else its type."""
    features = _first_tensor(output)
    if features is None:
        return f"{type(output).__name__} (no tensor)"
    where = "" if output is features else f" (first item of a {type(output).__name__})"
    return f"a tensor of shape {tuple(features.shape)}{where}"


def _default_layers(network: nn.Module, group: RotationGroup) -> dict[str, nn.Module]:
    """Every conv whose output channels divide by the group order; one warning names those left out."""
    import warnings

    convs = select_layers(network, nn.Conv2d)
    fits = convs_divisible_by(group)
    fitting = {name: m for name, m in convs.items() if fits(name, m)}
    skipped = [f"{name} ({output_channels(m)} channels)" for name, m in convs.items() if name not in fitting]
    if not fitting:
        raise ValueError(
            f"EQ-Reg: no nn.Conv2d of {type(network).__name__} has output channels divisible by the order "
            f"{group.order} of {group.name} ({', '.join(skipped)}); choose layers= explicitly."
        )
    if skipped:
        warnings.warn(
            f"EQ-Reg: {len(skipped)} conv(s) left out, their output channels not divisible by {group.order} "
            f"({group.name}): {', '.join(skipped)}",
            UserWarning, stacklevel=3,
        )
    return fitting


class _InertHook:
    """What a regularised layer's hook becomes in a copy of the network (deepcopy, pickle): nothing."""

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        return None


class _LayerHook:
    """The forward hook of one regularised layer.

    It acts only on the very module it was registered on, so a copy of the network that shares the
    hook (``copy.deepcopy`` copies the hook dicts) does not add residuals; copied or pickled, it
    turns into an :class:`_InertHook`, so the network stays picklable even during an armed step.
    """

    def __init__(self, eqreg: EQReg, name: str, module: nn.Module) -> None:
        self.eqreg, self.name, self.module = eqreg, name, module

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if module is not self.module:
            return None
        return self.eqreg._layer_output(self.name, module, output)

    def __reduce__(self) -> tuple[type, tuple]:
        return _InertHook, ()


def _replace_first_tensor(output: Any, tensor: torch.Tensor) -> Any:
    """``output`` with the tensor that :func:`_first_tensor` found swapped for ``tensor``."""
    if isinstance(output, torch.Tensor):
        return tensor
    return type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])


class EQReg(RotationPairing):
    """Soft equivariance regulariser attached to selected layers of an unmodified network.

    Args:
        network: the network to regularise (a DDP/DataParallel wrapper is unwrapped for the hooks).
        layers: which layers to regularise: a module type or tuple of types, qualified names or
            full-match regular expressions, or a predicate ``(name, module) -> bool``. The residual is
            taken on each layer's raw output. Default: every ``nn.Conv2d`` whose output channels divide
            by the group order, with one warning naming the convs left out (typically the 1- or
            3-channel output conv of a restoration network).
        group: "C4" (published), "C2", "D4" or "C8", or a group instance.
        weight: the regularisation weight λ of ``loss + λ · Σ_l residual_l``.
        reduction: "norm" (published Frobenius norm) or "mean" (root-mean-square; see
            :mod:`eqmar.equivariance.functional` for the equivalent λ).
        image_keys: keys of a dict batch to transform together (default: every (B, C, H, W) tensor).
        prepare_batch: the trainer's usual ``prepare_batch``, applied to the paired batch.
        elements: group elements to draw from (default: all, identity included, as published).
        seed: seed of the element draws; every DDP rank must use the same seed so all ranks rotate
            alike.
        interp_modes: per-key interpolation mode for C8 (e.g. ``{"mask": "nearest"}``).
        output_key: where the unweighted term is stored in ``engine.state.output``.

    Raises:
        ValueError: when a layer name does not exist, nothing is selected, or a selected layer's
            channel count is not divisible by the group order.

    Example: one step of a plain PyTorch loop (``prepare_batch`` and ``train_handlers`` do the same
    inside a MONAI ``SupervisedTrainer``):

    >>> import torch
    >>> from eqmar import EQReg, convs_divisible_by
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(
    ...     torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1)
    ... )
    >>> eqreg = EQReg(net, layers=convs_divisible_by("C4"), group="C4", weight=1e-3)
    >>> x, y = eqreg.pair((torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)), n=1)  # [x ; rot90(x)]
    >>> x.shape
    torch.Size([4, 1, 16, 16])
    >>> loss = torch.nn.functional.mse_loss(net(x), y) + eqreg.weight * eqreg.pop_term()
    >>> loss.backward()
    >>> eqreg.hooks_registered  # hooks live only from pair() to pop_term()
    False
    """

    def __init__(
        self,
        network: nn.Module,
        layers: LayerSpec | None = None,
        group: str | RotationGroup = "C4",
        weight: float = 1e-8,
        reduction: Reduction = "norm",
        image_keys: Sequence[str] | None = None,
        prepare_batch: Callable | None = None,
        elements: Sequence[int] | None = None,
        seed: int = 0,
        interp_modes: Mapping[str, str] | None = None,
        output_key: str = "eq_reg",
    ) -> None:
        if reduction not in ("norm", "mean"):
            raise ValueError(f"EQReg: reduction must be 'norm' or 'mean', got {reduction!r}.")
        if weight < 0:
            raise ValueError(f"EQReg: weight must be non-negative, got {weight}.")
        super().__init__(group, image_keys, prepare_batch, elements, seed, interp_modes)
        self.network = unwrap_network(network)
        if layers is None:
            self.layers = _default_layers(self.network, self.group)
        else:
            self.layers = select_layers(self.network, layers)
            check_channel_divisibility(self.layers, self.group)
        self.weight = float(weight)
        self.reduction: Reduction = reduction
        self.output_key = output_key
        self._element: int | None = None
        self._half: int | None = None
        self._residuals: list[torch.Tensor] = []
        self._handles: list[Any] = []

    # ------------------------------------------------------------------ hooks
    def register_hooks(self) -> None:
        """Register the forward hooks (idempotent); :meth:`pair` does it for each step."""
        if self._handles:
            return
        self._handles = [m.register_forward_hook(_LayerHook(self, name, m)) for name, m in self.layers.items()]

    def remove_hooks(self) -> None:
        """Remove the forward hooks and forget any pending residuals."""
        self._remove_handles()
        self._disarm()

    def _remove_handles(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def hooks_registered(self) -> bool:
        return bool(self._handles)

    def _layer_output(self, name: str, module: nn.Module, output: Any) -> Any:
        """The hook's work: record the layer's residual and pass its output on (see tapped_residual)."""
        if self._element is None or not module.training:
            return None
        features = _first_tensor(output)
        if features is None or features.ndim != 4:
            raise ValueError(
                f"EQ-Reg: layer {name!r} must output a (B, C, H, W) tensor, got {_describe_output(output)}."
            )
        if features.shape[1] % self.group.order:
            raise ValueError(
                f"EQ-Reg: layer {name!r} outputs {features.shape[1]} channels, not divisible by the "
                f"order {self.group.order} of {self.group.name}."
            )
        if features.shape[0] != 2 * self._half:
            raise RuntimeError(
                f"EQ-Reg: layer {name!r} saw batch size {features.shape[0]}, expected the paired batch "
                f"2 x {self._half}. Does the network split or reshape the batch dimension?"
            )
        passed_on, residual = tapped_residual(features, self._half, self._element, self.group, self.reduction)
        self._residuals.append(residual)
        # the layer's output is replaced by its pass-through alias so that the backward adds the
        # residual's gradient to the network's in one pass (see tapped_residual)
        return _replace_first_tensor(output, passed_on)

    # ------------------------------------------------------------ batch side
    def pair(self, batch: Any, n: int | None = None) -> Any:
        """Return the paired batch ``[x ; g · x]`` and arm the hooks for the next forward pass.

        Args:
            batch: a dict, tensor or (image, label) batch.
            n: group element; drawn with :meth:`draw_element` when None.
        """
        n = self.draw_element() if n is None else self.group.check_element(n)
        half = infer_batch_size(batch, self.image_keys)
        paired = super().pair(batch, n)
        self._element, self._half = n, half
        self._residuals = []
        self.register_hooks()
        return paired

    def _disarm(self) -> None:
        """Forget the step's element and residuals and take the hooks off the network."""
        self._remove_handles()
        self._element = None
        self._half = None
        self._residuals = []

    # ------------------------------------------------------------- loss side
    def pop_term(self) -> torch.Tensor:
        """Return the unweighted ``Σ residuals`` of the last forward pass and disarm the hooks.

        Multiply by :attr:`weight` before adding it to a loss.

        Raises:
            RuntimeError: when no paired batch was prepared or no regularised layer ran, which would
                otherwise silently switch the regulariser off.
        """
        if self._element is None:
            raise RuntimeError(
                "EQ-Reg: no paired batch was prepared for this step; pass `prepare_batch=eqreg.prepare_batch` "
                "to the trainer (or call `eqreg.pair(batch)` before the forward pass)."
            )
        if not self._residuals:
            raise RuntimeError(
                "EQ-Reg: none of the regularised layers ran in training mode during the forward pass "
                f"(layers: {list(self.layers)[:5]}...)."
            )
        total = torch.stack(self._residuals).sum()
        self._disarm()
        return total

    # ------------------------------------------------------------ Ignite side
    def attach(self, engine: Any) -> None:
        """Attach to an Ignite/MONAI trainer (called by MONAI for objects in ``train_handlers``)."""
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._add_term)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)

    def _on_started(self, engine: Any) -> None:
        self._disarm()

    def _on_iteration_completed(self, engine: Any) -> None:
        # the term was taken at LOSS_COMPLETED; this covers a step whose loss never completed
        self._disarm()

    def _add_term(self, engine: Any) -> None:
        output = engine.state.output
        term = self.pop_term()
        output[self.output_key] = term.detach()
        if self.weight:
            output["loss"] = output["loss"] + self.weight * term.to(output["loss"].dtype)

    def _on_completed(self, engine: Any) -> None:
        self.remove_hooks()

    def _on_exception(self, engine: Any, e: BaseException) -> None:
        self.remove_hooks()
        # Ignite hands an exception to the EXCEPTION_RAISED handlers instead of raising it; when this
        # handler is the only one, re-raise so that attaching EQ-Reg never swallows an error.
        from ignite.engine import Events

        handlers = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED, [])
        if len(handlers) <= 1:
            raise e

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Draw-generator state (and the weight, for the record), so a resumed run continues the same
        element sequence."""
        return {**super().state_dict(), "weight": self.weight}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the draw-generator state. The weight stays the one given to the constructor (the one
        results and model files record); a checkpoint made with another weight is reported."""
        super().load_state_dict(state)
        stored = state.get("weight")
        if stored is not None and float(stored) != self.weight:
            logger.warning(
                "EQ-Reg: the checkpoint was trained with weight %g; continuing with the requested weight %g",
                float(stored), self.weight,
            )

    def __enter__(self) -> EQReg:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove_hooks()

    def __repr__(self) -> str:
        return (
            f"EQReg(group={self.group.name}, weight={self.weight:g}, reduction={self.reduction!r}, "
            f"layers={len(self.layers)})"
        )
