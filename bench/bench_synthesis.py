"""Benchmark SynDeepLesion pair synthesis: cached vs naive at 640geo, and a size/view scaling table.

"Cached" is the intended use (``prepare_image`` once per slice, ``prepare_mask`` once per mask,
``simulate_pair`` per pair); "naive" redoes the image and mask projections for every pair (the
geometry's back-projection matrix, built on the first FBP, is shared by both). The input is pydicom's
real CT slice ``CT_small.dcm`` (HU) with a 9 mm round metal insert, resized by the simulator.

Example:
    python bench/bench_synthesis.py --repeats 5
    python bench/bench_synthesis.py --sizes 128 256 --views 160 320 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

from eqmar.ct.geometry import FanBeamGeometry
from eqmar.ct.simulator import SynDeepLesionSimulator

__all__ = ["main"]


def _ct_slice_hu() -> np.ndarray:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _metal_mask(size: int = 512) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    radius = 0.45 / 0.03  # 0.45 cm at DeepLesion's 0.03 cm pixels
    return (((xx - 0.42 * size) ** 2 + (yy - 0.58 * size) ** 2) < radius**2).astype(np.uint8)


def _median_seconds(task: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        task()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bench_640geo(hu: np.ndarray, mask: np.ndarray, repeats: int, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    sim = SynDeepLesionSimulator("640geo", device="cpu")
    init = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    prepare_image = _median_seconds(lambda: sim.prepare_image(hu), max(1, repeats // 2))
    prepare_mask = _median_seconds(lambda: sim.prepare_mask(mask), max(1, repeats // 2))
    img, prepared_mask = sim.prepare_image(hu), sim.prepare_mask(mask)
    sim.simulate_pair(img, prepared_mask, rng)  # warm-up
    cached = _median_seconds(lambda: sim.simulate_pair(img, prepared_mask, rng), repeats)
    clean = _median_seconds(lambda: sim.simulate_clean(img, rng), max(1, repeats // 2))
    naive = _median_seconds(
        lambda: sim.simulate_pair(sim.prepare_image(hu), sim.prepare_mask(mask), rng), max(1, repeats // 2)
    )
    sim.close()
    return {
        "init_s": init,
        "prepare_image_s": prepare_image,
        "prepare_mask_s": prepare_mask,
        "simulate_clean_s": clean,
        "cached_pair_s": cached,
        "naive_pair_s": naive,
        "speedup": naive / cached,
    }


def _bench_scaling(hu: np.ndarray, mask: np.ndarray, sizes: list[int], views: list[int], repeats: int, seed: int) -> list[dict]:
    base = FanBeamGeometry.preset("640geo")
    rows = []
    for size in sizes:
        for num_views in views:
            geometry = base.scaled(size, num_views)
            with SynDeepLesionSimulator(geometry, device="cpu") as sim:
                rng = np.random.default_rng(seed)
                img, prepared_mask = sim.prepare_image(hu), sim.prepare_mask(mask)
                sim.simulate_pair(img, prepared_mask, rng)
                seconds = _median_seconds(lambda: sim.simulate_pair(img, prepared_mask, rng), repeats)
            rows.append({"image_size": size, "views": num_views, "bins": geometry.num_det, "cached_pair_s": seconds})
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print Markdown tables and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 416], help="image sizes of the scaling table")
    parser.add_argument("--views", type=int, nargs="+", default=[160, 320, 640], help="view counts of the scaling table")
    parser.add_argument("--skip-640geo", action="store_true", help="only run the scaling table")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    hu, mask = _ct_slice_hu(), _metal_mask()
    results: dict = {"cpu_count": os.cpu_count(), "load_average_before": os.getloadavg()[0]}
    if not args.skip_640geo:
        r = _bench_640geo(hu, mask, args.repeats, args.seed)
        results["640geo"] = r
        print("## 640geo (416 px, 640 views x 641 bins), CPU\n")
        print("| step | seconds |\n|---|---|")
        for key in ("init_s", "prepare_image_s", "prepare_mask_s", "simulate_clean_s", "cached_pair_s", "naive_pair_s"):
            print(f"| {key[:-2]} | {r[key]:.3f} |")
        print(f"| speed-up cached vs naive | {r['speedup']:.2f}x |\n")
    rows = _bench_scaling(hu, mask, args.sizes, args.views, args.repeats, args.seed)
    results["scaling"] = rows
    print("## Cached s/pair by image size and views (detector bins scaled from 641 at 416 px)\n")
    print("| image size | views | bins | s/pair |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['image_size']} | {row['views']} | {row['bins']} | {row['cached_pair_s']:.3f} |")
    results["load_average_after"] = os.getloadavg()[0]
    print(
        f"\nCPU cores: {results['cpu_count']}, 1-min load average before/after: "
        f"{results['load_average_before']:.2f}/{results['load_average_after']:.2f}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
