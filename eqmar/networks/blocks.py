"""Building blocks shared by the unrolled convolutional-dictionary MAR networks.

DICDNet, ACDNet and OSCNet all alternate the same three ingredients over ``T`` stages:

1. an artifact model ``A = Σ_k C_k ⊛ M_k`` (dictionary filters ``C`` times feature maps ``M``),
2. a proximal gradient step on ``M`` followed by a residual proximal network (the *M-net*),
3. a proximal gradient step on the image ``X`` followed by a residual proximal network (the *X-net*)
   that also carries ``features - 1`` auxiliary channels (the "channel concatenation" ``Q``/``P``
   of the papers' supplementary material) from stage to stage.

This module keeps everything the three backbones share: input splitting and validation, the
proximal networks, the dictionary initialisation, the convolution / adjoint pair, the image update,
the typed training-mode output, and :func:`proximal_conv_names` (which EQ-Reg uses to pick layers).
The same unrolled scheme with ``C`` image channels and no mask is RCDNet for deraining (the MAR
networks' ancestor), so the dictionary, the initialiser and the updates accept ``C`` image channels
(``image_channels``, default 1: the MAR networks are unchanged).

Units: the published networks operate on attenuation maps multiplied by 255 (µ clipped to [0, 1]
then scaled), and their thresholds, step sizes and loss weights are tuned for that range. The
networks here take µ maps and multiply internally by ``intensity_scale`` (255 by default), then
divide every returned image/artifact by it, so callers always see µ units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MAROutput",
    "ProximalResBlock",
    "ProximalNet",
    "UnrolledStage",
    "UPDATE_SCALE",
    "split_mar_input",
    "check_group_divisible",
    "oriented_gaussian_dictionary",
    "synthesize",
    "analyze",
    "learnable_scalar",
    "ImageInitializer",
    "image_update",
    "proximal_conv_names",
    "proximal_net_names",
    "ConvDictionary",
    "feature_map_update",
    "StageTrace",
    "run_common_dictionary_stages",
    "make_stages",
    "scale_outputs",
    "UnrolledRun",
    "UnrolledMARNet",
]

# The published code divides every step size and every dictionary by 10 "to control the updating
# speed": a fixed re-parametrisation that keeps the learnable values near 1-5 while the effective
# steps stay small. Kept so published initial values (eta_x = 5, eta_m = 1) mean the same here.
UPDATE_SCALE = 0.1


class MAROutput(NamedTuple):
    """Training-mode output of the unrolled MAR networks (all tensors ``(B, 1, H, W)``, µ units).

    Attributes:
        image: final corrected image (after the last X-net refinement); also the eval-mode output.
        stage_images: per-stage images ``X_1 .. X_T`` (before the final refinement).
        stage_artifacts: per-stage artifact layers ``A_1 .. A_T``.
        init_image: the initial estimate ``X_0`` computed from the LI image.
        ma_image: the metal-affected input, needed by the loss for the artifact target
            ``mask * (ma - gt)``.
        warmup_images: images of the non-adaptive warm-up iterations (ACDNet only, else empty).
        warmup_artifacts: artifacts of the warm-up iterations (ACDNet only, else empty).

    Note:
        MONAI's ``SupervisedTrainer`` decollates ``engine.state.output`` after each iteration; the
        tuple then becomes a per-sample list in field order, so training-time handlers find the
        final image at ``output[i]["pred"][0]``. Evaluators run in eval mode and get a tensor.
    """

    image: torch.Tensor
    stage_images: tuple[torch.Tensor, ...]
    stage_artifacts: tuple[torch.Tensor, ...]
    init_image: torch.Tensor
    ma_image: torch.Tensor
    warmup_images: tuple[torch.Tensor, ...] = ()
    warmup_artifacts: tuple[torch.Tensor, ...] = ()


def split_mar_input(x: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the single MAR input tensor into (ma_CT, LI_CT, non-metal mask).

    Args:
        x: tensor ``(B, 3, H, W)`` with channels [metal-affected image, LI image, non-metal mask
            (1 outside metal, 0 inside)].
        name: argument name used in error messages.

    Returns:
        three tensors of shape ``(B, 1, H, W)``.

    Raises:
        ValueError: when ``x`` is not a 4-D tensor with 3 channels.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}.")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must have shape (B, 3, H, W) with channels [ma_CT, LI_CT, non-metal mask], "
            f"got {tuple(x.shape)}."
        )
    return x[:, 0:1], x[:, 1:2], x[:, 2:3]


def check_group_divisible(name: str, channels: int, group_order: int | None) -> None:
    """Raise when a regularised layer width is not a multiple of the group order.

    Args:
        name: constructor argument that sets the width (for the error message).
        channels: the width.
        group_order: order of the rotation group (4 for C4, 2 for C2) or ``None`` to skip the check.
    """
    if channels < 1:
        raise ValueError(f"{name} must be a positive integer, got {channels}.")
    if group_order is None:
        return
    if group_order < 1:
        raise ValueError(f"group_order must be a positive integer or None, got {group_order}.")
    if channels % group_order:
        raise ValueError(
            f"{name}={channels} is not divisible by group_order={group_order}: EQ-Reg views the "
            f"channels of every regularised conv as groups of {group_order} orientations "
            f"(e.g. use 36 instead of 33/35), or pass group_order=None to disable the check."
        )


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims != 2:
        raise ValueError(f"spatial_dims={spatial_dims} is not supported: the MAR networks are 2-D only.")


class ProximalResBlock(nn.Module):
    """Residual block ``relu(z + bn(conv(relu(bn(conv(z))))))`` at constant width.

    The two convolutions are the layers EQ-Reg regularises; their out-channels equal ``channels``.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the image size, got {kernel_size}.")
        pad = kernel_size // 2
        self.conv_1 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.norm_1 = nn.BatchNorm2d(channels)
        self.conv_2 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.norm_2 = nn.BatchNorm2d(channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        r = self.norm_2(self.conv_2(F.relu(self.norm_1(self.conv_1(z)))))
        return F.relu(z + r)


class ProximalNet(nn.Module):
    """The learned proximal operator of the papers: a stack of :class:`ProximalResBlock`.

    Args:
        channels: width of every conv.
        num_res_blocks: number of residual blocks (3 in all published configurations).
        kernel_size: conv kernel size (3 published; the EQ-Reg code uses 5 for DICDNet).
        threshold: initial value of a learnable per-channel soft threshold applied at the end
            (``relu(z - tau)``, the sparsity prior on feature maps ``M``); ``None`` for the X-net.
    """

    def __init__(
        self, channels: int, num_res_blocks: int = 3, kernel_size: int = 3, threshold: float | None = None
    ) -> None:
        super().__init__()
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}.")
        self.res_blocks = nn.Sequential(*[ProximalResBlock(channels, kernel_size) for _ in range(num_res_blocks)])
        if threshold is None:
            self.register_parameter("threshold", None)
        else:
            self.threshold = nn.Parameter(torch.full((1, channels, 1, 1), float(threshold)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = self.res_blocks(z)
        if self.threshold is not None:
            z = F.relu(z - self.threshold)
        return z


class UnrolledStage(nn.Module):
    """Container of one unrolled iteration: the named proximal nets and the step sizes.

    ``x_net`` and ``m_net`` are plain attributes so that EQ-Reg can select their convs by name
    (``stages.3.x_net.res_blocks.0.conv_1``). A step size is ``None`` where the published stage
    does not use it (the first stage computes ``M`` directly, without a gradient step).

    Args:
        x_net: proximal net of the image (+ auxiliary channels).
        m_net: proximal net of the feature maps.
        eta_x: initial image step size, or ``None``.
        eta_m: initial feature-map step size, or ``None``.
        k_net: optional proximal net of the adaptive dictionary coefficients (ACDNet).
        eta_k: initial coefficient step size, or ``None``.
    """

    def __init__(
        self,
        x_net: nn.Module,
        m_net: nn.Module,
        eta_x: float | None,
        eta_m: float | None,
        k_net: nn.Module | None = None,
        eta_k: float | None = None,
    ) -> None:
        super().__init__()
        self.x_net = x_net
        self.m_net = m_net
        if k_net is not None:
            self.k_net = k_net
        for name, value in (("eta_x", eta_x), ("eta_m", eta_m), ("eta_k", eta_k)):
            if value is None:
                self.register_parameter(name, None)
            else:
                setattr(self, name, learnable_scalar(value))


def learnable_scalar(value: float) -> nn.Parameter:
    """A learnable scalar step size / threshold, shape ``(1,)`` so it broadcasts everywhere."""
    return nn.Parameter(torch.tensor([float(value)]))


def oriented_gaussian_dictionary(num_filters: int, kernel_size: int = 9, image_channels: int = 1) -> torch.Tensor:
    """Deterministic initial dictionary: unit-norm oriented anisotropic Gaussians.

    The authors initialise from a Gaussian filter bank stored in a ``.mat`` file that is not
    distributed with a licence; metal artifacts are streaks, so a bank of elongated Gaussians at
    evenly spread orientations (alternating two elongations) is a natural, reproducible start.
    Each filter has unit L2 norm, the usual constraint in convolutional dictionary learning.

    Args:
        num_filters: number of filters.
        kernel_size: odd filter size.
        image_channels: image channels ``C``; every channel starts with the same filter (rain and
            metal streaks are colourless), each of unit norm.

    Returns:
        tensor ``(C, num_filters, kernel_size, kernel_size)`` (the layout of a conv weight that
        maps ``num_filters`` feature maps to a ``C``-channel artifact image).
    """
    if num_filters < 1 or kernel_size < 1 or kernel_size % 2 == 0 or image_channels < 1:
        raise ValueError(
            f"need num_filters >= 1, image_channels >= 1 and an odd kernel_size, got num_filters={num_filters}, "
            f"image_channels={image_channels}, kernel_size={kernel_size}."
        )
    half = kernel_size // 2
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    index = torch.arange(num_filters, dtype=torch.float64)
    theta = (index * math.pi / num_filters).view(-1, 1, 1)
    sigma_long = torch.where(index % 2 == 0, 0.45, 0.25).view(-1, 1, 1) * max(kernel_size, 3)
    sigma_short = torch.full_like(sigma_long, 0.12 * max(kernel_size, 3))
    along = xx * torch.cos(theta) + yy * torch.sin(theta)
    across = -xx * torch.sin(theta) + yy * torch.cos(theta)
    bank = torch.exp(-0.5 * ((along / sigma_long) ** 2 + (across / sigma_short) ** 2))
    bank = bank / bank.flatten(1).norm(dim=1).view(-1, 1, 1)
    return bank.unsqueeze(0).expand(image_channels, -1, -1, -1).float().contiguous()


def _flipped(filters: torch.Tensor) -> torch.Tensor:
    return filters.flip(-1, -2).transpose(0, 1)


# Both functions use the transposed formulation of the same linear map (flipped filters): oneDNN's
# CPU kernels for a conv with ONE output channel and 9×9 filters are slow, and the transposed form
# measured 2-3× faster forward + backward on CPU (see tests for the equivalence with F.conv2d).
def synthesize(feature_maps: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Artifact synthesis ``A = Σ_k C_k ⊛ M_k`` ('same' size; equals ``F.conv2d(M, C, padding=k//2)``).

    Args:
        feature_maps: ``(B, K, H, W)``.
        filters: ``(C, K, k, k)`` dictionary (``C`` = 1 for CT, 3 for colour deraining).

    Returns:
        ``(B, C, H, W)``.
    """
    return F.conv_transpose2d(feature_maps, _flipped(filters), padding=filters.shape[-1] // 2)


def analyze(residual: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`synthesize`: ``Σ_c C_ck^T ⋆ R_c`` for every filter, ``(B, C, H, W) -> (B, K, H, W)``."""
    return F.conv2d(residual, _flipped(filters), padding=filters.shape[-1] // 2)


class ImageInitializer(nn.Module):
    """Initial image ``X_0`` and auxiliary channels ``Q_0`` from a first estimate (LI, or the rainy image).

    ``Q_0`` starts as ``features - C`` learnable 3×3 filters applied to the ``C``-channel estimate
    (all initialised as the 3×3 mean filter, as published for DICDNet and RCDNet);
    ``[X_0, Q_0] = x_net([estimate, Q_0])``.

    Args:
        features: X-net width (image channels + auxiliary channels).
        num_res_blocks: residual blocks of the X-net.
        kernel_size: conv kernel size of the X-net.
        image_channels: image channels ``C`` (1 for CT, 3 for colour).
    """

    def __init__(self, features: int, num_res_blocks: int, kernel_size: int, image_channels: int = 1) -> None:
        super().__init__()
        if image_channels < 1:
            raise ValueError(f"image_channels must be >= 1, got {image_channels}.")
        if features <= image_channels:
            raise ValueError(
                f"features must be > image_channels={image_channels} (image + auxiliary channels), got {features}."
            )
        self.image_channels = int(image_channels)
        self.aux_filters = nn.Parameter(torch.full((features - image_channels, image_channels, 3, 3), 1.0 / 9.0))
        self.x_net = ProximalNet(features, num_res_blocks, kernel_size)

    def forward(self, li: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aux = F.conv2d(li, self.aux_filters, padding=1)
        xq = self.x_net(torch.cat((li, aux), dim=1))
        c = self.image_channels
        return xq[:, :c], xq[:, c:]


def image_update(
    x_net: nn.Module,
    eta_x: torch.Tensor,
    image: torch.Tensor,
    aux: torch.Tensor,
    artifact: torch.Tensor,
    ma: torch.Tensor,
    mask: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Proximal gradient step on ``X`` for ``½‖mask ⊙ (ma - A - X)‖²``, then the X-net.

    ``image`` has ``C`` channels (the first ``C`` channels of the X-net output are the new image);
    ``mask`` may be the float ``1.0`` where every pixel is observed (deraining).

    Returns:
        ``(X, Q, XQ)``: the new image, the new auxiliary channels and their concatenation (the
        final refinement X-net consumes the last ``XQ``).
    """
    step = eta_x * UPDATE_SCALE * mask
    x_mid = image + step * (ma - artifact - image)
    xq = x_net(torch.cat((x_mid, aux), dim=1))
    c = image.shape[1]
    return xq[:, :c], xq[:, c:], xq


def proximal_conv_names(
    net: nn.Module, which: Sequence[str] = ("x_net", "m_net"), group_order: int | None = None
) -> list[str]:
    """Qualified names of the ``nn.Conv2d`` layers inside the chosen proximal sub-networks.

    A conv is selected when one component of its qualified name equals an entry of ``which`` or
    ends with ``"_" + entry`` (so ``"x_net"`` also selects ``init.x_net``, ``final_x_net`` and
    ``warmup_stages.0.x_net``). All convs of the proximal nets map ``C -> C`` channels; none
    outputs a single image channel, so all are regularisable when ``C`` is a multiple of the group
    order. The dictionary convolutions (one output channel) and the 3×3 auxiliary-channel filters
    are functional, not ``nn.Conv2d``, and are never selected.

    Args:
        net: a network (a DDP ``module.`` prefix is kept as is).
        which: sub-network kinds to select.
        group_order: when given, raise if a selected conv has out-channels not divisible by it.

    Returns:
        names usable with ``net.get_submodule``.

    Raises:
        ValueError: ``which`` is empty or names a kind that selects no conv (the message lists the
            valid names, see :func:`proximal_net_names`), or a selected conv does not fit ``group_order``.
    """
    if isinstance(which, str):
        which = (which,)
    kinds = tuple(which)
    if not kinds:
        raise ValueError("which must name at least one sub-network kind, e.g. ('x_net', 'm_net').")
    selected: dict[str, nn.Conv2d] = {}
    matched: set[str] = set()
    for name, module in net.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        parts = name.split(".")
        hits = {k for k in kinds if any(p == k or p.endswith("_" + k) for p in parts)}
        if hits:
            matched |= hits
            selected[name] = module
    _check_proximal_kinds(net, [k for k in kinds if k not in matched])
    for name, module in selected.items():
        if group_order is not None and module.out_channels % group_order:
            raise ValueError(
                f"conv {name!r} has out_channels={module.out_channels}, not divisible by "
                f"group_order={group_order}; it cannot be regularised with this group."
            )
    return list(selected)


def proximal_net_names(net: nn.Module) -> list[str]:
    """The sub-network kinds of ``net`` that :func:`proximal_conv_names` accepts, e.g. ``["m_net", "x_net"]``.

    A kind is the last name component of a :class:`ProximalNet`; ``final_x_net`` is listed as the
    ``x_net`` it extends, since selecting ``x_net`` selects it too.

    Args:
        net: an unrolled MAR network (DICDNet, ACDNet, ...).

    Returns:
        The kinds, sorted.
    """
    found = {name.split(".")[-1] for name, module in net.named_modules() if isinstance(module, ProximalNet)}
    return sorted(k for k in found if not any(k.endswith("_" + other) for other in found if other != k))


def _check_proximal_kinds(net: nn.Module, unknown: Sequence[str]) -> None:
    """Raise for kinds that select no conv: a typo would otherwise regularise nothing without a word."""
    if not unknown:
        return
    network = type(getattr(net, "module", net)).__name__  # a DDP wrapper names its module
    valid = proximal_net_names(net)
    choices = f"valid names: {', '.join(valid)}" if valid else "it has no proximal sub-networks"
    raise ValueError(f"{network} has no proximal sub-network named {', '.join(map(repr, unknown))}; {choices}.")


class ConvDictionary(nn.Module):
    """A learnable convolutional dictionary ``(C, K, k, k)`` (``C`` image channels, ``K`` filters).

    ``forward()`` returns the filters times :data:`UPDATE_SCALE` (the published "/10").

    Args:
        num_filters: number of filters ``K`` (ignored when ``initial`` is given).
        kernel_size: odd filter size (ignored when ``initial`` is given).
        initial: optional initial filters ``(C, K, k, k)``; default :func:`oriented_gaussian_dictionary`.
        image_channels: ``C`` when ``initial`` is not given (1 for CT, 3 for colour deraining).
    """

    def __init__(
        self, num_filters: int = 32, kernel_size: int = 9, initial: torch.Tensor | None = None, image_channels: int = 1
    ) -> None:
        super().__init__()
        if initial is None:
            initial = oriented_gaussian_dictionary(num_filters, kernel_size, image_channels)
        if initial.ndim != 4:
            raise ValueError(f"initial filters must have shape (C, K, k, k), got {tuple(initial.shape)}.")
        self.weight = nn.Parameter(initial.detach().clone())

    @property
    def num_atoms(self) -> int:
        """Number of filters, i.e. of feature-map channels."""
        return int(self.weight.shape[1])

    @property
    def image_channels(self) -> int:
        """Channels of the synthesised artifact / rain layer."""
        return int(self.weight.shape[0])

    def raw_filters(self) -> torch.Tensor:
        """Filters without the update scale."""
        return self.weight

    def forward(self) -> torch.Tensor:
        return self.weight * UPDATE_SCALE


def feature_map_update(
    m_net: nn.Module,
    eta_m: torch.Tensor | None,
    feature_maps: torch.Tensor | None,
    artifact: torch.Tensor | None,
    image: torch.Tensor,
    ma: torch.Tensor,
    mask: torch.Tensor | float,
    filters: torch.Tensor,
    threshold: torch.Tensor,
) -> torch.Tensor:
    """Proximal gradient step on the feature maps ``M`` of a common dictionary, then the M-net.

    The first stage has no ``M`` yet: it back-projects the soft-thresholded masked residual
    ``relu(mask ⊙ (ma - X) - tau)`` through the dictionary instead (``feature_maps=None``).
    Later stages descend ``½‖mask ⊙ (ma - X - C ⊛ M)‖²``.
    """
    if feature_maps is None:
        return m_net(analyze(F.relu(mask * (ma - image) - threshold), filters))
    grad = analyze(mask * (artifact - (ma - image)), filters)
    return m_net(feature_maps - eta_m * UPDATE_SCALE * grad)


class StageTrace(NamedTuple):
    """State after a run of unrolled stages, with the per-stage images and artifacts."""

    image: torch.Tensor
    aux: torch.Tensor
    xq: torch.Tensor
    feature_maps: torch.Tensor
    artifact: torch.Tensor
    images: tuple[torch.Tensor, ...]
    artifacts: tuple[torch.Tensor, ...]


def run_common_dictionary_stages(
    stages: Sequence[UnrolledStage],
    image: torch.Tensor,
    aux: torch.Tensor,
    ma: torch.Tensor,
    mask: torch.Tensor | float,
    filters: torch.Tensor,
    first_filters: torch.Tensor,
    threshold: torch.Tensor,
) -> StageTrace:
    """Unrolled M-step / X-step iterations with one dictionary shared by all samples.

    Args:
        stages: the stages; the first must have ``eta_m=None``.
        image, aux: initial image and auxiliary channels.
        ma, mask: metal-affected image and non-metal mask (scaled units); for deraining the
            rainy image and ``1.0`` (every pixel observed).
        filters: dictionary used for synthesis and later gradient steps.
        first_filters: dictionary used for the first back-projection (DICDNet learns a separate one).
        threshold: soft threshold of the first back-projection.
    """
    feature_maps = artifact = xq = None
    images, artifacts = [], []
    for i, stage in enumerate(stages):
        feature_maps = feature_map_update(
            stage.m_net, stage.eta_m, feature_maps, artifact, image, ma, mask,
            first_filters if i == 0 else filters, threshold,
        )
        artifact = synthesize(feature_maps, filters)
        image, aux, xq = image_update(stage.x_net, stage.eta_x, image, aux, artifact, ma, mask)
        images.append(image)
        artifacts.append(artifact)
    return StageTrace(image, aux, xq, feature_maps, artifact, tuple(images), tuple(artifacts))


def make_stages(
    num_stages: int,
    features: int,
    feature_channels: int,
    num_res_blocks: int,
    kernel_size: int,
    eta_x: float,
    eta_m: float,
    feature_threshold: float,
) -> nn.ModuleList:
    """``num_stages`` :class:`UnrolledStage` s; the first has no M step size (it is unused)."""
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}.")
    return nn.ModuleList(
        UnrolledStage(
            x_net=ProximalNet(features, num_res_blocks, kernel_size),
            m_net=ProximalNet(feature_channels, num_res_blocks, kernel_size, threshold=feature_threshold),
            eta_x=eta_x,
            eta_m=None if i == 0 else eta_m,
        )
        for i in range(num_stages)
    )


def scale_outputs(scale: float, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Divide tensors by ``scale`` (back to µ units)."""
    return tuple(t / scale for t in tensors)


class UnrolledRun(NamedTuple):
    """What a backbone's unrolled iterations hand back to :class:`UnrolledMARNet` (scaled units)."""

    last_xq: torch.Tensor
    stage_images: tuple[torch.Tensor, ...]
    stage_artifacts: tuple[torch.Tensor, ...]
    warmup_images: tuple[torch.Tensor, ...] = ()
    warmup_artifacts: tuple[torch.Tensor, ...] = ()


class UnrolledMARNet(nn.Module):
    """Shared frame of the unrolled MAR networks: input handling, ``X_0``, final refinement, output.

    Subclasses implement :meth:`unroll`. Input: ONE tensor ``(B, 3, H, W)`` = [ma_CT, LI_CT,
    non-metal mask] in µ units (a single tensor so MONAI inferers and bundles work unchanged).
    Output: ``(B, 1, H, W)`` corrected image in eval mode; :class:`MAROutput` in training mode.

    Args:
        spatial_dims: must be 2.
        features: X-net width (image + ``features - 1`` auxiliary channels).
        num_res_blocks: residual blocks per proximal net.
        kernel_size: conv kernel size of the proximal nets.
        intensity_scale: factor applied to µ inputs before the network (and removed from outputs).
        group_order: when not ``None``, ``features`` must be divisible by it.
    """

    def __init__(
        self,
        spatial_dims: int,
        features: int,
        num_res_blocks: int,
        kernel_size: int,
        intensity_scale: float,
        group_order: int | None,
    ) -> None:
        super().__init__()
        _check_spatial_dims(spatial_dims)
        check_group_divisible("features", features, group_order)
        if not intensity_scale > 0:
            raise ValueError(f"intensity_scale must be > 0, got {intensity_scale}.")
        self.intensity_scale = float(intensity_scale)
        self.init = ImageInitializer(features, num_res_blocks, kernel_size)
        self.final_x_net = ProximalNet(features, num_res_blocks, kernel_size)

    def unroll(
        self, image: torch.Tensor, aux: torch.Tensor, ma: torch.Tensor, mask: torch.Tensor
    ) -> UnrolledRun:
        """Run the unrolled stages from ``(X_0, Q_0)``; all tensors in scaled units."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | MAROutput:
        ma_mu, li, mask = split_mar_input(x)
        s = self.intensity_scale
        ma, li = ma_mu * s, li * s
        image0, aux0 = self.init(li)
        run = self.unroll(image0, aux0, ma, mask)
        final = self.final_x_net(run.last_xq)[:, :1] / s
        if not self.training:
            return final
        return MAROutput(
            image=final,
            stage_images=scale_outputs(s, *run.stage_images),
            stage_artifacts=scale_outputs(s, *run.stage_artifacts),
            init_image=image0 / s,
            ma_image=ma_mu,
            warmup_images=scale_outputs(s, *run.warmup_images),
            warmup_artifacts=scale_outputs(s, *run.warmup_artifacts),
        )
