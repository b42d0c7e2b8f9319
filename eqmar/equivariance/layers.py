"""Choose the layers of an unmodified network whose outputs EQ-Reg compares."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable

from torch import nn

from eqmar.equivariance.groups import RotationGroup, get_group

__all__ = [
    "LayerSpec",
    "unwrap_network",
    "select_layers",
    "output_channels",
    "check_channel_divisibility",
    "convs_divisible_by",
]

#: What may name the regularised layers: a module type or tuple of types (every instance),
#: a qualified name / regular expression, a list of names, or a predicate ``(name, module) -> bool``.
LayerSpec = type | tuple | str | Iterable[str] | Callable[[str, nn.Module], bool]


def unwrap_network(network: nn.Module) -> nn.Module:
    """Return the module wrapped by ``DistributedDataParallel``/``DataParallel`` (or ``network`` itself).

    Hooks must sit on the unwrapped module: DDP's wrapper only forwards to it.
    """
    while isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        network = network.module
    return network


def _strip_wrapper_prefix(name: str) -> str:
    return name[len("module.") :] if name.startswith("module.") else name


def _select_by_names(modules: dict[str, nn.Module], names: list[str]) -> dict[str, nn.Module]:
    selected: dict[str, nn.Module] = {}
    for raw in names:
        name = _strip_wrapper_prefix(raw)
        if name in modules:
            selected[name] = modules[name]
            continue
        pattern = re.compile(name)
        matches = {k: m for k, m in modules.items() if k and pattern.fullmatch(k)}
        if not matches:
            close = difflib.get_close_matches(name, list(modules), n=5)
            hint = f" Did you mean {close}?" if close else ""
            raise ValueError(
                f"EQ-Reg: no layer named {raw!r} (or matching it as a regular expression) in the network.{hint}"
            )
        selected.update(matches)
    return selected


def select_layers(network: nn.Module, layers: LayerSpec = nn.Conv2d) -> dict[str, nn.Module]:
    """Resolve a layer specification to ``{qualified name: module}`` in definition order.

    Args:
        network: the (possibly DDP-wrapped) network.
        layers: module type(s), qualified name(s) or full-match regular expression(s), or a predicate
            ``(name, module) -> bool``.

    Raises:
        ValueError: when a name matches nothing (with close matches suggested) or nothing is selected.
    """
    net = unwrap_network(network)
    modules = dict(net.named_modules())
    if isinstance(layers, type) or (isinstance(layers, tuple) and all(isinstance(t, type) for t in layers)):
        selected = {k: m for k, m in modules.items() if isinstance(m, layers)}
    elif isinstance(layers, str):
        selected = _select_by_names(modules, [layers])
    elif callable(layers):
        selected = {k: m for k, m in modules.items() if layers(k, m)}
    else:
        selected = _select_by_names(modules, list(layers))
    if not selected:
        raise ValueError(f"EQ-Reg: the layer specification {layers!r} selects no module of {type(net).__name__}.")
    return selected


def output_channels(module: nn.Module) -> int | None:
    """Number of output channels of a conv-like module, or None when it is not known before a forward."""
    for attr in ("out_channels", "num_features", "num_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return None


def check_channel_divisibility(layers: dict[str, nn.Module], group: str | RotationGroup) -> None:
    """Raise a ``ValueError`` naming every layer whose channel count is not a multiple of the group order."""
    grp = get_group(group)
    bad = [
        f"{name} ({channels} channels)"
        for name, module in layers.items()
        if (channels := output_channels(module)) is not None and channels % grp.order
    ]
    if bad:
        raise ValueError(
            f"EQ-Reg with group {grp.name} needs output channels divisible by {grp.order}; "
            f"these layers are not: {', '.join(bad)}. Exclude them or change their width."
        )


def convs_divisible_by(
    group: str | RotationGroup, types: type | tuple[type, ...] = nn.Conv2d
) -> Callable[[str, nn.Module], bool]:
    """Predicate selecting every conv whose output channels fit the group's orientation blocks.

    Output convs with one channel (the restored image) have no orientation channels; this predicate
    leaves them out explicitly, e.g. ``EQReg(unet, layers=convs_divisible_by("C4"))``.
    """
    order = get_group(group).order

    def predicate(name: str, module: nn.Module) -> bool:
        channels = output_channels(module)
        return isinstance(module, types) and channels is not None and channels % order == 0

    return predicate
