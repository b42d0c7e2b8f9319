"""Self-describing MAR model files: the weights plus what is needed to rebuild the network.

A file written by :func:`save_mar_model` holds::

    {"format": "eqmar-mar-model/1", "network": {"backbone": ..., "kwargs": {...}},
     "state_dict": ..., "meta": {...}}

:func:`load_mar_model` rebuilds the network and loads the weights strictly: a missing or unexpected
key is an error, never a silently random layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["MODEL_FORMAT", "network_spec", "build_from_spec", "save_mar_model", "load_mar_model"]

MODEL_FORMAT = "eqmar-mar-model/1"


def network_spec(backbone: str, **kwargs: Any) -> dict[str, Any]:
    """A JSON-able description of a backbone: its name and constructor arguments."""
    return {"backbone": backbone, "kwargs": dict(kwargs)}


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Construct the network described by :func:`network_spec` (untrained)."""
    from eqmar import networks

    backbone = spec.get("backbone")
    kwargs = dict(spec.get("kwargs", {}))
    if backbone == "unet":
        return networks.mar_baseline_unet(**kwargs)
    classes = {"dicdnet": networks.DICDNet, "acdnet": networks.ACDNet, "oscnet": networks.OSCNet}
    if backbone not in classes:
        raise ValueError(f"unknown backbone {backbone!r} in model spec; expected one of {sorted(classes) + ['unet']}")
    return classes[backbone](**kwargs)


def save_mar_model(path: str | Path, network: nn.Module, spec: dict[str, Any], meta: dict[str, Any] | None = None) -> Path:
    """Write weights and network spec to ``path`` (via a temporary file: a kill never leaves half a model)."""
    from eqmar.data.syndeeplesion import atomic_write

    payload = {"format": MODEL_FORMAT, "network": spec, "state_dict": network.state_dict(), "meta": meta or {}}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_mar_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and strictly load a model written by :func:`save_mar_model`.

    Returns:
        ``(network in eval mode, full payload without the state dict)``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not an eqmar MAR model file, or weights that do not match the network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path}: not a readable model file ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not an eqmar MAR model file (expected format {MODEL_FORMAT!r}).")
    network = build_from_spec(payload["network"])
    try:
        network.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match the {payload['network'].get('backbone')} network: {error}") from error
    network.eval()
    return network, {k: v for k, v in payload.items() if k != "state_dict"}
