"""SSIM exactly as in the reference implementation of Wang et al. (2004), batched in torch.

The SynDeepLesion benchmark reports the SSIM of the authors' MATLAB ``ssim.m``, which differs from
most library SSIMs in two ways: statistics are only taken where the 11×11 Gaussian window fits
inside the image ('valid' filtering), and images are first down-sampled by an automatic factor
``f = max(1, round(min(H, W) / 256))``. The down-sampling is MATLAB's
``imfilter(img, ones(f)/f^2, 'symmetric', 'same')`` followed by ``img(1:f:end, 1:f:end)``. MATLAB's
documentation puts the centre of an even-sized kernel at element ``floor((f + 1) / 2)``, so for
``f = 2`` each kept pixel is the mean of the 2×2 block that starts at it, with symmetric
(edge-repeating) padding past the last row/column; for the benchmark's 416×416 images this is exact
2×2 block averaging to 208×208. (Octave's ``imfilter`` and ports of it anchor even kernels one
pixel later; that is not what the published MATLAB scores used.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "WANG_WINDOW_SIZE",
    "WANG_SIGMA",
    "WANG_K",
    "ssim_downsample_factor",
    "wang_downsample",
    "gaussian_window",
    "wang_ssim",
]

WANG_WINDOW_SIZE = 11
WANG_SIGMA = 1.5
WANG_K = (0.01, 0.03)

# Reference size of the automatic down-sampling rule in ssim.m.
_DOWNSAMPLE_REFERENCE = 256


def _matlab_round(value: float) -> int:
    """MATLAB's ``round`` (half away from zero); Python's ``round`` rounds half to even."""
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


def ssim_downsample_factor(height: int, width: int) -> int:
    """The automatic down-sampling factor of ``ssim.m``: ``max(1, round(min(H, W) / 256))``.

    Args:
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        The integer factor ``f`` (2 for the 416×416 SynDeepLesion images, 3 for 640×640).
    """
    return max(1, _matlab_round(min(height, width) / _DOWNSAMPLE_REFERENCE))


def _symmetric_pad(images: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """Pad one axis like MATLAB's 'symmetric' (edge pixel repeated), only as far as the kept windows reach.

    MATLAB anchors an f-tap kernel at 1-based index floor((f+1)/2): (c−1) taps before it, f−c after.
    The kept pixels are 0, f, 2f, …; the last window may end before the padded edge, so padding is
    trimmed to what is read (none for an even length and f = 2).
    """
    length = images.shape[dim]
    before = (factor + 1) // 2 - 1
    kept = -(-length // factor)
    after = max(0, kept * factor - before - length)
    if before == 0 and after == 0:
        return images
    indices = np.pad(np.arange(length), (before, after), mode="symmetric")
    return images.index_select(dim, torch.as_tensor(indices, device=images.device))


def wang_downsample(images: torch.Tensor, factor: int | None = None) -> torch.Tensor:
    """Down-sample like ``ssim.m``: ``f×f`` mean filter ('symmetric', 'same'), then every ``f``-th pixel.

    Args:
        images: tensor of shape (B, C, H, W).
        factor: down-sampling factor; ``None`` uses :func:`ssim_downsample_factor`.

    Returns:
        Tensor of shape (B, C, ceil(H / f), ceil(W / f)); the input itself when ``f == 1``.
    """
    if images.ndim != 4:
        raise ValueError(f"wang_downsample: images must have shape (B, C, H, W), got {tuple(images.shape)}")
    f = ssim_downsample_factor(*images.shape[-2:]) if factor is None else int(factor)
    if f < 1:
        raise ValueError(f"wang_downsample: factor must be >= 1, got {factor}")
    if f == 1:
        return images
    padded = _symmetric_pad(_symmetric_pad(images, -2, f), -1, f)
    # On the padded grid the window of kept pixel i*f starts at i*f, so a strided block mean is exact.
    return F.avg_pool2d(padded, kernel_size=f, stride=f)


def gaussian_window(
    size: int = WANG_WINDOW_SIZE, sigma: float = WANG_SIGMA, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Normalised 1-D Gaussian taps; their outer product is MATLAB's ``fspecial('gaussian', size, sigma)``.

    Args:
        size: number of taps (odd).
        sigma: standard deviation in pixels.
        dtype: dtype of the returned tensor.

    Returns:
        Tensor of shape (size,) summing to one.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"gaussian_window: size must be a positive odd integer, got {size}")
    if sigma <= 0:
        raise ValueError(f"gaussian_window: sigma must be positive, got {sigma}")
    offsets = torch.arange(size, dtype=dtype) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return taps / taps.sum()


def _valid_filter_matrix(length: int, taps: torch.Tensor) -> torch.Tensor:
    """Banded (length − n + 1, length) matrix whose product with a signal is its 'valid' correlation."""
    size = taps.numel()
    rows = length - size + 1
    columns = torch.arange(rows, device=taps.device)[:, None] + torch.arange(size, device=taps.device)[None]
    matrix = torch.zeros(rows, length, dtype=taps.dtype, device=taps.device)
    return matrix.scatter_(1, columns, taps.expand(rows, size))


def _valid_gaussian_filter(maps: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' correlation of (..., H, W) maps with the Gaussian taps.

    Two batched products with banded matrices are several times faster on CPU than ``conv2d`` on
    single-channel float64 maps, and give the same sums.
    """
    height, width = maps.shape[-2:]
    return _valid_filter_matrix(height, taps) @ maps @ _valid_filter_matrix(width, taps).T


def wang_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    downsample: bool = True,
    window_size: int = WANG_WINDOW_SIZE,
    sigma: float = WANG_SIGMA,
    k: tuple[float, float] = WANG_K,
) -> torch.Tensor:
    """Mean SSIM per sample, following Wang et al.'s reference ``ssim.m``.

    Args:
        x: tensor of shape (B, 1, H, W).
        y: tensor of the same shape as ``x``.
        data_range: dynamic range ``L`` of the images (1 for the MAR metric).
        downsample: apply the automatic ``ssim.m`` down-sampling first.
        window_size: Gaussian window size (11 in the reference).
        sigma: Gaussian standard deviation (1.5 in the reference).
        k: stability constants ``(K1, K2)``.

    Returns:
        Tensor of shape (B,) with the mean SSIM of each sample (dtype of the inputs).

    Raises:
        ValueError: if the shapes differ or are not (B, 1, H, W), or the (down-sampled) image is
            smaller than the window.
    """
    if x.shape != y.shape:
        raise ValueError(f"wang_ssim: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"wang_ssim: inputs must have shape (B, 1, H, W), got {tuple(x.shape)}")
    if downsample:
        x, y = wang_downsample(x), wang_downsample(y)
    if min(x.shape[-2:]) < window_size:
        raise ValueError(
            f"wang_ssim: image of {tuple(x.shape[-2:])} pixels (after down-sampling) is smaller than "
            f"the {window_size}x{window_size} window"
        )
    c1 = (k[0] * data_range) ** 2
    c2 = (k[1] * data_range) ** 2
    batch = x.shape[0]
    taps = gaussian_window(window_size, sigma, dtype=x.dtype).to(x.device)
    # One filtering pass over all five statistics maps of all samples.
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=0)
    mu_x, mu_y, e_xx, e_yy, e_xy = _valid_gaussian_filter(stacked, taps).split(batch, dim=0)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    sigma_xx, sigma_yy, sigma_xy = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
    ssim_map = ((2 * mu_xy + c1) * (2 * sigma_xy + c2)) / ((mu_xx + mu_yy + c1) * (sigma_xx + sigma_yy + c2))
    return ssim_map.flatten(1).mean(dim=1)
