#!/usr/bin/env python
"""EQ-Reg training overhead: step time with the regulariser / step time on the same doubled batch without it.

Both arms build the paired batch ``[x ; g · x]`` and run one forward and one backward pass with an
Adam step; the EQ-Reg arm additionally has the forward hooks and the residual terms. The two arms
alternate step by step in one process, so machine load affects both alike; the reported figure is
the median of the per-pair ratios.

``--decompose`` adds a third arm, "hooks", in which every hook runs and hands its layer's output on
through an autograd node exactly as EQ-Reg's does, but computes no residual: its ratio is the cost of
the hook machinery alone, and the rest of the EQ-Reg arm's overhead is the residual arithmetic.

Example::

    python bench/bench_eqreg_overhead.py --backbone basicunet --steps 30
    python bench/bench_eqreg_overhead.py --backbone basicunet --steps 60 --decompose
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from _timing import alternate, per_round_ratios, quartiles
from torch import nn

import eqmar.equivariance.eqreg as eqreg_module
from eqmar.equivariance import EQReg, convs_divisible_by, pair_batch

__all__ = [
    "STEP_ARMS", "TrainingSetup", "build_backbone", "mar_input", "training_setup", "train_step", "hooks_only", "main"
]

#: The training arms of :data:`eqmar.engines.ARMS` that :func:`train_step` implements.
STEP_ARMS = ("plain", "aug", "eqreg")


class _PassThrough(torch.autograd.Function):
    """The features handed on through an autograd node, with a zero residual: EQ-Reg minus its arithmetic."""

    @staticmethod
    def forward(ctx, features: torch.Tensor):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        return features.detach(), features.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_features, grad_residual):  # type: ignore[override]
        return grad_features


@contextlib.contextmanager
def hooks_only() -> Iterator[None]:
    """Within the block, EQ-Reg's hooks run as usual but compute no residual (see ``--decompose``)."""
    original = eqreg_module.tapped_residual
    eqreg_module.tapped_residual = lambda features, *args, **kwargs: _PassThrough.apply(features)
    try:
        yield
    finally:
        eqreg_module.tapped_residual = original


def mar_input(batch: int, size: int) -> torch.Tensor:
    """A ``(batch, 3, size, size)`` MAR input ``[ma, LI, 1 - mask]`` with random images and no metal.

    Convolution cost does not depend on the values, so random images time the same as real ones.
    """
    x = torch.rand(batch, 3, size, size)
    x[:, 2] = 1.0
    return x


def build_backbone(
    name: str, size: int, stages: int, **network_kwargs: Any
) -> tuple[nn.Module, Callable[[int], torch.Tensor], nn.Module, object]:
    """Return (network, input factory, loss, regularised layers) for a backbone name.

    The unrolled MAR backbones regularise the published layers: every conv of X-net and M-net for
    DICDNet, X-net only for ACDNet (its M-net is 6 channels wide).

    Args:
        name: "basicunet", "dicdnet" or "acdnet".
        size: patch size of the inputs the factory makes.
        stages: unrolled stages of DICDNet/ACDNet.
        network_kwargs: further DICDNet/ACDNet constructor arguments (widths, ResBlocks).
    """
    if name == "basicunet":
        from monai.networks.nets import BasicUNet

        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(32, 32, 64, 128, 256, 32))
        return net, lambda b: torch.randn(b, 1, size, size), nn.MSELoss(), convs_divisible_by("C4")
    if name in ("dicdnet", "acdnet"):
        from eqmar import networks

        net = getattr(networks, "DICDNet" if name == "dicdnet" else "ACDNet")(num_stages=stages, **network_kwargs)
        which = ("x_net", "m_net") if name == "dicdnet" else ("x_net",)
        return net, lambda b: mar_input(b, size), _FinalImageMSE(), networks.proximal_conv_names(net, which=which)
    raise ValueError(f"unknown backbone {name!r}")


class _FinalImageMSE(nn.Module):
    def forward(self, pred, target: torch.Tensor) -> torch.Tensor:
        image = pred if isinstance(pred, torch.Tensor) else pred[0]
        return nn.functional.mse_loss(image, target)


@dataclass
class TrainingSetup:
    """A network in training mode with its optimiser, loss, input factory and (unhooked-on-demand) EQ-Reg."""

    net: nn.Module
    opt: torch.optim.Optimizer
    loss_fn: nn.Module
    make_input: Callable[[int], torch.Tensor]
    eqreg: EQReg


def training_setup(
    backbone: str, size: int, stages: int, device: str | torch.device = "cpu", **network_kwargs: Any
) -> TrainingSetup:
    """Seeded :class:`TrainingSetup` for :func:`build_backbone`'s arguments (Adam, lr 1e-4, λ = 1e-8).

    The network lives on ``device`` and the input factory makes its batches there.
    """
    torch.manual_seed(0)
    net, make_cpu_input, loss_fn, layers = build_backbone(backbone, size, stages, **network_kwargs)
    net.to(device).train()

    def make_input(batch: int) -> torch.Tensor:
        return make_cpu_input(batch).to(device)

    eqreg = EQReg(net, layers=layers, weight=1e-8, elements=[1, 2, 3])
    return TrainingSetup(net, torch.optim.Adam(net.parameters(), 1e-4), loss_fn, make_input, eqreg)


def train_step(setup: TrainingSetup, x: torch.Tensor, y: torch.Tensor, arm: str, n: int) -> float:
    """One timed training step of one of :data:`STEP_ARMS`; returns its seconds.

    Args:
        setup: the network and its training parts.
        x: input batch.
        y: target batch.
        arm: "plain" (``x`` as it is), "aug" (the paired batch ``[x ; rot90(x, n)]``, no term) or
            "eqreg" (the paired batch plus the EQ-Reg term).
        n: rotation element of the paired arms.
    """
    eqreg = setup.eqreg
    # the aug arm must run without hooks; the eqreg arm registers them in pair() and removes them in
    # pop_term(), as in training
    if arm != "eqreg":
        eqreg.remove_hooks()
    start = time.perf_counter()
    setup.opt.zero_grad(set_to_none=True)
    if arm == "eqreg":
        x, y = eqreg.pair((x, y), n)
    elif arm == "aug":
        x, y = pair_batch((x, y), "C4", n)
    elif arm != "plain":
        raise ValueError(f"unknown arm {arm!r}")
    loss = setup.loss_fn(setup.net(x), y)
    if arm == "eqreg":
        loss = loss + eqreg.weight * eqreg.pop_term()
    loss.backward()
    setup.opt.step()
    if x.is_cuda:  # kernels are still running when the step's Python code returns
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="basicunet", choices=["basicunet", "dicdnet", "acdnet"])
    parser.add_argument("--batch", type=int, default=4, help="batch size before pairing (doubled in the step)")
    parser.add_argument("--size", type=int, default=64, help="patch size")
    parser.add_argument("--steps", type=int, default=20, help="measured step pairs")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--stages", type=int, default=10, help="unrolled stages of DICDNet/ACDNet")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--decompose", action="store_true", help="also time the hooks without the residual arithmetic")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = training_setup(args.backbone, args.size, args.stages, args.device)
    x, y = setup.make_input(args.batch), torch.rand(args.batch, 1, args.size, args.size, device=args.device)
    arms = {arm: lambda i, arm=arm: train_step(setup, x, y, arm, 1 + i % 3) for arm in ("aug", "eqreg")}
    if args.decompose:
        arms["hooks"] = lambda i: _hooks_only_step(setup, x, y, 1 + i % 3)
    times = alternate(arms, args.steps, args.warmup)
    print(f"backbone={args.backbone} batch={args.batch}+{args.batch} size={args.size} "
          f"regularised layers={len(setup.eqreg.layers)} threads={torch.get_num_threads()} device={args.device}")
    print(f"median step without term: {statistics.median(times['aug']) * 1e3:.1f} ms")
    print(f"median step with EQ-Reg:  {statistics.median(times['eqreg']) * 1e3:.1f} ms")
    _print_ratio("EQ-Reg / doubled batch without term", times["eqreg"], times["aug"])
    if args.decompose:
        print(f"median step with hooks only: {statistics.median(times['hooks']) * 1e3:.1f} ms")
        _print_ratio("hooks only / doubled batch without term", times["hooks"], times["aug"])


def _hooks_only_step(setup: TrainingSetup, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    with hooks_only():
        return train_step(setup, x, y, "eqreg", n)


def _print_ratio(label: str, numerator: list[float], denominator: list[float]) -> None:
    ratios = per_round_ratios(numerator, denominator)
    q1, median, q3 = quartiles(ratios)
    of_medians = statistics.median(numerator) / statistics.median(denominator)
    print(f"median ratio ({label}): {median:.3f}x (IQR {q1:.3f}-{q3:.3f}; ratio of medians {of_medians:.3f}x)")


if __name__ == "__main__":
    main()
