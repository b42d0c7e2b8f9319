#!/usr/bin/env python
"""CT metal artifact reduction with and without EQ-Reg: three arms, the official metric.

With no arguments: synthesizes (or reuses) a small demo set from built-in phantoms and pydicom's
CT_small.dcm at reduced geometry (128 px, 160 views), trains three arms with the same seed and
budget -- plain, rot90 augmentation only, rot90 augmentation + EQ-Reg -- scores LI and the three
models with the SynDeepLesion metric, prints the table and writes results.json, results.md,
examples.png and equivariance.png.

With --data DIR (a SynDeepLesion root from data_tools/synthesize_mar.py or the published files) the
defaults are the published protocol: DICDNet with T = 10 stages, batch 16 (+16 rotated), 64x64
patches, Adam 2e-4 with betas (0.5, 0.999), MultiStepLR, masks 0-79 for training and 80-89 for
validation, every test image with the 10 test masks, lambda = 1e-8 on every conv of X-net and M-net.

Examples:
  python recipes/mar_deeplesion.py
  python recipes/mar_deeplesion.py --data /data/SynDeepLesion --arm eqreg --epochs 200 --resume
  python recipes/mar_deeplesion.py --data /data/SynDeepLesion --nproc 4      # 4 GPUs, global batch 16
  torchrun --nproc-per-node 4 recipes/mar_deeplesion.py --data /data/SynDeepLesion
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eqmar.engines.distributed import add_distributed_arguments, launch
from eqmar.utils import parse_index_ranges

if TYPE_CHECKING:
    from eqmar.apps.mar import MARExperimentConfig

OVERRIDES = {
    "backbone": "backbone",
    "epochs": "epochs",
    "iters_per_epoch": "iters_per_epoch",
    "batch_size": "batch_size",
    "patch_size": "patch_size",
    "lr": "lr",
    "lam": "weight",
    "group": "group",
    "reduction": "reduction",
    "stages": "num_stages",
    "features": "features",
    "seed": "seed",
    "device": "device",
    "workers": "workers",
    "test_images": "test_images",
    "val_images": "val_images",
    "geometry_tag": "geometry_tag",
    "checkpoint_interval": "checkpoint_interval",
}


def build_parser() -> argparse.ArgumentParser:
    from eqmar.apps.mar import BACKBONES

    p = argparse.ArgumentParser(prog="mar_deeplesion.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="SynDeepLesion root (default: built-in demo set)")
    p.add_argument("--geometry-tag", help="geometry tag of the data folders (default 640geo)")
    p.add_argument("--out", type=Path, default=Path("runs/mar_deeplesion"), help="output folder")
    p.add_argument("--arm", action="append", choices=["plain", "aug", "eqreg"], help="train only this arm (repeatable)")
    p.add_argument("--backbone", choices=BACKBONES)
    p.add_argument("--epochs", type=int)
    p.add_argument("--iters-per-epoch", type=int)
    p.add_argument("--batch-size", type=int, help="batch size before adding the rotated half")
    p.add_argument("--patch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lambda", dest="lam", type=float, help="EQ-Reg weight")
    p.add_argument("--group", choices=["C2", "C4", "D4", "C8"])
    p.add_argument("--reduction", choices=["norm", "mean"], help="EQ-Reg norm: published Frobenius or RMS")
    p.add_argument("--regularise", help="proximal nets whose convs get EQ-Reg, comma-separated (default x_net,m_net)")
    p.add_argument("--stages", type=int, help="unrolled stages T")
    p.add_argument("--features", type=int, help="proximal-net width (divisible by the group order)")
    p.add_argument("--train-masks", help="training mask indices, e.g. 0-79 (published)")
    p.add_argument("--val-masks", help="validation mask indices, e.g. 80-89 (published); 'none' to skip")
    p.add_argument("--val-images", type=int, help="validate on the first N training images")
    p.add_argument("--test-images", type=int, help="score only the first N test images")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, help="data-loader workers")
    p.add_argument("--checkpoint-interval", type=int, help="checkpoint every N iterations")
    p.add_argument("--resume", action="store_true", help="continue each arm from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true")
    return add_distributed_arguments(p)


def _train(local_rank: int, cfg: MARExperimentConfig) -> dict[str, Any]:
    """One process of the experiment (every rank runs it; rank 0 writes the files)."""
    from eqmar.apps.mar import run_mar_experiment

    return run_mar_experiment(cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from eqmar.apps.mar import MARExperimentConfig

    overrides = {field: getattr(args, flag) for flag, field in OVERRIDES.items() if getattr(args, flag) is not None}
    overrides.update(output_dir=args.out, resume=args.resume, progress=not args.no_progress)
    if args.arm:
        overrides["arms"] = tuple(dict.fromkeys(args.arm))
    try:
        if args.train_masks:
            overrides["train_masks"] = tuple(parse_index_ranges(args.train_masks))
        if args.val_masks:
            overrides["val_masks"] = () if args.val_masks == "none" else tuple(parse_index_ranges(args.val_masks))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.regularise:
        overrides["regularised"] = tuple(part.strip() for part in args.regularise.split(",") if part.strip())
    if args.data is not None:
        if not args.data.is_dir():
            print(f"error: --data {args.data} is not a folder", file=sys.stderr)
            return 2
        cfg = MARExperimentConfig.published(args.data, **overrides)
    else:
        cfg = MARExperimentConfig.demo_default(**overrides)
    try:
        results = launch(_train, args.nproc, args.backend, cfg)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if results is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print()
    print(results["table"])
    print(f"\nresults: {cfg.output_dir / 'results.json'}, figures: {cfg.output_dir / 'examples.png'}, "
          f"{cfg.output_dir / 'equivariance.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
