#!/usr/bin/env python
"""The MAR demo over several training seeds: mean ± sd per arm and paired differences with 95 % CIs.

Runs ``recipes/mar_deeplesion.py`` once per seed (same data, same budget; every arm of a seed starts
from the same weights and sees the same batches), into ``--out/seed<S>``, then tabulates average
PSNR and SSIM of plain, aug and eqreg on the demo test set and on the held-out set, with the paired
differences eqreg − aug, eqreg − plain and aug − plain and their Student-t 95 % intervals. Writes
``verdict.md`` and ``verdict.json`` into ``--out``.

A seed whose ``results.json`` already holds all three arms is not trained again, so an interrupted
run continues where it stopped (and the unfinished seed resumes from its arms' checkpoints).
Arguments after ``--`` go to every ``mar_deeplesion.py`` run.

Examples:
  python recipes/mar_seeds.py --seeds 0-4
  python recipes/mar_seeds.py --seeds 0-4 -- --holdout-image /data/SynDeepLesion/test_640geo/000001_01_01/001/gt.h5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

from eqmar.engines.seeds import format_seed_table, mean_sd, paired_difference
from eqmar.utils import parse_index_ranges

ARMS = ("plain", "aug", "eqreg")
PAIRS = (("eqreg", "aug"), ("eqreg", "plain"), ("aug", "plain"))
SETS = {"test": ("metrics", "baselines"), "held-out": ("holdout_metrics", "holdout_baselines")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mar_seeds.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0-4", help="training seeds, e.g. 0-4 (default) or 0,3,7")
    p.add_argument("--out", type=Path, default=Path("runs/mar_seeds"), help="output folder (default runs/mar_seeds)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("recipe_args", nargs=argparse.REMAINDER, help="-- then arguments for every mar_deeplesion.py run")
    return p


def _mar_recipe() -> Any:
    """The sibling ``mar_deeplesion.py`` as a module, whatever the working folder."""
    spec = importlib.util.spec_from_file_location("mar_deeplesion",
                                                  Path(__file__).resolve().parent / "mar_deeplesion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _complete(path: Path) -> bool:
    try:
        return set(ARMS) <= set(json.loads(path.read_text())["arms"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def verdict(runs: dict[int, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown and JSON of the per-seed results ``seed -> results.json content``."""
    seeds = sorted(runs)
    sections, payload = [], {"seeds": seeds, "sets": {}}
    for name, (arm_key, base_key) in SETS.items():
        if not all(arm_key in runs[s]["arms"][arm] for s in seeds for arm in ARMS):
            continue
        entry: dict[str, Any] = {}
        for metric, unit, digits in (("psnr", "dB", 2), ("ssim", "SSIM", 4)):
            scores = {arm: [runs[s]["arms"][arm][arm_key]["average"][metric] for s in seeds] for arm in ARMS}
            li = runs[seeds[0]][base_key]["LI"]["average"][metric]
            table = format_seed_table(scores, PAIRS, baseline=li, unit=unit, digits=digits)
            sections.append(f"### {name} set, average {metric.upper()} (seeds {', '.join(map(str, seeds))}; "
                            f"baseline = LI)\n\n{table}")
            entry[metric] = {
                "LI": li,
                "arms": {arm: {"per_seed": v, "mean": mean_sd(v)[0], "sd": mean_sd(v)[1]} for arm, v in scores.items()},
                "minus_LI": {arm: paired_difference(v, [li] * len(v)).as_dict() for arm, v in scores.items()},
                "differences": {f"{a} - {b}": paired_difference(scores[a], scores[b]).as_dict() for a, b in PAIRS},
            }
        payload["sets"][name] = entry
    rows = ["| arm | mean relative layer error | output error ‖f(gx) − g f(x)‖ / ‖f(x)‖ |", "|---|---|---|"]
    for arm in ARMS:
        reports = [runs[s]["arms"][arm].get("equivariance") for s in seeds]
        if not all(isinstance(r, dict) and r.get("layers") for r in reports):
            continue
        layer = mean_sd([math.fsum(r["layers"].values()) / len(r["layers"]) for r in reports])
        output = mean_sd([float(r["output"]) for r in reports])
        payload.setdefault("equivariance", {})[arm] = {"mean_layer_error": layer, "output_error": output}
        rows.append(f"| {arm} | {layer[0]:.3f} ± {layer[1]:.3f} | {output[0]:.4f} ± {output[1]:.4f} |")
    if len(rows) > 2:
        sections.append("### Equivariance of the trained networks (mean ± sd over seeds)\n\n" + "\n".join(rows))
    return "\n\n".join(sections), payload


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extra = [a for a in args.recipe_args if a != "--"]
    try:
        seeds = parse_index_ranges(args.seeds)
    except ValueError as error:
        print(f"error: --seeds: {error}", file=sys.stderr)
        return 2
    if len(seeds) < 2:
        print("error: --seeds: name at least two seeds (one seed has no spread to compare arms against)",
              file=sys.stderr)
        return 2
    runs = {}
    for seed in seeds:
        out = args.out / f"seed{seed}"
        if not _complete(out / "results.json"):
            print(f"seed {seed}: training into {out}", flush=True)
            flags = ["--seed", str(seed), "--out", str(out), "--resume",
                     *(["--no-progress"] if args.no_progress else []), *extra]
            code = _mar_recipe().main(flags)
            if code:
                return code
        runs[seed] = json.loads((out / "results.json").read_text())
    text, payload = verdict(runs)
    from eqmar.engines.report import write_results

    write_results(args.out, payload, [text], stem="verdict")
    print(text)
    print(f"\nverdict: {args.out / 'verdict.md'}, {args.out / 'verdict.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
