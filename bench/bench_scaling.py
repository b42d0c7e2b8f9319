#!/usr/bin/env python
"""Scaling tables: synthesis time versus image size and views; training step time versus batch size.

Part ``synthesis``: seconds per cached SynDeepLesion pair (``prepare_image``/``prepare_mask`` once,
then ``simulate_pair``; the measurement of ``bench/bench_synthesis.py``) at 640geo scaled to each
image size and number of views (detector bins scale with the size: 641 at 416 px). The one-off
costs per geometry are listed too: simulator set-up, the two projections, and the first pair,
which on the CPU also builds the back-projection matrix.

Part ``training``: one forward, backward and Adam step (``bench/bench_eqreg_overhead.py``'s step)
per batch size for the three training arms of ``eqmar.engines.ARMS``, which alternate step by step in one
process:

* ``plain``: the batch of B patches as it is;
* ``aug``: the paired batch ``[x ; rot90(x, n)]`` of 2B patches, no regulariser;
* ``eqreg``: the same 2B patches plus the EQ-Reg hooks and term.

``eqreg/plain`` is what an EQ-Reg run costs per step against the published baseline at the same
B (about 2x from the doubled batch alone); ``eqreg/aug`` is the regulariser's own overhead. Both
are medians of the per-step ratios. Backbones: ``dicdnet-demo`` (the demo recipe's DICDNet:
3 stages, 16 channels, 2 ResBlocks, ``MARExperimentConfig.demo_default``), ``basicunet`` (MONAI
BasicUNet 32-256, 1 channel, as in the overhead benchmark) and ``dicdnet`` (published T = 10;
slow on a CPU, not in the defaults).

Examples::

    python bench/bench_scaling.py --json scaling.json --markdown scaling.md
    python bench/bench_scaling.py --part training --batches 1 2 4 8 --steps 20 --threads 2
    python bench/bench_scaling.py --quick          # smoke run: tiny sizes, one repeat
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _timing import (
    alternate,
    load_average,
    machine_footer,
    machine_info,
    markdown_table,
    per_round_ratios,
    summary,
    write_json,
)
from bench_eqreg_overhead import STEP_ARMS, train_step, training_setup
from bench_synthesis import ct_slice_hu, metal_mask, scaling_row

from eqmar.apps.mar.workflow import MARExperimentConfig

__all__ = ["TRAINING_BACKBONES", "synthesis_table", "training_table", "main"]

#: Backbones of the training part (see the module docstring).
TRAINING_BACKBONES = ("dicdnet-demo", "basicunet", "dicdnet")

#: Settings of ``--quick``: every loop runs once at sizes that take well under a second.
_QUICK = {"sizes": [64], "views": [32], "repeats": 1, "batches": [1, 2], "patch": 32, "steps": 1, "warmup": 0}


def _backbone_arguments(name: str) -> tuple[str, int, dict[str, Any]]:
    """(bench_eqreg_overhead backbone name, stages, network kwargs) of a training backbone."""
    if name == "basicunet":
        return "basicunet", 0, {}
    if name not in ("dicdnet-demo", "dicdnet"):
        raise ValueError(f"unknown training backbone {name!r}; choose from {TRAINING_BACKBONES}")
    # data is not read: only the network fields of the configurations are used
    cfg = MARExperimentConfig.demo_default() if name == "dicdnet-demo" else MARExperimentConfig.published(Path("."))
    kwargs = {"features": cfg.features, "num_filters": cfg.num_filters, "num_res_blocks": cfg.num_res_blocks}
    return "dicdnet", cfg.num_stages, kwargs


# ----------------------------------------------------------------------------------- synthesis
def synthesis_table(sizes: Sequence[int], views: Sequence[int], repeats: int, seed: int = 0) -> list[dict[str, Any]]:
    """One :func:`bench_synthesis.scaling_row` (with the one-off costs) per image size and view count."""
    hu, mask = ct_slice_hu(), metal_mask()
    return [scaling_row(hu, mask, size, n, repeats, seed, one_off=True) for size in sizes for n in views]


def _synthesis_markdown(rows: Sequence[dict[str, Any]]) -> str:
    sizes = sorted({row["image_size"] for row in rows})
    views = sorted({row["views"] for row in rows})
    cached = {(row["image_size"], row["views"]): row["cached_pair_s"] for row in rows}
    pivot = markdown_table(
        ["views"] + [f"{size} px" for size in sizes],
        [[n] + [f"{cached[size, n]:.3f}" if (size, n) in cached else "" for size in sizes] for n in views],
    )
    detail = markdown_table(
        ["image size", "views", "bins", "set-up s", "prepare_image s", "prepare_mask s", "first pair s",
         "cached s/pair"],
        [
            [r["image_size"], r["views"], r["bins"], f"{r['init_s']:.2f}", f"{r['prepare_image_s']:.2f}",
             f"{r['prepare_mask_s']:.2f}", f"{r['first_pair_s']:.2f}", f"{r['cached_pair_s']:.3f}"]
            for r in rows
        ],
    )
    return (
        "## Synthesis: cached seconds per pair by image size and views (CPU)\n\n" + pivot
        + "\n\n### One-off costs per geometry\n\n" + detail
    )


# ------------------------------------------------------------------------------------ training
def _training_rows(backbone: str, batches: Sequence[int], patch: int, steps: int, warmup: int) -> list[dict[str, Any]]:
    """Alternating plain/aug/eqreg steps of one backbone at every batch size."""
    name, stages, kwargs = _backbone_arguments(backbone)
    setup = training_setup(name, patch, stages, **kwargs)
    rows = []
    for batch in batches:
        x, y = setup.make_input(batch), torch.rand(batch, 1, patch, patch)
        times = alternate(
            {arm: lambda i, arm=arm, x=x, y=y: train_step(setup, x, y, arm, 1 + i % 3) for arm in STEP_ARMS},
            steps, warmup
        )
        row: dict[str, Any] = {"backbone": backbone, "batch": batch, "patch": patch,
                               "regularised_layers": len(setup.eqreg.layers)}
        row.update({f"{arm}_ms": summary([t * 1e3 for t in times[arm]]) for arm in STEP_ARMS})
        for other in ("plain", "aug"):
            ratios = per_round_ratios(times["eqreg"], times[other])
            row[f"eqreg_over_{other}"] = summary(ratios)
        rows.append(row)
    return rows


def training_table(
    backbones: Sequence[str], batches: Sequence[int], patch: int, steps: int, warmup: int
) -> list[dict[str, Any]]:
    """Training step times of every backbone at every batch size (see the module docstring).

    Args:
        backbones: names from :data:`TRAINING_BACKBONES`.
        batches: batch sizes B before pairing.
        patch: patch size (a multiple of 16 for BasicUNet).
        steps: measured rounds (one step of each arm per round).
        warmup: rounds run first and discarded, per batch size.

    Returns:
        One row per (backbone, batch): ``plain_ms``/``aug_ms``/``eqreg_ms`` and the per-round
        ratios ``eqreg_over_plain``/``eqreg_over_aug``, each as :func:`_timing.summary`.
    """
    return [row for backbone in backbones for row in _training_rows(backbone, batches, patch, steps, warmup)]


def _training_markdown(rows: Sequence[dict[str, Any]]) -> str:
    def ratio(s: dict[str, float]) -> str:
        return f"{s['median']:.2f}x ({s['q1']:.2f}-{s['q3']:.2f})"

    table = markdown_table(
        ["backbone", "B", "plain ms (B)", "aug ms (2B)", "eqreg ms (2B)", "eqreg/plain (IQR)", "eqreg/aug (IQR)"],
        [
            [r["backbone"], r["batch"], f"{r['plain_ms']['median']:.1f}", f"{r['aug_ms']['median']:.1f}",
             f"{r['eqreg_ms']['median']:.1f}", ratio(r["eqreg_over_plain"]), ratio(r["eqreg_over_aug"])]
            for r in rows
        ],
    )
    return "## Training step time by batch size (median ms; ratios: median of per-step ratios)\n\n" + table


# ---------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["synthesis", "training", "all"], default="all")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: overrides sizes, views, batches, patch, steps, repeats, warm-up with "
                        f"{_QUICK}")
    synthesis = parser.add_argument_group("synthesis")
    synthesis.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 416], help="image sizes")
    synthesis.add_argument("--views", type=int, nargs="+", default=[160, 320, 640], help="numbers of views")
    synthesis.add_argument("--repeats", type=int, default=5, help="timed pairs per geometry (median)")
    synthesis.add_argument("--seed", type=int, default=0, help="noise seed")
    training = parser.add_argument_group("training")
    training.add_argument("--backbones", nargs="+", choices=TRAINING_BACKBONES, default=["dicdnet-demo", "basicunet"])
    training.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sizes before pairing")
    training.add_argument("--patch", type=int, default=64, help="patch size (the recipes' 64)")
    training.add_argument("--steps", type=int, default=15, help="measured rounds of the three arms per batch size")
    training.add_argument("--warmup", type=int, default=2, help="discarded rounds per batch size")
    training.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--markdown", type=Path, default=None, help="write the Markdown tables to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the selected parts, print Markdown tables and return the results."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in _QUICK.items():
            setattr(args, key, value)
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("--repeats and --steps must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    results: dict[str, Any] = {"settings": settings, "machine": machine_info()}
    sections = []
    if args.part in ("synthesis", "all"):
        before = load_average()
        rows = synthesis_table(args.sizes, args.views, args.repeats, args.seed)
        results["synthesis"] = {"rows": rows, "load_average_before": before, "load_average_after": load_average()}
        sections.append(_synthesis_markdown(rows))
        print(sections[-1] + "\n", flush=True)
    if args.part in ("training", "all"):
        before = load_average()
        rows = training_table(args.backbones, args.batches, args.patch, args.steps, args.warmup)
        results["training"] = {"rows": rows, "threads": torch.get_num_threads(),
                               "load_average_before": before, "load_average_after": load_average()}
        sections.append(_training_markdown(rows))
        print(sections[-1] + "\n", flush=True)
    results["load_average_after"] = load_average()
    footer = machine_footer(results["machine"], results["load_average_after"])
    print(footer)
    if args.json:
        write_json(args.json, results)
    if args.markdown:
        args.markdown.write_text("\n\n".join(sections) + "\n\n" + footer + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
