"""Random-pixel inpainting under Poisson noise, the degradation of the EQ-Reg paper's inpainting task.

The EQ-Reg paper (Bai et al., CVPR 2025) evaluates inpainting "under Poisson noise (γ = 0.05, 30 %
mask rate)", the setting of Robust Equivariant Imaging (Chen, Tachella, Davies, CVPR 2022). We use
that work's conventions, as in its public code:

- Poisson noise of gain γ on an image ``x`` in [0, 1]:  ``y = γ · z``,  ``z ~ Poisson(x / γ)``
  elementwise, so ``E[y] = x`` and ``Var[y] = γ · x`` (γ = 0.05: a white pixel is 20 expected
  photons). ``y`` is not clipped: it may exceed 1.
- mask rate ``r``: the fraction of pixels DROPPED. Each pixel is kept independently with probability
  ``1 − r`` (so about ``r`` of the pixels are lost); a dropped pixel is zero in every channel. The noise
  is drawn first and then masked, ``y ← m ⊙ y``.

One difference, on purpose: REI fixes one mask for the whole data set (its unsupervised loss needs
that); here every call draws a new mask, as a supervised restoration network should generalise over
masks. The known-pixel mask ``m`` (1 = observed, 0 = missing) is appended as the last channel
(``append_mask=True``) so the network knows where data is missing, and/or written to ``mask_key``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandPixelMask", "RandPixelMaskd", "DEFAULT_MASK_RATE", "DEFAULT_POISSON_GAMMA"]

#: Fraction of dropped pixels in the EQ-Reg/REI inpainting setting.
DEFAULT_MASK_RATE = 0.3
#: Poisson gain γ of the EQ-Reg/REI inpainting setting.
DEFAULT_POISSON_GAMMA = 0.05


def _check(rate: float, gamma: float) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate (fraction of dropped pixels) must be in [0, 1), got {rate}.")
    if gamma < 0.0:
        raise ValueError(f"gamma (Poisson gain) must be >= 0, got {gamma}.")


def _to_tensor(img: NdarrayOrTensor) -> torch.Tensor:
    as_tensor = getattr(img, "as_tensor", None)  # MetaTensor → plain tensor: the output is new data
    return as_tensor() if callable(as_tensor) else torch.as_tensor(img)


def _draw(rng: np.random.RandomState, spatial_shape: tuple[int, ...], rate: float) -> tuple[torch.Tensor, int]:
    """A ``(1, *spatial_shape)`` known-pixel mask (1 with probability ``1 - rate``) and a noise seed."""
    keep = torch.from_numpy((rng.random_sample(spatial_shape) >= rate).astype(np.float32))[None]
    # Poisson counts are drawn by torch from this seed: numpy's Poisson sampler is several times slower.
    return keep, int(rng.randint(0, 2**31 - 1))


def _degrade(image: torch.Tensor, keep: torch.Tensor, gamma: float, seed: int, append_mask: bool) -> torch.Tensor:
    """``keep ⊙ γ·Poisson(image/γ)`` (no noise for γ = 0), with ``keep`` appended as a channel if asked."""
    out = image
    if gamma > 0:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        rates = image.detach().cpu().double().clamp_min(0.0) / gamma
        out = (torch.poisson(rates, generator=generator) * gamma).to(image)
    out = out * keep.to(out)
    return torch.cat([out, keep.to(out)], dim=0) if append_mask else out


def _skip(image: torch.Tensor, append_mask: bool) -> torch.Tensor:
    """The undegraded image (with an all-ones mask channel when asked)."""
    return torch.cat([image, torch.ones_like(image[:1])], dim=0) if append_mask else image.clone()


class RandPixelMask(RandomizableTransform):
    """Drop a random fraction of the pixels of a channel-first image and add Poisson noise.

    ``y = m ⊙ (γ · Poisson(x / γ))`` with ``m`` a Bernoulli(1 − rate) mask shared by all channels;
    see the module docstring for the conventions. ``gamma = 0`` gives no noise.

    Args:
        rate: fraction of pixels dropped (in expectation).
        gamma: Poisson gain γ (0: noiseless).
        append_mask: append the known-pixel mask (1 = observed) as an extra last channel.
        prob: probability of degrading at all (else the image is returned unchanged, with an
            all-ones mask channel when ``append_mask``).

    Example::

        t = RandPixelMask(rate=0.3, gamma=0.05)
        t.set_random_state(seed=0)
        y = t(x)  # (C + 1, H, W): the noisy masked image, then the mask
    """

    backend = [torch.Tensor.__name__, np.ndarray.__name__]

    def __init__(
        self,
        rate: float = DEFAULT_MASK_RATE,
        gamma: float = DEFAULT_POISSON_GAMMA,
        append_mask: bool = True,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        _check(rate, gamma)
        self.rate = rate
        self.gamma = gamma
        self.append_mask = append_mask
        self.mask: torch.Tensor | None = None
        self._seed = 0

    def randomize(self, spatial_shape: tuple[int, ...]) -> None:  # type: ignore[override]
        """Draw whether to degrade, then the known-pixel mask (kept in ``self.mask``) and the noise seed."""
        super().randomize(None)
        self.mask = None
        if self._do_transform:
            self.mask, self._seed = _draw(self.R, spatial_shape, self.rate)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> torch.Tensor:  # type: ignore[override]
        """Degrade ``img`` (``(C, H, W)`` in [0, 1]); returns a float32 ``(C[+1], H, W)`` tensor.

        With ``randomize=False`` the previous draw is reused (same mask and noise).
        """
        image = _to_tensor(img).float()
        if randomize:
            self.randomize(tuple(image.shape[1:]))
        if not self._do_transform:
            return _skip(image, self.append_mask)
        if self.mask is None or tuple(self.mask.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(
                f"RandPixelMask: no mask drawn for a {tuple(image.shape[1:])} image; call with randomize=True."
            )
        return _degrade(image, self.mask, self.gamma, self._seed, self.append_mask)


class RandPixelMaskd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandPixelMask`: one mask per call shared by all ``keys``.

    Each key gets its own Poisson draw. Typical use: copy the clean ``"label"`` to ``"image"`` and
    degrade ``"image"``::

        Compose([CopyItemsd(keys="label", names="image"), RandPixelMaskd(keys="image")])

    Args:
        keys: keys of the images to degrade in place.
        rate: fraction of pixels dropped.
        gamma: Poisson gain γ.
        append_mask: append the known-pixel mask as an extra last channel of every key.
        mask_key: also store the ``(1, H, W)`` known-pixel mask under this key.
        prob: probability of degrading.
        allow_missing_keys: do not fail on missing keys.
    """

    backend = RandPixelMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        rate: float = DEFAULT_MASK_RATE,
        gamma: float = DEFAULT_POISSON_GAMMA,
        append_mask: bool = True,
        mask_key: str | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        _check(rate, gamma)
        self.rate = rate
        self.gamma = gamma
        self.append_mask = append_mask
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:  # type: ignore[override]
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        shape = tuple(_to_tensor(d[first]).shape[1:])
        self.randomize(None)
        keep, seed = _draw(self.R, shape, self.rate) if self._do_transform else (torch.ones((1, *shape)), 0)
        for index, key in enumerate(self.key_iterator(d)):
            image = _to_tensor(d[key]).float()
            if self._do_transform:
                d[key] = _degrade(image, keep, self.gamma, (seed + index) % (2**31 - 1), self.append_mask)
            else:
                d[key] = _skip(image, self.append_mask)
        if self.mask_key is not None:
            d[self.mask_key] = keep
        return d
