"""Measure how equivariant a trained network is, layer by layer, on held-out data.

With the same convention as the training term, the relative error of layer ``l`` is

    E_l = || g · F_l(x) - shift_g(F_l(g · x)) || / || F_l(x) ||

pooled over the data and over the non-identity group elements (sums of squares are accumulated
before the square root, so large batches weigh as much as their size), and the output error is

    E_out = || f(g · x) - g · f(x) || / || f(x) ||

for image outputs, or ``|| f(g · x) - f(x) || / || f(x) ||`` (invariance) for vector outputs such as
class logits. A strictly equivariant network gives zeros; plotting the numbers for a plain CNN, a
rot-augmented CNN and an EQ-Reg CNN reproduces the comparison of the EQ-Reg paper as numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eqmar.equivariance.functional import equivariance_difference
from eqmar.equivariance.groups import RotationGroup, get_group
from eqmar.equivariance.layers import LayerSpec, select_layers, unwrap_network
from eqmar.equivariance.pairing import infer_batch_size, pair_batch

__all__ = ["EquivarianceReport", "equivariance_report", "plot_equivariance_report"]


@dataclass
class EquivarianceReport:
    """Relative equivariance errors of one network.

    Attributes:
        group: group name.
        elements: the group elements averaged over.
        layers: ``{layer name: relative error}`` in network order.
        output: relative output error.
        samples: number of samples evaluated.
    """

    group: str
    elements: list[int]
    layers: dict[str, float] = field(default_factory=dict)
    output: float = float("nan")
    samples: int = 0

    @property
    def mean_layer_error(self) -> float:
        values = list(self.layers.values())
        return float(sum(values) / len(values)) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EquivarianceReport:
        """The report :meth:`to_dict` gave (e.g. read back from ``results.json``); other keys are ignored.

        Raises:
            KeyError: when ``"group"`` or ``"elements"`` is missing.
        """
        return cls(
            group=str(data["group"]),
            elements=[int(n) for n in data["elements"]],
            layers={str(name): float(error) for name, error in data.get("layers", {}).items()},
            output=float(data.get("output", float("nan"))),
            samples=int(data.get("samples", 0)),
        )

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


class _SquaredSums:
    """Accumulates numerator/denominator sums of squares per key."""

    def __init__(self) -> None:
        self.num: dict[str, float] = {}
        self.den: dict[str, float] = {}

    def add(self, key: str, num: torch.Tensor, den: torch.Tensor) -> None:
        self.num[key] = self.num.get(key, 0.0) + float(num)
        self.den[key] = self.den.get(key, 0.0) + float(den)

    def ratio(self, key: str) -> float:
        den = self.den.get(key, 0.0)
        return (self.num[key] / den) ** 0.5 if den > 0 else float("nan")


def _network_output(network: nn.Module, prepared: Any) -> torch.Tensor:
    if isinstance(prepared, (tuple, list)) and len(prepared) == 4:
        inputs, _, args, kwargs = prepared
        out = network(inputs, *args, **kwargs)
    else:
        inputs = prepared[0] if isinstance(prepared, (tuple, list)) else prepared
        out = network(inputs)
    if isinstance(out, Mapping):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.float()


def _output_error_terms(
    pred: torch.Tensor, half: int, group: RotationGroup, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    base, moved = pred[:half], pred[half:]
    # equivariance wherever the group can act on the output (C2 also on non-square maps)
    if pred.ndim == 4 and group.acts_on(*pred.shape[-2:]):
        expected = group.act(base, n)
        mask = group.valid_region(pred.shape[-2], pred.shape[-1], pred.device)
        if mask is not None:
            expected, moved, base = expected * mask, moved * mask, base * mask
        return ((moved - expected) ** 2).sum(), (base**2).sum()
    return ((moved - base) ** 2).sum(), (base**2).sum()


@torch.no_grad()
def equivariance_report(
    network: nn.Module,
    loader: Iterable[Any],
    layers: LayerSpec = nn.Conv2d,
    group: str | RotationGroup = "C4",
    elements: Sequence[int] | None = None,
    image_keys: Sequence[str] | None = None,
    prepare_batch: Callable | None = None,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
) -> EquivarianceReport:
    """Per-layer and output equivariance errors of ``network`` over ``loader``, in eval mode.

    Args:
        network: the network (unmodified; DDP wrappers are unwrapped).
        loader: an iterable of batches (dict, tensor or (image, label)), e.g. a MONAI ``DataLoader``.
        layers: layer specification as for :class:`~eqmar.equivariance.EQReg`. Layers whose channel
            count is not divisible by the group order are skipped (their orientation channels are
            undefined).
        group: group name or instance.
        elements: group elements to test (default: all but the identity).
        image_keys: dict-batch keys to transform (default: every (B, C, H, W) tensor).
        prepare_batch: turns a batch into network inputs (MONAI convention); default MONAI's
            ``default_prepare_batch``.
        device: where to run; default the network's device.
        max_batches: stop after this many batches.
    """
    grp = get_group(group)
    net = unwrap_network(network)
    chosen = elements if elements is not None else [n for n in grp.elements() if n != 0]
    if prepare_batch is None:
        from monai.engines.utils import default_prepare_batch

        prepare_batch = default_prepare_batch
    if device is None:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    selected = select_layers(net, layers)
    sums = _SquaredSums()
    state: dict[str, Any] = {}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            z = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] % grp.order:
                return
            half, n = state["half"], state["n"]
            diff, mask = equivariance_difference(z[:half], z[half:], n, grp)
            base = z[:half].float() if mask is None else z[:half].float() * mask
            sums.add(name, (diff**2).sum(), (base**2).sum())

        return hook

    was_training = net.training
    handles = [m.register_forward_hook(make_hook(name)) for name, m in selected.items()]
    samples = 0
    try:
        net.eval()
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            half = infer_batch_size(batch, image_keys)
            samples += half
            for n in chosen:
                state.update(half=half, n=grp.check_element(n))
                prepared = prepare_batch(pair_batch(batch, grp, n, image_keys), device, False)
                pred = _network_output(net, prepared)
                sums.add("__output__", *_output_error_terms(pred, half, grp, n))
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    return EquivarianceReport(
        group=grp.name,
        elements=[int(n) for n in chosen],
        layers={name: sums.ratio(name) for name in selected if name in sums.num},
        output=sums.ratio("__output__") if "__output__" in sums.num else float("nan"),
        samples=samples,
    )


def plot_equivariance_report(
    reports: EquivarianceReport | Mapping[str, EquivarianceReport],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Write a PNG comparing per-layer and output equivariance errors of one or several networks.

    With up to 24 layers each layer is a group of bars; with more (e.g. the ~130 convs of DICDNet)
    the layer errors are drawn as lines over the layer index. The output error is always a bar group.

    Args:
        reports: one report, or ``{label: report}`` for several networks (e.g. plain / aug / EQ-Reg).
        path: output PNG path (parent folders are created).
        title: figure title.
    """
    from eqmar.utils import optional_import

    optional_import("matplotlib", "plot_equivariance_report").use("Agg", force=False)
    import matplotlib.pyplot as plt

    named = {"network": reports} if isinstance(reports, EquivarianceReport) else dict(reports)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_layers = max(len(r.layers) for r in named.values())
    fig, (ax_layers, ax_out) = plt.subplots(
        1, 2, figsize=(min(4 + 0.45 * num_layers * max(1, len(named)) / 2, 16), 4.2),
        gridspec_kw={"width_ratios": [4, 1]},
    )
    width = 0.8 / len(named)
    for i, (label, report) in enumerate(named.items()):
        values = list(report.layers.values())
        positions = [j + (i - (len(named) - 1) / 2) * width for j in range(len(values))]
        if num_layers <= 24:
            ax_layers.bar(positions, values, width=width, label=label)
        else:
            ax_layers.plot(range(len(values)), values, label=label, lw=1.2)
        ax_out.bar([i], [report.output], width=0.7, label=label)
    if num_layers <= 24:
        names = list(next(iter(named.values())).layers)
        ax_layers.set_xticks(range(len(names)))
        ax_layers.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    else:
        ax_layers.set_xlabel("regularised layer index")
    ax_layers.set_ylabel("relative equivariance error")
    ax_layers.set_yscale("log")
    ax_layers.set_title("per layer")
    ax_layers.legend(fontsize=8)
    ax_out.set_xticks(range(len(named)))
    ax_out.set_xticklabels(list(named), rotation=30, ha="right", fontsize=8)
    ax_out.set_title("output")
    group = next(iter(named.values())).group
    fig.suptitle(title or f"Equivariance error under {group}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
