"""The SynDeepLesion metal-artifact-reduction metric (PSNR/SSIM as every MAR paper reports them).

Both images are attenuation maps µ in 1/cm (water = 0.192) at the geometry's image size. They are
clamped to µ ∈ [0, 0.5], divided by 0.5 and quantised to 8 bits (``index = clip(floor(x·256), 0,
255)``, value ``index / 255``); the metal is then excluded by multiplying both by ``1 − mask``, metal
pixels still counting in the means. PSNR is taken over the whole image with data range 1, SSIM is
:func:`eqmar.metrics.ssim.wang_ssim` with ``L = 1``. Test-mask indices map onto five size groups
(G1 largest … G5 smallest), see :func:`mask_group`.

PSNR of two identical (quantised, masked) images is ``inf``: it is returned as such, not capped, so
that a degenerate evaluation is visible rather than silently averaged.

``png_autoscale=True`` reproduces instead what the authors' released test scripts compute: they save
each clamped, /0.5 image with ``matplotlib.pyplot.imsave(cmap="gray")``, which stretches it to its own
min–max before quantising, and score the PNGs read back. On the shipped sample this lowers the LI
PSNR by about 6 dB, to near the published LI row.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from eqmar.metrics.ssim import wang_ssim

__all__ = [
    "MU_MAX",
    "QUANTIZATION_LEVELS",
    "MASK_GROUPS",
    "GROUP_NAMES",
    "quantize_mu",
    "mask_group",
    "mask_groups",
    "batch_mar_psnr",
    "batch_mar_ssim",
    "batch_mar_scores",
    "mar_psnr",
    "mar_ssim",
]

MU_MAX = 0.5
"""Upper clamp of µ in 1/cm (≈ +1604 HU at 70 keV); the lower clamp is 0 (air, −1000 HU)."""

QUANTIZATION_LEVELS = 256

MASK_GROUPS: dict[int, tuple[int, int]] = {1: (1, 7), 2: (2, 6), 3: (0, 9), 4: (8, 4), 5: (3, 5)}
"""Group number → the two 0-based test-mask indices in it (G1 largest metal, G5 smallest)."""

GROUP_NAMES: tuple[str, ...] = tuple(f"G{g}" for g in MASK_GROUPS)

_GROUP_OF_MASK = {index: group for group, indices in MASK_GROUPS.items() for index in indices}

ArrayLike = Any  # np.ndarray | torch.Tensor; kept loose so MetaTensor and numpy scalars pass through.


def _to_tensor(value: ArrayLike, name: str) -> torch.Tensor:
    """Convert a NumPy array or torch tensor (MetaTensor included) to a float64 tensor.

    float64 keeps the quantisation exact (µ·512 is free of rounding for float32/float64 input) and the
    SSIM statistics free of cancellation error.
    """
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_) or np.iscomplexobj(value):
            raise TypeError(f"{name}: expected a real numeric array, got dtype {value.dtype}")
        # A fresh float64 copy: read-only arrays (h5py, PIL) cannot be shared with torch.
        return torch.from_numpy(np.array(value, dtype=np.float64))
    if isinstance(value, torch.Tensor):
        tensor = value.as_tensor() if hasattr(value, "as_tensor") else value
        if tensor.is_complex():
            raise TypeError(f"{name}: expected a real tensor, got dtype {tensor.dtype}")
        return tensor.detach().to(torch.float64)
    raise TypeError(f"{name}: expected a numpy.ndarray or torch.Tensor, got {type(value).__name__}")


def _quantize(mu: torch.Tensor) -> torch.Tensor:
    """8-bit quantisation of µ clamped to [0, MU_MAX]; values index/255 in [0, 1]."""
    # ·(256/0.5) = ·512 is a power of two: exactly the protocol's /0.5 then ·256, in one pass.
    index = torch.floor(mu.clamp(0.0, MU_MAX) * (QUANTIZATION_LEVELS / MU_MAX)).clamp_(max=QUANTIZATION_LEVELS - 1)
    return index.div_(QUANTIZATION_LEVELS - 1)


@functools.lru_cache(maxsize=1)
def _matplotlib_gray_levels() -> np.ndarray:
    """The 256 grey levels (/255) that ``matplotlib.pyplot.imsave(..., cmap="gray")`` writes.

    Its byte conversion truncates ``lut·255``, so a few of the 256 levels land one step low.
    """
    from eqmar.utils import optional_import

    # png_autoscale=True reproduces matplotlib's PNG export
    colormaps = optional_import("matplotlib", "png_autoscale=True").colormaps
    levels = colormaps["gray"](np.arange(QUANTIZATION_LEVELS), bytes=True)[:, 0]
    return levels.astype(np.float64) / (QUANTIZATION_LEVELS - 1)


def _quantize_png_autoscale(mu: torch.Tensor) -> torch.Tensor:
    """The authors' PNG route for (B, 1, H, W) maps: clamp/0.5, per-image min–max, matplotlib grey bytes.

    Runs in ``mu``'s dtype, as matplotlib's ``Normalize`` does, so that float32 network outputs fall
    into exactly the bins their PNGs got.
    """
    scaled = mu.clamp(0.0, MU_MAX) / MU_MAX
    low = scaled.amin(dim=(-2, -1), keepdim=True)
    span = scaled.amax(dim=(-2, -1), keepdim=True) - low
    # matplotlib's Normalize maps a constant image to 0.
    stretched = torch.where(span > 0, (scaled - low) / torch.where(span > 0, span, 1.0), 0.0)
    index = torch.floor(stretched * QUANTIZATION_LEVELS).clamp(0, QUANTIZATION_LEVELS - 1).long()
    levels = torch.as_tensor(_matplotlib_gray_levels(), dtype=torch.float64, device=mu.device)
    return levels[index]


def _png_route_dtype(value: ArrayLike) -> torch.dtype:
    """float32 for single- or half-precision input (matplotlib works in float32 there), else float64."""
    dtype = getattr(value, "dtype", None)
    if isinstance(dtype, torch.dtype):
        low_precision = dtype in (torch.float32, torch.float16, torch.bfloat16)
    else:
        low_precision = dtype in (np.float32, np.float16)
    return torch.float32 if low_precision else torch.float64


def quantize_mu(x: ArrayLike) -> ArrayLike:
    """Quantise an attenuation map the way the SynDeepLesion metric does.

    Args:
        x: µ in 1/cm (any shape), NumPy array or torch tensor.

    Returns:
        ``clip(floor(clamp(x, 0, 0.5) / 0.5 · 256), 0, 255) / 255`` as float64, of the same kind
        (NumPy or torch) as the input.
    """
    quantized = _quantize(_to_tensor(x, "quantize_mu: x"))
    return quantized.numpy() if isinstance(x, np.ndarray) else quantized


def _as_index(k: Any) -> int:
    """An integral scalar (int, integral float, NumPy or 0-d torch value) as int; ValueError otherwise."""
    value = k.item() if hasattr(k, "item") else k
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or value != int(value):
        raise ValueError(f"expected an integer test-mask index, got {k!r}")
    return int(value)


def mask_group(k: int) -> int:
    """The size group (1 = largest metal … 5 = smallest) of a 0-based SynDeepLesion test-mask index.

    Args:
        k: test-mask index in 0..9 (the position in ``testmask.npy``).

    Returns:
        The group number 1..5 (G1 {1, 7}, G2 {2, 6}, G3 {0, 9}, G4 {8, 4}, G5 {3, 5}).

    Raises:
        ValueError: if ``k`` is not a test-mask index.
    """
    try:
        return _GROUP_OF_MASK[_as_index(k)]
    except (KeyError, ValueError):
        raise ValueError(f"mask_group: k must be a test-mask index in 0..9, got {k!r}") from None


def _mask_index_array(indices: Any) -> np.ndarray:
    """Test-mask indices (int, sequence, array, tensor or list of 0-d tensors) as a validated 1-D int64 array."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    flat = np.asarray(indices, dtype=object).reshape(-1)
    for k in flat:
        mask_group(k)  # validation: raises a clear error for anything but 0..9
    return np.asarray([_as_index(k) for k in flat], dtype=np.int64)


def mask_groups(indices: Any) -> torch.Tensor:
    """Vectorised :func:`mask_group`: int64 tensor of group numbers for a batch of test-mask indices."""
    return torch.as_tensor([mask_group(k) for k in _mask_index_array(indices)], dtype=torch.int64)


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or infinite values")


def _batch_mask(mask: torch.Tensor, image_shape: torch.Size, caller: str) -> torch.Tensor:
    """Check a metal mask against (B, 1, H, W) images; return it as (1 or B, 1, H, W)."""
    if mask.ndim == 2:
        mask = mask[None, None]
    batch, _, height, width = image_shape
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (height, width) or mask.shape[0] not in (1, batch):
        raise ValueError(
            f"{caller}: metal_mask must have shape (H, W), (1, 1, H, W) or (B, 1, H, W) matching pred "
            f"{tuple(image_shape)}, got {tuple(mask.shape)} (resize the mask to the image size first)"
        )
    if not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{caller}: metal_mask must be binary (values 0/1 or bool), got other values")
    return mask


def _prepare_batch(
    pred: ArrayLike, gt: ArrayLike, metal_mask: ArrayLike, caller: str, png_autoscale: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (B, 1, H, W) inputs and return the quantised, metal-excluded pair."""
    pred_t = _to_tensor(pred, f"{caller}: pred")
    gt_t = _to_tensor(gt, f"{caller}: gt").to(pred_t.device)
    mask_t = _to_tensor(metal_mask, f"{caller}: metal_mask").to(pred_t.device)
    if pred_t.shape != gt_t.shape:
        raise ValueError(
            f"{caller}: pred and gt must have the same shape, got {tuple(pred_t.shape)} and {tuple(gt_t.shape)}"
        )
    if pred_t.ndim != 4 or pred_t.shape[1] != 1:
        raise ValueError(f"{caller}: pred and gt must have shape (B, 1, H, W), got {tuple(pred_t.shape)}")
    mask_t = _batch_mask(mask_t, pred_t.shape, caller)
    _check_finite(pred_t, f"{caller}: pred")
    _check_finite(gt_t, f"{caller}: gt")
    keep = 1.0 - mask_t
    if png_autoscale:
        pred_q = _quantize_png_autoscale(pred_t.to(_png_route_dtype(pred)))
        gt_q = _quantize_png_autoscale(gt_t.to(_png_route_dtype(gt)))
        return pred_q * keep, gt_q * keep
    return _quantize(pred_t) * keep, _quantize(gt_t) * keep


def _as_batch(image: ArrayLike, name: str) -> ArrayLike:
    """Lift a single (H, W) or (1, H, W) image to (1, 1, H, W)."""
    shape = tuple(image.shape) if hasattr(image, "shape") else None
    if shape is None:
        raise TypeError(f"{name}: expected a numpy.ndarray or torch.Tensor, got {type(image).__name__}")
    if len(shape) == 2:
        return image[None, None]
    if len(shape) == 3 and shape[0] == 1:
        return image[None]
    raise ValueError(f"{name}: a single image must have shape (H, W) or (1, H, W), got {shape}")


def _psnr_of_quantized(pred_q: torch.Tensor, gt_q: torch.Tensor) -> torch.Tensor:
    """PSNR with data range 1 over whole (B, 1, H, W) images; inf where they are identical."""
    mse = (pred_q - gt_q).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


_PNG_AUTOSCALE_DOC = """png_autoscale: reproduce the authors' evaluation route instead of the protocol's fixed scale:
            their test scripts write each clamped, /0.5 image with ``matplotlib.pyplot.imsave(cmap="gray")``,
            which stretches every image to its own min–max before quantising (and truncates a few grey
            levels), and score the PNGs read back. Off by default; needs matplotlib."""


def batch_mar_psnr(pred: ArrayLike, gt: ArrayLike, metal_mask: ArrayLike, png_autoscale: bool = False) -> torch.Tensor:
    """Per-sample MAR PSNR of a batch.

    Args:
        pred: restored µ maps (1/cm), shape (B, 1, H, W).
        gt: ground-truth µ maps, same shape.
        metal_mask: binary metal mask at the image size, (H, W), (1, 1, H, W) or (B, 1, H, W).
        {png_autoscale}

    Returns:
        float64 tensor of shape (B,) in dB; ``inf`` where the quantised images are identical.
    """
    return _psnr_of_quantized(*_prepare_batch(pred, gt, metal_mask, "batch_mar_psnr", png_autoscale))


def batch_mar_ssim(pred: ArrayLike, gt: ArrayLike, metal_mask: ArrayLike, png_autoscale: bool = False) -> torch.Tensor:
    """Per-sample MAR SSIM of a batch (Wang et al. reference SSIM on the quantised, metal-free images).

    Args:
        pred: restored µ maps (1/cm), shape (B, 1, H, W).
        gt: ground-truth µ maps, same shape.
        metal_mask: binary metal mask at the image size, (H, W), (1, 1, H, W) or (B, 1, H, W).
        {png_autoscale}

    Returns:
        float64 tensor of shape (B,).
    """
    pred_q, gt_q = _prepare_batch(pred, gt, metal_mask, "batch_mar_ssim", png_autoscale)
    return wang_ssim(pred_q, gt_q, data_range=1.0)


def batch_mar_scores(
    pred: ArrayLike, gt: ArrayLike, metal_mask: ArrayLike, png_autoscale: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample MAR PSNR and SSIM of a batch, quantising the inputs once.

    Args:
        pred: restored µ maps (1/cm), shape (B, 1, H, W).
        gt: ground-truth µ maps, same shape.
        metal_mask: binary metal mask at the image size, (H, W), (1, 1, H, W) or (B, 1, H, W).
        {png_autoscale}

    Returns:
        ``(psnr, ssim)``, two float64 tensors of shape (B,).
    """
    pred_q, gt_q = _prepare_batch(pred, gt, metal_mask, "batch_mar_scores", png_autoscale)
    return _psnr_of_quantized(pred_q, gt_q), wang_ssim(pred_q, gt_q, data_range=1.0)


def _score_single(
    batch_fn: Any, pred: ArrayLike, gt: ArrayLike, metal_mask: ArrayLike, caller: str, png_autoscale: bool
) -> float:
    """Apply a batched scorer to one (H, W) or (1, H, W) image."""
    named = (("pred", pred), ("gt", gt), ("metal_mask", metal_mask))
    lifted = [_as_batch(value, f"{caller}: {name}") for name, value in named]
    return float(batch_fn(*lifted, png_autoscale=png_autoscale)[0])


def mar_psnr(pred: ArrayLike, gt: ArrayLike, metal_mask: ArrayLike, png_autoscale: bool = False) -> float:
    """MAR PSNR (dB) of one image; see :func:`batch_mar_psnr`.

    Args:
        pred: restored µ map (1/cm), shape (H, W) or (1, H, W).
        gt: ground-truth µ map, same shape.
        metal_mask: binary metal mask, (H, W) or (1, H, W).
        {png_autoscale}

    Returns:
        PSNR in dB (``inf`` for identical quantised images).
    """
    return _score_single(batch_mar_psnr, pred, gt, metal_mask, "mar_psnr", png_autoscale)


def mar_ssim(pred: ArrayLike, gt: ArrayLike, metal_mask: ArrayLike, png_autoscale: bool = False) -> float:
    """MAR SSIM of one image; see :func:`batch_mar_ssim`.

    Args:
        pred: restored µ map (1/cm), shape (H, W) or (1, H, W).
        gt: ground-truth µ map, same shape.
        metal_mask: binary metal mask, (H, W) or (1, H, W).
        {png_autoscale}

    Returns:
        Mean SSIM (1 for identical images).
    """
    return _score_single(batch_mar_ssim, pred, gt, metal_mask, "mar_ssim", png_autoscale)


# One description of png_autoscale for all five docstrings (absent under python -OO).
for _function in (batch_mar_psnr, batch_mar_ssim, batch_mar_scores, mar_psnr, mar_ssim):
    if _function.__doc__:
        _function.__doc__ = _function.__doc__.format(png_autoscale=_PNG_AUTOSCALE_DOC)
