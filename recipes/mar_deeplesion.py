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
import sys
from pathlib import Path
from typing import Any

from eqmar.engines.cli import add_experiment_arguments, collect_overrides, run_experiment_cli
from eqmar.utils import parse_index_ranges

# argparse dest -> MARExperimentConfig field, besides the flags every recipe shares
FIELDS = {
    "backbone": "backbone",
    "stages": "num_stages",
    "features": "features",
    "test_images": "test_images",
    "val_images": "val_images",
    "geometry_tag": "geometry_tag",
}


def build_parser() -> argparse.ArgumentParser:
    from eqmar.apps.mar import BACKBONES

    p = argparse.ArgumentParser(prog="mar_deeplesion.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_arguments(
        p, "runs/mar_deeplesion", arms=("plain", "aug", "eqreg"),
        data_help="SynDeepLesion root (default: built-in demo set)"
    )
    p.add_argument("--geometry-tag", help="geometry tag of the data folders (default 640geo)")
    p.add_argument("--backbone", choices=BACKBONES)
    p.add_argument("--regularise",
                   help="proximal nets whose convs get EQ-Reg, comma-separated (default: the published choice, "
                        "x_net,m_net; x_net for acdnet)")
    p.add_argument("--stages", type=int, help="unrolled stages T")
    p.add_argument("--features", type=int, help="proximal-net width (divisible by the group order)")
    p.add_argument("--train-masks", help="training mask indices, e.g. 0-79 (published)")
    p.add_argument("--val-masks", help="validation mask indices, e.g. 80-89 (published); 'none' to skip")
    p.add_argument("--val-images", type=int, help="validate on the first N training images")
    p.add_argument("--test-images", type=int, help="score only the first N test images")
    p.add_argument("--preset", choices=("demo", "reference", "clinical"), default="demo",
                   help="without --data: 'demo' (default; 128 px, three arms, about 5 min on 2 CPU cores) or "
                        "'reference' (the reference model: one EQ-Reg UNet at 416 px / 640 views, about 80 min) or "
                        "'clinical' (the shipped model: the reference model, given by --init-weights, fine-tuned on "
                        "the clinical route's inputs as well, about 35 min)")
    p.add_argument("--init-weights", type=Path, metavar="MODEL",
                   help="start from the weights of this eqmar MAR model file (same network)")
    p.add_argument("--route-fraction", type=float,
                   help="fraction of training samples whose inputs are made as the clinical route makes them "
                        "(stored HU, threshold mask, image-domain LI); 0 = protocol inputs only")
    p.add_argument("--metal-crops", type=float, help="fraction of training patches centred on a metal pixel")
    p.add_argument("--route-metal-crops", type=float,
                   help="the same for the samples with clinical-route inputs (default: --metal-crops)")
    p.add_argument("--train-image", action="append", type=Path, metavar="FILE",
                   help="add a CT slice (DeepLesion PNG, DICOM, NIfTI or SynDeepLesion gt.h5) to the built-in training "
                        "set (repeatable; never used for testing)")
    p.add_argument("--holdout-image", action="append", type=Path, metavar="FILE",
                   help="add a CT slice (DeepLesion PNG, DICOM, NIfTI or SynDeepLesion gt.h5) to the demo's held-out "
                        "set (repeatable)")
    return p


def _summary(results: dict[str, Any], cfg: Any) -> str:
    return (f"{results['table']}\n\nresults: {cfg.training.output_dir / 'results.json'}, "
            f"figures: {cfg.training.output_dir / 'examples.png'}, "
            f"{cfg.training.output_dir / 'equivariance.png'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from eqmar.apps.mar import MARExperimentConfig, run_mar_experiment

    overrides = collect_overrides(args, FIELDS)
    try:
        if args.train_masks:
            overrides["train_masks"] = tuple(parse_index_ranges(args.train_masks))
        if args.val_masks:
            overrides["val_masks"] = () if args.val_masks == "none" else tuple(parse_index_ranges(args.val_masks))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.train_image:
        overrides["train_image_files"] = tuple(args.train_image)
    if args.holdout_image:
        overrides["holdout_images"] = tuple(args.holdout_image)
    for flag, name in (("init_weights", "init_weights"), ("route_fraction", "route_fraction"),
                       ("metal_crops", "metal_crop_fraction"), ("route_metal_crops", "route_metal_crop_fraction")):
        if getattr(args, flag) is not None:
            overrides[name] = getattr(args, flag)
    if args.regularise:
        overrides["regularised"] = tuple(part.strip() for part in args.regularise.split(",") if part.strip())
    builtin = None
    if args.preset in ("reference", "clinical"):
        if args.data is not None:
            print(f"error: --preset {args.preset} trains on the built-in data; drop --data or --preset",
                  file=sys.stderr)
            return 2
        if args.preset == "clinical" and args.init_weights is None:
            print("error: --preset clinical fine-tunes a reference model: give --init-weights "
                  "runs/mar_reference/eqreg/model.pt (from --preset reference)", file=sys.stderr)
            return 2
        builtin = (MARExperimentConfig.reference_default if args.preset == "reference"
                   else MARExperimentConfig.clinical_default)
    return run_experiment_cli(args, MARExperimentConfig, run_mar_experiment, overrides, _summary, builtin)


if __name__ == "__main__":
    sys.exit(main())
