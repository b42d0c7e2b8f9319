#!/usr/bin/env python
"""Rotated-digit classification with and without EQ-Reg: train upright, test rotated.

With no arguments: scikit-learn's bundled 8x8 digits (no download), upsampled into a 20-pixel box on
a 28-pixel canvas, a stratified 75/25 train/test split (data seed 0). Five arms with the same seed
and epochs: an ordinary 6-conv CNN on plain batches (plain), on [x ; rot90(x)] batches (aug), on the
same batches with EQ-Reg on every conv (eqreg), and strictly invariant P4 / P4M networks with about
the CNN's parameter count (strict-p4, strict-p4m). Every arm is scored upright, at the four
right angles (averaged), and at random angles in [0, 360) (bilinear, seeded); the table is printed
and results.json, results.md, accuracy_vs_angle.png and equivariance.png are written to --out.
About 2.5 minutes of CPU time on one thread (measured results: docs/results_classification.md).

--data DIR reads your own images instead: DIR/<class>/*.png (split here) or
DIR/train/<class>/* and DIR/test/<class>/* (split given); grey, dark background.

Use --evaluate-on val to compare settings (e.g. --lambda) on a validation split carved from the
training images; the test images are then not used.

Examples:
  python recipes/classify_rotated_digits.py
  python recipes/classify_rotated_digits.py --arm aug --arm eqreg --lambda 1 --seed 1 --out /tmp/digits
  python recipes/classify_rotated_digits.py --data /data/my_digits --epochs 20
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from eqmar.engines.cli import add_experiment_arguments, collect_overrides, run_experiment_cli

# argparse dest -> ClassificationConfig field, besides the flags every recipe shares
FIELDS = {
    "data_seed": "data_seed",
    "image_size": "image_size",
    "digit_size": "digit_size",
    "head": "head",
    "evaluate_on": "evaluate_on",
    "angle_step": "angle_step",
    "train_samples": "max_train",
    "eval_samples": "max_eval",
}


def build_parser() -> argparse.ArgumentParser:
    from eqmar.apps.classify import ALL_ARMS, HEADS

    p = argparse.ArgumentParser(
        prog="classify_rotated_digits.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_experiment_arguments(
        p, "runs/classify_rotated_digits", arms=ALL_ARMS, patches=False, iterations=False,
        data_help="image-folder root (default: scikit-learn's digits)",
    )
    p.add_argument("--head", choices=HEADS, help="CNN head (default orientation-pool)")
    p.add_argument("--image-size", type=int, help="canvas side in pixels (default 28)")
    p.add_argument("--digit-size", type=int, help="side of the box the digit is resized into (default 20 for 28)")
    p.add_argument("--evaluate-on", choices=["test", "val"],
                   help="score the test split (default) or a validation split")
    p.add_argument("--angle-step", type=float, help="spacing of the accuracy-vs-angle curve in degrees (default 15)")
    p.add_argument("--train-samples", type=int, help="use only the first N training images")
    p.add_argument("--eval-samples", type=int, help="score only the first N held-out images")
    p.add_argument("--data-seed", type=int, help="seed of the splits and random test angles (default 0)")
    return p


def _summary(results: dict[str, Any], cfg: Any) -> str:
    return (f"{results['table']}\n\n{results['equivariance_table']}\n\n{results['data']['evaluation']} "
            f"{results['data']['split']} images, {results['wall_seconds']:.0f} s; "
            f"results: {cfg.training.output_dir / 'results.json'}, "
            f"figures: {cfg.training.output_dir / 'accuracy_vs_angle.png'}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from eqmar.apps.classify import ClassificationConfig, run_classification_experiment

    overrides = collect_overrides(args, FIELDS)
    return run_experiment_cli(args, ClassificationConfig, run_classification_experiment, overrides, _summary)


if __name__ == "__main__":
    sys.exit(main())
