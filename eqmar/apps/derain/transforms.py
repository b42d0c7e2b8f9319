"""Synthetic rain streaks: a MONAI random transform pair that turns clean images into rainy ones.

Rain100L-style rain is a layer of thin, bright, motion-blurred streaks that share one orientation
per image. :func:`rain_streak_layer` draws it in three vectorised steps: sparse random "drops" of
random brightness, a line kernel of the streak's length and width rotated to the streak's angle
(``scipy.ndimage.rotate``), softened by a Gaussian across its width (the motion blur of a falling
drop), and one FFT convolution of the drops with that kernel. :class:`RandRainStreaks` blends the
layer onto an image in [0, 1] ("screen" keeps the result in [0, 1] without clipping; "add" is the
additive ``O = B + R`` of the deraining papers, clipped).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type

from eqmar.utils import require_extra

require_extra(__name__, "scipy", extra="apps")

__all__ = ["RainParameters", "line_kernel", "rain_streak_layer", "blend_rain", "RandRainStreaks", "RandRainStreaksd"]

BLEND_MODES = ("screen", "add")


class RainParameters(dict):
    """The streak parameters of one draw (a dict, so it is easy to log or store): ``angle`` (degrees
    from vertical, positive = clockwise), ``length`` and ``width`` (pixels), ``density`` (fraction of
    pixels that seed a drop), ``intensity`` (peak brightness added) and ``blur`` (Gaussian sigma)."""


def line_kernel(length: float, width: float, angle: float, blur: float = 0.0) -> np.ndarray:
    """A streak kernel: a line of ``length`` × ``width`` pixels at ``angle`` degrees from vertical.

    Args:
        length: streak length in pixels (>= 1).
        width: streak width in pixels (>= 1; fractional widths give a soft border).
        angle: orientation in degrees from vertical; positive tilts the top to the right.
        blur: Gaussian sigma (pixels) applied after rotation, 0 for none.

    Returns:
        float32 ``(k, k)`` kernel with peak 1 (so a drop of brightness ``v`` makes a streak of ``v``).
    """
    from scipy import ndimage

    if length < 1 or width < 1:
        raise ValueError(f"line_kernel: length and width must be >= 1, got length={length}, width={width}.")
    size = int(np.ceil(max(length, width) + 4 * blur + 2)) | 1  # odd, room for the rotated line and its blur
    centre = size // 2
    coords = np.arange(size, dtype=np.float64) - centre
    # anti-aliased box: coverage of each pixel by the [-L/2, L/2] x [-W/2, W/2] rectangle (vertical line)
    along = np.clip(length / 2 + 0.5 - np.abs(coords), 0.0, 1.0)
    across = np.clip(width / 2 + 0.5 - np.abs(coords), 0.0, 1.0)
    kernel = np.outer(along, across)
    kernel = ndimage.rotate(kernel, -angle, reshape=False, order=1, mode="constant")
    if blur > 0:
        kernel = ndimage.gaussian_filter(kernel, blur)
    peak = kernel.max()
    return (kernel / peak if peak > 0 else kernel).astype(np.float32)


def rain_streak_layer(shape: Sequence[int], params: Mapping[str, float], rng: np.random.RandomState) -> np.ndarray:
    """A grey rain layer ``(H, W)`` in [0, 1]·intensity, drawn with ``rng``.

    Args:
        shape: spatial shape ``(H, W)``.
        params: a :class:`RainParameters`-like mapping.
        rng: the random state that places the drops and draws their brightness.
    """
    from scipy.signal import fftconvolve

    height, width = (int(s) for s in shape)
    uniform = rng.random_sample((height, width))
    density = float(params["density"])
    # one draw both places the drops (u < density) and gives them a brightness in [0.5, 1]
    drops = np.where(uniform < density, 0.5 + 0.5 * uniform / max(density, 1e-12), 0.0)
    kernel = line_kernel(params["length"], params["width"], params["angle"], params["blur"])
    streaks = fftconvolve(drops, kernel, mode="same")
    return (np.clip(streaks, 0.0, 1.0) * float(params["intensity"])).astype(np.float32)


def blend_rain(image: np.ndarray, rain: np.ndarray, mode: str = "screen") -> np.ndarray:
    """Put a grey rain layer ``(H, W)`` on a channel-first image ``(C, H, W)`` in [0, 1].

    Args:
        image: clean image.
        rain: rain layer, broadcast over channels (rain is colourless).
        mode: "screen" (``1 - (1 - B)(1 - R)``, stays in [0, 1]) or "add" (``clip(B + R, 0, 1)``).
    """
    if mode == "screen":
        return 1.0 - (1.0 - image) * (1.0 - rain)
    if mode == "add":
        return np.clip(image + rain, 0.0, 1.0)
    raise ValueError(f"blend must be one of {BLEND_MODES}, got {mode!r}.")


def _as_range(name: str, value: float | Sequence[float], low: float, high: float = np.inf) -> tuple[float, float]:
    pair = (float(value), float(value)) if np.isscalar(value) else tuple(float(v) for v in value)  # type: ignore[arg-type]
    if len(pair) != 2 or pair[0] > pair[1] or pair[0] < low or pair[1] > high:
        raise ValueError(f"{name} must be a number or a (min, max) pair within [{low}, {high}], got {value!r}.")
    return pair  # type: ignore[return-value]


class RandRainStreaks(RandomizableTransform):
    """Add random rain streaks to a channel-first image in [0, 1].

    Every call draws one orientation, length, width, density, brightness and blur from the given
    ranges (a number fixes a parameter) and a fresh drop pattern; seed with ``set_random_state``.

    Args:
        prob: probability of adding rain.
        angle: streak angle range in degrees from vertical.
        length: streak length range in pixels.
        width: streak width range in pixels.
        density: range of the fraction of pixels seeding a drop.
        intensity: range of the streaks' peak brightness.
        blur: range of the Gaussian motion-blur sigma in pixels.
        blend: "screen" or "add" (see :func:`blend_rain`).
    """

    def __init__(
        self,
        prob: float = 1.0,
        angle: float | Sequence[float] = (-30.0, 30.0),
        length: float | Sequence[float] = (8.0, 24.0),
        width: float | Sequence[float] = (1.0, 2.0),
        density: float | Sequence[float] = (0.002, 0.008),
        intensity: float | Sequence[float] = (0.5, 0.9),
        blur: float | Sequence[float] = (0.3, 1.0),
        blend: str = "screen",
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}.")
        self.ranges = {
            "angle": _as_range("angle", angle, -180.0, 180.0),
            "length": _as_range("length", length, 1.0),
            "width": _as_range("width", width, 1.0),
            "density": _as_range("density", density, 0.0, 1.0),
            "intensity": _as_range("intensity", intensity, 0.0, 1.0),
            "blur": _as_range("blur", blur, 0.0),
        }
        self.blend = blend
        self.params: RainParameters | None = None
        self.rain: np.ndarray | None = None

    def randomize(self, data: Any = None) -> None:
        """Draw the parameters and the rain layer for an image of spatial shape ``data`` (``(H, W)``)."""
        super().randomize(None)
        if not self._do_transform:
            self.params, self.rain = None, None
            return
        self.params = RainParameters({k: float(self.R.uniform(lo, hi)) for k, (lo, hi) in self.ranges.items()})
        self.rain = rain_streak_layer(data, self.params, self.R)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Rain on ``img`` ``(C, H, W)``; with ``randomize=False`` reuse the last draw (same shape needed)."""
        if img.ndim != 3:
            raise ValueError(f"RandRainStreaks expects a channel-first (C, H, W) image, got shape {tuple(img.shape)}.")
        if randomize:
            self.randomize(tuple(img.shape[1:]))
        if not self._do_transform:
            return img
        if self.rain is None or self.rain.shape != tuple(img.shape[1:]):
            raise ValueError("RandRainStreaks: no rain layer of this image's size was drawn; call with randomize=True.")
        array = np.asarray(img.detach().cpu().numpy() if hasattr(img, "detach") else img, dtype=np.float32)
        rainy = blend_rain(array, self.rain[None], self.blend).astype(np.float32)
        return convert_to_dst_type(rainy, img)[0]


class RandRainStreaksd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandRainStreaks`: the same rain on every key.

    A typical derain pair: ``CopyItemsd(keys="label", names="image")`` then
    ``RandRainStreaksd(keys="image")``. The drawn parameters are stored under ``params_key``
    when given (handy for logging the test set).

    Args:
        keys: keys of the images to rain on.
        params_key: optional key receiving the parameters of the draw.
        allow_missing_keys: skip missing keys.
        kwargs: the :class:`RandRainStreaks` arguments (``prob``, ``angle``, ``length``, ...).
    """

    def __init__(
        self, keys: KeysCollection, params_key: str | None = None, allow_missing_keys: bool = False, **kwargs: Any
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.rain = RandRainStreaks(**kwargs)
        RandomizableTransform.__init__(self, self.rain.prob)
        self.params_key = params_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandRainStreaksd:
        super().set_random_state(seed, state)
        self.rain.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        self.rain.randomize(tuple(d[first].shape[1:]))
        for key in self.key_iterator(d):
            d[key] = self.rain(d[key], randomize=False)
        if self.params_key is not None:
            d[self.params_key] = dict(self.rain.params) if self.rain.params is not None else {}
        return d
