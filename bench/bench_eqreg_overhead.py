#!/usr/bin/env python
"""EQ-Reg training overhead: step time with the regulariser / step time on the same doubled batch without it.

Both arms build the paired batch ``[x ; g · x]`` and run one forward and one backward pass with an
Adam step; the EQ-Reg arm additionally has the forward hooks and the residual terms. The two arms
alternate step by step in one process, so machine load affects both alike; the reported figure is
the median of the per-pair ratios.

Example::

    python bench/bench_eqreg_overhead.py --backbone basicunet --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from eqmar.equivariance import EQReg, convs_divisible_by, pair_batch


def build_backbone(name: str, size: int, stages: int) -> tuple[nn.Module, Callable[[int], torch.Tensor], nn.Module, object]:
    """Return (network, input factory, loss, regularised layers) for a backbone name.

    The unrolled MAR backbones regularise the published layers: every conv of X-net and M-net for
    DICDNet, X-net only for ACDNet (its M-net is 6 channels wide).
    """
    if name == "basicunet":
        from monai.networks.nets import BasicUNet

        net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(32, 32, 64, 128, 256, 32))
        return net, lambda b: torch.randn(b, 1, size, size), nn.MSELoss(), convs_divisible_by("C4")
    if name in ("dicdnet", "acdnet"):
        from eqmar import networks

        net = getattr(networks, "DICDNet" if name == "dicdnet" else "ACDNet")(num_stages=stages)
        which = ("x_net", "m_net") if name == "dicdnet" else ("x_net",)

        def make(b: int) -> torch.Tensor:
            x = torch.rand(b, 3, size, size)
            x[:, 2] = 1.0
            return x

        return net, make, _FinalImageMSE(), networks.proximal_conv_names(net, which=which)
    raise ValueError(f"unknown backbone {name!r}")


class _FinalImageMSE(nn.Module):
    def forward(self, pred, target: torch.Tensor) -> torch.Tensor:
        image = pred if isinstance(pred, torch.Tensor) else pred[0]
        return nn.functional.mse_loss(image, target)


def _step(net: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
          eqreg: EQReg | None, n: int) -> float:
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    if eqreg is not None:
        xx, yy = eqreg.pair((x, y), n)
    else:
        xx, yy = pair_batch((x, y), "C4", n)
    loss = loss_fn(net(xx), yy)
    if eqreg is not None:
        loss = loss + eqreg.weight * eqreg.pop_term()
    loss.backward()
    opt.step()
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net, make_input, loss_fn, layers = build_backbone(args.backbone, args.size, args.stages)
    net.train()
    eqreg = EQReg(net, layers=layers, weight=1e-8, elements=[1, 2, 3])
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    x, y = make_input(args.batch), torch.rand(args.batch, 1, args.size, args.size)
    ratios, plain_times, eq_times = [], [], []
    for i in range(args.warmup + args.steps):
        n = 1 + i % 3
        eqreg.remove_hooks()
        t_plain = _step(net, opt, loss_fn, x, y, None, n)
        eqreg.register_hooks()
        t_eq = _step(net, opt, loss_fn, x, y, eqreg, n)
        if i >= args.warmup:
            plain_times.append(t_plain)
            eq_times.append(t_eq)
            ratios.append(t_eq / t_plain)
    print(f"backbone={args.backbone} batch={args.batch}+{args.batch} size={args.size} "
          f"regularised layers={len(eqreg.layers)} threads={torch.get_num_threads()}")
    print(f"median step without term: {statistics.median(plain_times) * 1e3:.1f} ms")
    print(f"median step with EQ-Reg:  {statistics.median(eq_times) * 1e3:.1f} ms")
    print(f"median ratio (EQ-Reg / doubled batch without term): {statistics.median(ratios):.3f}x "
          f"(IQR {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f})")


if __name__ == "__main__":
    main()
