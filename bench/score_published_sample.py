#!/usr/bin/env python
"""Score a MAR model file on a single-slice SynDeepLesion folder, such as the published sample.

The folder holds ``gt.h5`` (clean µ under ``image``), ``0.h5`` … ``9.h5`` (``ma_CT``, ``LI_CT`` of
each test mask) and ``testmask.npy``: the layout of the sample the SynDeepLesion authors publish with
their code (:func:`eqmar.data.syndeeplesion.sample_files`).
Prints the protocol table (LI and the model, PSNR/SSIM by mask group) and the mean
signed error / RMSE in HU by distance from the metal.

Example:
  python bench/score_published_sample.py bundles/eqmar_mar/models/model.pt --sample /data/syndeeplesion_sample
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="MAR model file (model.pt)")
    p.add_argument("--sample", type=Path, required=True, help="single-slice SynDeepLesion folder")
    args = p.parse_args(argv)
    from monai.data import DataLoader

    from eqmar.apps.mar.evaluation import (
        evaluate_mar,
        format_region_table,
        input_predictor,
        network_predictor,
        region_errors,
    )
    from eqmar.apps.mar.model_file import load_mar_model
    from eqmar.apps.mar.sliding import inference_roi
    from eqmar.apps.mar.transforms import MARInputsd
    from eqmar.data.datasets import SynDeepLesionTestDataset
    from eqmar.data.syndeeplesion import link_sample
    from eqmar.metrics import format_mar_table

    try:
        network, payload = load_mar_model(args.model)
        roi = inference_roi(payload.get("meta"))
        with tempfile.TemporaryDirectory() as tmp:
            root, tag = link_sample(args.sample, tmp)
            loader = DataLoader(SynDeepLesionTestDataset(root, geometry=tag, transform=MARInputsd()), batch_size=2)
            methods = {"LI": input_predictor("LI_CT"), "model": network_predictor(network, roi=roi)}
            scores = {name: evaluate_mar(loader, f) for name, f in methods.items()}
            errors = {name: region_errors(loader, f) for name, f in methods.items()}
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_mar_table(scores))
    print()
    print(format_region_table(errors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
