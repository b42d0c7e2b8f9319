"""Benchmark SynDeepLesion pair synthesis: cached vs naive at 640geo, and a size/view scaling table.

"Cached" is the intended use (``prepare_image`` once per slice, ``prepare_mask`` once per mask,
``simulate_pair`` per pair); "naive" redoes the image and mask projections for every pair (the
geometry's back-projection matrix, built on the first FBP, is shared by both). The input is pydicom's
real CT slice ``CT_small.dcm`` (HU) with a 9 mm round metal insert, resized by the simulator.

``--device cuda`` runs the projections with ASTRA's CUDA projectors (on a GPU machine); the table then
also gives pairs per second of one process.

Example:
    python bench/bench_synthesis.py --repeats 5
    python bench/bench_synthesis.py --sizes 128 256 --views 160 320 --json out.json
    python bench/bench_synthesis.py --device cuda --repeats 20
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _timing import measure, median_seconds, write_json

from eqmar.ct.geometry import FanBeamGeometry
from eqmar.ct.projector import resolve_device
from eqmar.ct.simulator import SynDeepLesionSimulator

__all__ = ["ct_slice_hu", "metal_mask", "scaling_row", "main"]


def ct_slice_hu() -> np.ndarray:
    """pydicom's ``CT_small.dcm`` test slice (128 x 128) in HU."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def metal_mask(size: int = 512) -> np.ndarray:
    """A 9 mm round metal insert (uint8, 1 = metal) on a DeepLesion-sized grid of ``size`` pixels."""
    yy, xx = np.mgrid[:size, :size]
    radius = 0.45 / 0.03  # 0.45 cm at DeepLesion's 0.03 cm pixels
    return (((xx - 0.42 * size) ** 2 + (yy - 0.58 * size) ** 2) < radius**2).astype(np.uint8)


def _bench_640geo(hu: np.ndarray, mask: np.ndarray, repeats: int, seed: int, device: str) -> dict[str, float]:
    start = time.perf_counter()
    sim = SynDeepLesionSimulator("640geo", device=device)
    init = time.perf_counter() - start
    rng = np.random.default_rng(seed)
    prepare_image = median_seconds(lambda: sim.prepare_image(hu), max(1, repeats // 2))
    prepare_mask = median_seconds(lambda: sim.prepare_mask(mask), max(1, repeats // 2))
    img, prepared_mask = sim.prepare_image(hu), sim.prepare_mask(mask)
    sim.simulate_pair(img, prepared_mask, rng)  # warm-up
    cached = median_seconds(lambda: sim.simulate_pair(img, prepared_mask, rng), repeats)
    clean = median_seconds(lambda: sim.simulate_clean(img, rng), max(1, repeats // 2))
    naive = median_seconds(
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
        "pairs_per_s": 1.0 / cached,
    }


def scaling_row(
    hu: np.ndarray,
    mask: np.ndarray,
    size: int,
    num_views: int,
    repeats: int,
    seed: int,
    one_off: bool = False,
    device: str = "cpu",
) -> dict[str, float | int]:
    """Median seconds per cached pair at 640geo scaled to ``size`` pixels and ``num_views`` views.

    Args:
        hu: clean HU image (any square size; the simulator resizes it).
        mask: metal mask (any square size).
        size: image size.
        num_views: number of views (detector bins scale with the image size).
        repeats: timed pairs (after one warm-up pair).
        seed: noise seed.
        one_off: also time what is paid once: simulator set-up (``init_s``), ``prepare_image_s``,
            ``prepare_mask_s`` (single calls) and the warm-up pair (``first_pair_s``, which builds
            the back-projection matrix on the CPU).
        device: projector device, ``"cpu"`` or ``"cuda"``.

    Returns:
        ``image_size``, ``views``, ``bins``, ``cached_pair_s`` (and the one-off keys if asked for).
    """
    geometry = FanBeamGeometry.preset("640geo").scaled(size, num_views)
    row: dict[str, float | int] = {"image_size": size, "views": num_views, "bins": geometry.num_det}
    simulator, init = measure(lambda: SynDeepLesionSimulator(geometry, device=device))
    with simulator as sim:
        rng = np.random.default_rng(seed)
        img, prepare_image = measure(lambda: sim.prepare_image(hu))
        prepared_mask, prepare_mask = measure(lambda: sim.prepare_mask(mask))
        _, first_pair = measure(lambda: sim.simulate_pair(img, prepared_mask, rng))
        row["cached_pair_s"] = median_seconds(lambda: sim.simulate_pair(img, prepared_mask, rng), repeats)
    if one_off:
        row.update(init_s=init, prepare_image_s=prepare_image, prepare_mask_s=prepare_mask, first_pair_s=first_pair)
    return row


def _bench_scaling(
    hu: np.ndarray, mask: np.ndarray, sizes: list[int], views: list[int], repeats: int, seed: int, device: str
) -> list[dict]:
    return [
        scaling_row(hu, mask, size, num_views, repeats, seed, device=device) for size in sizes for num_views in views
    ]


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print Markdown tables and return the numbers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 416],
                        help="image sizes of the scaling table")
    parser.add_argument("--views", type=int, nargs="+", default=[160, 320, 640],
                        help="view counts of the scaling table")
    parser.add_argument("--skip-640geo", action="store_true", help="only run the scaling table")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "auto"], default="cpu", help="projector device (auto: CUDA if ASTRA has it)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    device = resolve_device(args.device)
    hu, mask = ct_slice_hu(), metal_mask()
    results: dict = {"cpu_count": os.cpu_count(), "device": device, "load_average_before": os.getloadavg()[0]}
    if not args.skip_640geo:
        r = _bench_640geo(hu, mask, args.repeats, args.seed, device)
        results["640geo"] = r
        print(f"## 640geo (416 px, 640 views x 641 bins), {device.upper()}\n")
        print("| step | seconds |\n|---|---|")
        for key in ("init_s", "prepare_image_s", "prepare_mask_s", "simulate_clean_s", "cached_pair_s", "naive_pair_s"):
            print(f"| {key[:-2]} | {r[key]:.3f} |")
        print(f"| speed-up cached vs naive | {r['speedup']:.2f}x |")
        print(f"| cached pairs per second (one process) | {r['pairs_per_s']:.2f} |\n")
    rows = _bench_scaling(hu, mask, args.sizes, args.views, args.repeats, args.seed, device)
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
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
