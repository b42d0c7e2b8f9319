"""``eqmar-synthesize``: metal-artifact CT data in the SynDeepLesion layout (the published protocol, open).

Also run as ``python data_tools/synthesize_mar.py`` or ``python -m eqmar.data.cli``.

Inputs (pick one; with none, a small demo set is made from built-in phantoms and pydicom's
CT_small.dcm):

  --deeplesion DIR     DeepLesion Images_png tree (16-bit PNG, HU = value - 32768)
  --scans DIR          your own DICOM files/series folders and NIfTI volumes; slices are picked by
                       eqmar.data.slices.load_ct_slices (see its documentation for the rule)

Masks: --masks FILE loads SampleMasks.mat (CT_samples_bwMetal) or trainmask.npy/testmask.npy;
--masks generate (default) makes a realistic seeded 100-mask set. A 100-mask set is split as
published (test masks 0, 1, 19, 29, 35, 42, 62, 63, 97, 99; the other 90 train).

Splits: --split both (the default) is for the built-in demo, whose train and test images differ.
With --deeplesion or --scans choose --split train or --split test and run once per split, each with
its own images (e.g. its own --image-list): the tool cannot know which of your slices are test
slices, and the same images in both splits would leak the test set into training. A mask file
that is not a 100-mask set likewise needs an explicit --split.

Resuming keeps the files that exist, so it refuses an output folder whose split was simulated with
another metal, seed or geometry (recorded in <split>_<geometry>_settings.json).

The run is resumable (re-run the same command after an interruption), every file is written to a
temporary name and renamed, bad inputs are listed in synthesis_report_<split>.json and skipped,
and --shard i/n splits the images into n disjoint deterministic shares for a job scheduler (shards
may share --out; each writes synthesis_report_<split>_shard<i>of<n>.json; see docs/reliability.md).

Examples:
  eqmar-synthesize --out data/demo --image-size 128 --views 160
  eqmar-synthesize --deeplesion /data/DeepLesion --image-list train.txt \\
      --masks SampleMasks.mat --out /data/SynDeepLesion --split train --workers 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from eqmar.utils import parse_index_ranges


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from error
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--deeplesion", type=Path, help="DeepLesion root or Images_png folder")
    source.add_argument("--scans", type=Path, help="folder of DICOM files/series and NIfTI volumes")
    parser.add_argument("--image-list", type=Path, help="DeepLesion slices to use, one per line")
    parser.add_argument("--demo-count", type=int, default=8, help="images per split for the built-in demo set")
    parser.add_argument("--masks", default="generate", help="mask file (.mat/.npy) or 'generate' (default)")
    parser.add_argument("--mask-indices", help="masks of the split to use, e.g. 0-79 (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="output data root")
    parser.add_argument(
        "--split", choices=["train", "test", "both"], default="both",
        help="split to make (both: the built-in demo only; see Splits above)",
    )
    parser.add_argument("--preset", default="640geo", choices=["640geo", "adn", "dudonet"], help="scanner geometry")
    parser.add_argument("--image-size", type=int, help="reduce the preset to this image size (e.g. 128)")
    parser.add_argument("--views", type=int, help="number of views of the reduced geometry")
    parser.add_argument("--tag", help="geometry tag in folder names (default: preset, or preset_<N>px<V>v)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="projector device")
    parser.add_argument("--metal", default="Ti", help="implant metal (Ti, Fe, ...)")
    parser.add_argument("--limit", type=int, help="only the first K images (per split and shard)")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="process share i of n (i/n)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (noise, generated masks, phantoms)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def load_mask_set(spec: str, seed: int) -> np.ndarray:
    from eqmar.data.masks import generate_mask_set, load_masks

    if spec == "generate":
        return generate_mask_set(seed=seed)
    return load_masks(spec)


def sources_for(args: argparse.Namespace, split: str) -> tuple[list, list[dict[str, str]]]:
    """The image sources of a split, and the inputs rejected while listing them (``--scans``)."""
    from eqmar.data.synthesis import deeplesion_sources, demo_sources, volume_sources

    rejected: list[dict[str, str]] = []
    if args.deeplesion is not None:
        return deeplesion_sources(args.deeplesion, args.image_list), rejected
    if args.scans is not None:
        return volume_sources(args.scans, rejected), rejected
    return demo_sources(args.demo_count, args.seed, split), rejected


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.image_list is not None and args.deeplesion is None:
        print("error: --image-list needs --deeplesion", file=sys.stderr)
        return 2
    from eqmar.data.masks import MASK_SET_SIZE
    from eqmar.data.synthesis import SynthesisConfig, select_split_masks, synthesize_dataset

    config = SynthesisConfig(
        geometry=args.preset, image_size=args.image_size, num_views=args.views, tag=args.tag,
        device=args.device, metal=args.metal, seed=args.seed,
    )
    try:
        mask_indices = parse_index_ranges(args.mask_indices)
    except ValueError as error:
        print(f"error: --mask-indices: {error}", file=sys.stderr)
        return 2
    try:
        masks = load_mask_set(args.masks, args.seed)
    except (OSError, ValueError, KeyError) as error:
        # the loader's messages name the file
        print(f"error: --masks: {error}", file=sys.stderr)
        return 2
    if args.split == "both":
        if args.deeplesion is not None or args.scans is not None:
            print(
                "error: --split both would put the same images into the train and the test split; with "
                "--deeplesion or --scans run once per split with --split train / --split test, each with its "
                "own images (e.g. its own --image-list)",
                file=sys.stderr,
            )
            return 2
        if masks.ndim == 3 and masks.shape[-1] != MASK_SET_SIZE:
            print(
                f"error: {args.masks} holds {masks.shape[-1]} masks, not a {MASK_SET_SIZE}-mask set, so its "
                "train/test split is not defined; choose --split train or --split test",
                file=sys.stderr,
            )
            return 2
    splits = ["train", "test"] if args.split == "both" else [args.split]
    failed = complete = 0
    for split in splits:
        try:
            sources, rejected = sources_for(args, split)
            report = synthesize_dataset(
                sources, select_split_masks(masks, split), args.out, split, config,
                mask_indices=mask_indices, workers=args.workers, limit=args.limit,
                shard=args.shard, progress=not args.no_progress, rejected_inputs=rejected,
            )
        except (OSError, ValueError) as error:  # bad inputs or masks (found before writing), I/O errors
            print(f"error: {error}", file=sys.stderr)
            return 2
        failed += len(report.failures)
        complete += report.images_complete
        print(
            f"{split}: {report.images_complete}/{report.images_total} images complete, "
            f"{report.files_written} files written, {report.files_kept} kept, {len(report.failures)} failed, "
            f"{len(report.rejected_inputs)} inputs rejected, {report.seconds:.1f} s -> {args.out}"
        )
        for entry in report.rejected_inputs:
            print(f"  rejected {entry['source']}: {entry['error']}")
        for failure in report.failures:
            # the error usually starts with the file's path already: do not print it twice
            error = failure["error"].replace(f"{failure['source']}: ", "", 1)
            print(f"  skipped {failure['image_id']} ({failure['source']}): {error}")
    if not complete:
        print(f"error: nothing was synthesized into {args.out}: every input failed (see above)", file=sys.stderr)
        return 1
    return 1 if failed and args.deeplesion is None and args.scans is None else 0


if __name__ == "__main__":
    sys.exit(main())
