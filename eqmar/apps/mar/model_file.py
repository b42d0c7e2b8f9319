"""Self-describing MAR model files: the weights plus what is needed to rebuild the network.

A file written by :func:`save_mar_model` holds::

    {"format": "eqmar-mar-model/1", "network": {"backbone": ..., "kwargs": {...}},
     "state_dict": ..., "meta": {...}}

:func:`load_mar_model` rebuilds the network and loads the weights strictly: a missing or unexpected
key is an error, never a silently random layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "MODEL_FORMAT",
    "network_spec",
    "build_from_spec",
    "save_mar_model",
    "load_mar_model",
    "read_model_payload",
    "check_model_path",
    "checkpoint_network_weights",
    "describe_weight_mismatch",
    "is_state_dict",
]

MODEL_FORMAT = "eqmar-mar-model/1"


def network_spec(backbone: str, **kwargs: Any) -> dict[str, Any]:
    """A JSON-able description of a backbone: its name and constructor arguments."""
    return {"backbone": backbone, "kwargs": dict(kwargs)}


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Construct the network described by :func:`network_spec` (untrained)."""
    from eqmar import networks

    if not isinstance(spec, Mapping) or not isinstance(spec.get("kwargs", {}), Mapping):
        raise ValueError(f"model spec must be {{'backbone': name, 'kwargs': {{...}}}}, got {spec!r}")
    backbone = spec.get("backbone")
    kwargs = dict(spec.get("kwargs", {}))
    classes = {"dicdnet": networks.DICDNet, "acdnet": networks.ACDNet, "oscnet": networks.OSCNet}
    if backbone != "unet" and backbone not in classes:
        raise ValueError(f"unknown backbone {backbone!r} in model spec; expected one of {sorted(classes) + ['unet']}")
    build = networks.mar_baseline_unet if backbone == "unet" else classes[backbone]
    try:
        return build(**kwargs)
    except TypeError as error:  # an argument the constructor does not take (e.g. a spec from another version)
        raise ValueError(f"model spec does not fit the {backbone} network: {error}") from error


def save_mar_model(path: str | Path, network: nn.Module, spec: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
    """Write weights and network spec to ``path`` (via a temporary file: a kill never leaves half a model)."""
    from eqmar.utils import atomic_write

    payload = {"format": MODEL_FORMAT, "network": spec, "state_dict": network.state_dict(), "meta": meta or {}}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_mar_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and strictly load a model written by :func:`save_mar_model`.

    Returns:
        ``(network in eval mode, full payload without the state dict)``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: a folder, an empty or unreadable file, a training checkpoint (which lacks the
            network description) or another file that is not an eqmar MAR model file, a network
            description that cannot be built, or weights that do not match the network.
    """
    path = Path(path)
    payload = read_model_payload(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        if checkpoint_network_weights(payload) is not None:
            raise ValueError(_training_checkpoint_message(path))
        if is_state_dict(payload):
            raise ValueError(
                f"{path}: bare weights ({len(payload)} tensors) without the network description, so the network "
                f"cannot be rebuilt; use the model file <arm>/model.pt that training writes, or write one with "
                f"eqmar.apps.mar.model_file.save_mar_model(path, network, network_spec(backbone, **kwargs), "
                f"meta={{'geometry_tag': <the training data's geometry, e.g. '640geo'>}})."
            )
        raise ValueError(f"{path}: not an eqmar MAR model file (expected format {MODEL_FORMAT!r}).")
    try:
        network = build_from_spec(payload.get("network"))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    state = payload.get("state_dict")
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: the model file holds no state dict.")
    backbone = payload["network"].get("backbone")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: weights do not match the {backbone} network: {describe_weight_mismatch(network, state)}"
        ) from error
    network.eval()
    return network, {k: v for k, v in payload.items() if k != "state_dict"}


def read_model_payload(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` of a model or checkpoint file (tensors only), with one-line errors naming the file.

    Args:
        path: the file.
        map_location: where tensors are loaded.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ValueError: a folder, an empty file, or a file torch cannot read.
    """
    check_model_path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive ("PK"); the legacy format is a pickle (protocol byte 0x80). Anything
    # else (a text or image file) makes torch.load fail with a meaningless KeyError or IndexError.
    if head != b"PK" and head[:1] != b"\x80":
        raise ValueError(f"{path}: not a PyTorch file (torch.save writes a zip archive); expected an eqmar model file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"{path}: not a readable model file ({type(error).__name__}: {first_line})") from error


def check_model_path(path: Path) -> None:
    """Name the usual wrong paths (missing, a folder, an empty file) before torch reports them obscurely.

    Args:
        path: the path given as a model file.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        ValueError: ``path`` is a folder (naming the ``model.pt`` inside, if any) or an empty file.
    """
    if path.is_dir():
        inside = path / "model.pt"
        hint = f"; the model file of a training arm is {inside}" if inside.is_file() else ""
        raise ValueError(f"{path} is a folder, not a model file{hint}.")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a model file (was it copied or saved completely?).")


def checkpoint_network_weights(payload: Any) -> Mapping[str, torch.Tensor] | None:
    """The network's state dict in a training checkpoint of :func:`eqmar.engines.build_trainer`, else None.

    Such checkpoints (written by MONAI's ``CheckpointSaver``) hold the state of every training
    object: the network's under :data:`~eqmar.engines.trainer.CHECKPOINT_NETWORK_KEY`, and
    ``"optimizer"``, ``"trainer"``, ... They do not say which network the weights belong to.

    Args:
        payload: what ``torch.load`` returned for the file.

    Returns:
        The network's state dict, or None when ``payload`` is not such a checkpoint.
    """
    from eqmar.engines.trainer import CHECKPOINT_NETWORK_KEY

    if not isinstance(payload, Mapping) or payload.get("format") == MODEL_FORMAT:
        return None
    state = payload.get(CHECKPOINT_NETWORK_KEY)
    return state if is_state_dict(state) else None


def is_state_dict(payload: Any) -> bool:
    """Whether ``payload`` is a plain, non-empty state dict (names to tensors).

    That is what ``torch.save(net.state_dict())`` writes, and what checkpoints hold per object.
    """
    return isinstance(payload, Mapping) and bool(payload) and all(isinstance(v, torch.Tensor) for v in payload.values())


def _training_checkpoint_message(path: Path) -> str:
    """Why a training checkpoint cannot be used for inference, and which file to use instead."""
    # build_trainer writes <arm>/checkpoints/checkpoint_*.pt; the arm writes <arm>/model.pt when it finishes
    model = path.parent.parent / "model.pt" if path.parent.name == "checkpoints" else path.parent / "model.pt"
    if model.is_file():
        where = f"use {model}, written next to it"
    else:
        where = (
            "use the model file <arm>/model.pt that training writes when the arm finishes "
            f"({model} does not exist yet; finish training with --resume)"
        )
    return (
        f"{path} is a training checkpoint (network, optimizer and trainer state), not a model file: it does not "
        f"describe the network architecture, so the network cannot be rebuilt from it; {where}."
    )


def describe_weight_mismatch(network: nn.Module, state: Mapping[str, Any], limit: int = 3) -> str:
    """One line saying how ``state`` differs from ``network``'s state dict: missing, unexpected and reshaped keys.

    ``load_state_dict``'s own message lists every key over many lines; this names ``limit`` of each kind.

    Args:
        network: the network the weights were meant for.
        state: the state dict read from the file.
        limit: how many keys of each kind to name.

    Returns:
        e.g. ``"2 missing (a.weight, b.bias), 1 reshaped (c.weight (8,) in the file vs (16,))"``.
    """
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
            parts.append(f"{len(keys)} key(s) {what}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts) or "the state dict does not load"
