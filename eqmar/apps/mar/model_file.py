"""Self-describing MAR model files: the weights plus what is needed to rebuild the network.

A file written by :func:`save_mar_model` holds::

    {"format": "eqmar-mar-model/1", "network": {"backbone": ..., "kwargs": {...}},
     "state_dict": ..., "meta": {...}}

:func:`read_mar_weights` is the one reader of weight files: it accepts such model files, the
training checkpoints of :func:`eqmar.engines.build_trainer`, ``{"model": state_dict}`` checkpoints
and plain state dicts, and says which it found. :func:`load_mar_model` rebuilds the network from a
model file; :func:`load_mar_weights` loads any of them into a network built elsewhere (a bundle's
``network_def``). Both load strictly: a missing or unexpected key is an error, never a silently
random layer. :class:`MARModelSaver` writes the model file at the end of bundle or MONAI Label training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = [
    "MODEL_FORMAT",
    "MARModelSaver",
    "MARWeights",
    "load_mar_weights",
    "read_mar_weights",
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

logger = logging.getLogger("eqmar.mar.model_file")


class MARWeights(NamedTuple):
    """What :func:`read_mar_weights` found in a file.

    Attributes:
        state: the network's state dict.
        kind: ``"model"`` (an eqmar model file), ``"checkpoint"`` (a training checkpoint of
            :func:`eqmar.engines.build_trainer`), ``"model-key"`` (``{"model": state_dict}``) or
            ``"state_dict"`` (plain weights).
        payload: for a model file, everything in it but the weights (network spec, meta); else None.
    """

    state: Mapping[str, torch.Tensor]
    kind: str
    payload: dict[str, Any] | None


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


def save_mar_model(
    path: str | Path, network: nn.Module, spec: dict[str, Any], meta: dict[str, Any] | None = None
) -> Path:
    """Write weights and network spec to ``path`` (via a temporary file: a kill never leaves half a model)."""
    from eqmar.utils import atomic_write

    payload = {"format": MODEL_FORMAT, "network": spec, "state_dict": network.state_dict(), "meta": meta or {}}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_mar_weights(path: str | Path, map_location: str | torch.device = "cpu") -> MARWeights:
    """The network weights a file holds, whichever of the accepted kinds it is (see :class:`MARWeights`).

    Raises:
        FileNotFoundError: missing file.
        ValueError: a folder, an empty or unreadable file, or a file that holds no network weights.
    """
    path = Path(path)
    weights = _weights_in(read_model_payload(path, map_location), path)
    if weights is None:
        raise ValueError(f"{path}: holds no MAR network weights (expected an eqmar model file or a state dict).")
    return weights


def _weights_in(payload: Any, path: Path) -> MARWeights | None:
    """The weights in what ``torch.load`` returned for ``path``, or None when it holds none of the accepted kinds."""
    if isinstance(payload, Mapping) and payload.get("format") == MODEL_FORMAT:
        state = payload.get("state_dict")
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: the model file holds no state dict.")
        return MARWeights(state, "model", {k: v for k, v in payload.items() if k != "state_dict"})
    if (trained := checkpoint_network_weights(payload)) is not None:
        return MARWeights(trained, "checkpoint", None)
    if isinstance(payload, Mapping) and is_state_dict(payload.get("model")):
        return MARWeights(payload["model"], "model-key", None)
    if is_state_dict(payload):
        return MARWeights(payload, "state_dict", None)
    return None


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
    weights = _weights_in(read_model_payload(path, map_location), path)
    if weights is None:
        raise ValueError(f"{path}: not an eqmar MAR model file (expected format {MODEL_FORMAT!r}).")
    if weights.kind == "checkpoint":
        raise ValueError(_training_checkpoint_message(path))
    if weights.payload is None:
        raise ValueError(
            f"{path}: bare weights ({len(weights.state)} tensors) without the network description, so the network "
            f"cannot be rebuilt; use the model file <arm>/model.pt that training writes, or write one with "
            f"eqmar.apps.mar.model_file.save_mar_model(path, network, network_spec(backbone, **kwargs), "
            f"meta={{'geometry_tag': <the training data's geometry, e.g. '640geo'>}})."
        )
    try:
        network = build_from_spec(weights.payload.get("network"))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    backbone = weights.payload["network"].get("backbone")
    try:
        network.load_state_dict(weights.state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: weights do not match the {backbone} network: {describe_weight_mismatch(network, weights.state)}"
        ) from error
    network.eval()
    return network, weights.payload


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


def load_mar_weights(network: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights of a MAR model file into ``network`` strictly and return it.

    Accepts what :func:`read_mar_weights` reads: the self-describing files of :func:`save_mar_model`, the
    training checkpoints of :func:`eqmar.engines.build_trainer` (the network under ``"network"``),
    ``{"model": state_dict}`` checkpoints (MONAI's ``CheckpointSaver`` with that key) and plain
    state dicts. ``network`` supplies the architecture that a checkpoint does not describe.

    Raises:
        FileNotFoundError: missing file (with how to make one).
        ValueError: a folder or an empty file, a file that holds no state dict, or weights that do not
            fit ``network`` (naming the missing, unexpected and reshaped keys).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"MAR model file not found: {path}. Train one with recipes/mar_deeplesion.py (see the bundle's "
            "docs/README.md) or the bundle's configs/train.yaml."
        )
    state = read_mar_weights(path).state
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: weights do not match the bundle's network_def ({type(network).__name__}): "
            f"{describe_weight_mismatch(network, state)} (check network_spec against the model file)"
        ) from error
    return network


class MARModelSaver:
    """Ignite handler writing an eqmar MAR model file when training completes.

    The file (:func:`~eqmar.apps.mar.model_file.save_mar_model`) carries the network spec and the
    geometry meta that :class:`~eqmar.apps.mar.inferer.MARVolumeInferer` and ``python -m eqmar.infer`` need.

    Args:
        path: output model file.
        network: the trained network (a DDP wrapper is unwrapped).
        spec: the network's :func:`~eqmar.apps.mar.model_file.network_spec`; checked on save by
            rebuilding the network from it and loading the weights strictly.
        geometry_tag: geometry of the training data (e.g. ``"640geo"`` or ``"640geo_128px160v"``).
        image_size: working image size; default from ``geometry_tag``.
        meta: more meta entries (e.g. EQ-Reg group and weight).
        epoch_level: also save after every epoch.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        network: nn.Module,
        spec: Mapping[str, Any],
        geometry_tag: str,
        image_size: int | None = None,
        meta: Mapping[str, Any] | None = None,
        epoch_level: bool = False,
    ) -> None:
        self.path = Path(path)
        self.network = network
        self.spec = {"backbone": spec["backbone"], "kwargs": dict(spec.get("kwargs", {}))}
        self.meta: dict[str, Any] = {"geometry_tag": str(geometry_tag), **dict(meta or {})}
        if image_size is not None:
            self.meta["image_size"] = int(image_size)
        self.epoch_level = bool(epoch_level)
        self._saved_at: int | None = None

    def attach(self, engine: Any) -> None:
        """Save at ``COMPLETED`` (and ``EPOCH_COMPLETED`` when ``epoch_level``)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)
        if self.epoch_level:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any = None) -> Path:
        from eqmar.equivariance import unwrap_network

        iteration = None if engine is None else int(engine.state.iteration)
        if iteration is not None and iteration == self._saved_at:  # the last epoch's file is the final one
            return self.path
        network = unwrap_network(self.network)
        try:
            build_from_spec(self.spec).load_state_dict(network.state_dict(), strict=True)
        except RuntimeError as error:
            raise ValueError(
                f"MARModelSaver: the network does not match spec {self.spec}: {str(error).splitlines()[0]}"
            ) from error
        meta = dict(self.meta)
        if iteration is not None:
            meta["iterations"] = iteration
        path = save_mar_model(self.path, network, self.spec, meta)
        self._saved_at = iteration
        logger.info("MAR model written to %s", path)
        return path
