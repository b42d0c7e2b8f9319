"""Build the paired batch ``[x ; g · x]`` used by EQ-Reg.

Every image in a batch (the network input and everything spatially aligned with it: labels, masks,
LI images) is transformed by the same group element and appended to the batch, so the task loss sees
both halves. Everything else that is per-sample (class labels, indices, metadata lists) is repeated,
so the batch stays consistent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from eqmar.equivariance.groups import RotationGroup, get_group

__all__ = ["pair_batch", "infer_batch_size", "is_image_tensor", "RotationPairing"]


def is_image_tensor(value: Any) -> bool:
    """True for a batched 2-D image tensor ``(B, C, H, W)``."""
    return isinstance(value, torch.Tensor) and value.ndim == 4


def _plain(t: torch.Tensor) -> torch.Tensor:
    # MetaTensor carries per-sample affine metadata that a batch-dimension concat would scramble;
    # the training step only needs the data.
    as_tensor = getattr(t, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else t


def infer_batch_size(batch: Any, image_keys: Sequence[str] | None = None) -> int:
    """Batch size of the first image tensor in ``batch``.

    Raises:
        ValueError: when the batch holds no (B, C, H, W) tensor (or, for a dict batch with explicit
            ``image_keys``, when one of those keys is missing).
    """
    if isinstance(batch, Mapping):
        keys = list(image_keys) if image_keys else [k for k, v in batch.items() if is_image_tensor(v)]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(
                f"EQ-Reg: the batch has no key(s) {missing}; available keys: {sorted(map(str, batch))}."
            )
        images = [batch[k] for k in keys if is_image_tensor(batch[k])]
    elif isinstance(batch, torch.Tensor):
        images = [batch] if is_image_tensor(batch) else []
    elif isinstance(batch, Sequence):
        images = [v for v in batch if is_image_tensor(v)]
    else:
        images = []
    if not images:
        raise ValueError(
            "EQ-Reg: the batch contains no image tensor of shape (B, C, H, W) to rotate; "
            f"got {type(batch).__name__}"
            + (f" with keys {sorted(map(str, batch))}" if isinstance(batch, Mapping) else "")
        )
    return int(images[0].shape[0])


def _repeat(value: Any, batch_size: int) -> Any:
    """Repeat per-sample entries so they line up with the doubled batch; leave the rest unchanged."""
    if isinstance(value, torch.Tensor):
        if value.ndim >= 1 and value.shape[0] == batch_size:
            return torch.cat([_plain(value), _plain(value)], dim=0)
        return value
    if isinstance(value, Mapping):
        return {k: _repeat(v, batch_size) for k, v in value.items()}
    if isinstance(value, list) and len(value) == batch_size:
        return value + value
    if isinstance(value, tuple) and len(value) == batch_size:
        return value + value
    return value


def _pair_image(value: torch.Tensor, group: RotationGroup, n: int, mode: str, name: str = "image") -> torch.Tensor:
    value = _plain(value)
    height, width = value.shape[-2:]
    # checked for every draw, so that the error does not depend on which element was drawn
    if not group.acts_on(height, width):
        raise ValueError(
            f"EQ-Reg: {name} is {height}x{width}; {group.name} rotations need square images (crop square "
            "patches, or use group 'C2', whose 180-degree rotation keeps any shape)."
        )
    return torch.cat([value, group.act(value, n, mode=mode)], dim=0)


def pair_batch(
    batch: Any,
    group: str | RotationGroup,
    n: int,
    image_keys: Sequence[str] | None = None,
    interp_modes: Mapping[str, str] | None = None,
) -> Any:
    """Return ``batch`` with every image doubled as ``[x ; g · x]`` and every other per-sample entry repeated.

    Args:
        batch: a dict batch (as collated by MONAI's ``DataLoader``), a tensor, or a tuple/list such as
            ``(image, label)``.
        group: group name or instance.
        n: the group element applied to the second half.
        image_keys: for dict batches, the keys to transform. Default: every (B, C, H, W) tensor.
            Keys listed here must exist in the batch.
        interp_modes: per-key interpolation mode for interpolating groups (C8), e.g.
            ``{"mask": "nearest"}``; default "bilinear".

    Returns:
        A batch of the same structure with twice the batch size.
    """
    grp = get_group(group)
    n = grp.check_element(n)
    modes = dict(interp_modes or {})
    batch_size = infer_batch_size(batch, image_keys)
    if isinstance(batch, Mapping):
        keys = set(image_keys) if image_keys else {k for k, v in batch.items() if is_image_tensor(v)}
        out = {}
        for key, value in batch.items():
            if key in keys:
                if not is_image_tensor(value):
                    raise ValueError(
                        f"EQ-Reg: batch[{key!r}] should be a (B, C, H, W) image tensor, got "
                        f"{type(value).__name__} with shape {tuple(getattr(value, 'shape', ()))}."
                    )
                out[key] = _pair_image(value, grp, n, modes.get(key, "bilinear"), f"batch[{key!r}]")
            else:
                out[key] = _repeat(value, batch_size)
        return out
    if isinstance(batch, torch.Tensor):
        return _pair_image(batch, grp, n, "bilinear")
    paired = [
        _pair_image(v, grp, n, "bilinear") if is_image_tensor(v) else _repeat(v, batch_size) for v in batch
    ]
    return type(batch)(paired) if isinstance(batch, tuple) else paired


class RotationPairing:
    """A ``prepare_batch`` that draws one group element per step and returns the paired batch.

    On its own it is rot90 augmentation in the EQ-Reg layout (the "augmentation only" arm of a fair
    comparison: same batches, same compute, no regulariser); :class:`~eqmar.equivariance.EQReg`
    adds the regulariser on top.

    Args:
        group: group name or instance.
        image_keys: dict-batch keys to transform (default: every (B, C, H, W) tensor).
        prepare_batch: the trainer's usual ``prepare_batch``, applied to the paired batch
            (default MONAI's ``default_prepare_batch``).
        elements: group elements to draw from (default: all, identity included).
        seed: seed of the draws; use the same seed on every distributed rank.
        interp_modes: per-key interpolation mode for interpolating groups (C8).
    """

    def __init__(
        self,
        group: str | RotationGroup = "C4",
        image_keys: Sequence[str] | None = None,
        prepare_batch: Callable | None = None,
        elements: Sequence[int] | None = None,
        seed: int = 0,
        interp_modes: Mapping[str, str] | None = None,
    ) -> None:
        self.group = get_group(group)
        self.image_keys = list(image_keys) if image_keys is not None else None
        self.interp_modes = dict(interp_modes or {})
        chosen = elements if elements is not None else self.group.elements()
        self.elements = [self.group.check_element(n) for n in chosen]
        if not self.elements:
            raise ValueError("RotationPairing: `elements` is empty.")
        if prepare_batch is None:
            from monai.engines.utils import default_prepare_batch

            prepare_batch = default_prepare_batch
        self._inner_prepare_batch = prepare_batch
        self._generator = torch.Generator().manual_seed(int(seed))

    def draw_element(self) -> int:
        """Draw the group element of the next step (reproducible from ``seed``, identical across ranks)."""
        index = int(torch.randint(len(self.elements), (1,), generator=self._generator))
        return self.elements[index]

    def pair(self, batch: Any, n: int | None = None) -> Any:
        """Return ``[x ; g · x]`` for the batch; ``n`` is drawn when None."""
        n = self.draw_element() if n is None else self.group.check_element(n)
        return pair_batch(batch, self.group, n, self.image_keys, self.interp_modes)

    def prepare_batch(self, batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
        """``prepare_batch`` for ``SupervisedTrainer``: pair the batch, then apply the inner ``prepare_batch``."""
        return self._inner_prepare_batch(self.pair(batchdata), device, non_blocking, **kwargs)

    __call__ = prepare_batch

    def state_dict(self) -> dict[str, Any]:
        """Draw-generator state, so a resumed run continues the same element sequence."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._generator.set_state(state["generator"])
