#!/usr/bin/env python
"""Score eqmar's clinical inference route against ground truth.

A clinical user has only the reconstructed slice: stored HU, metal clipped at the top of the
stored range, no sinogram. :class:`eqmar.apps.mar.inference.MARInference` (``python -m eqmar.infer``)
handles that by thresholding the metal, computing an image-domain LI (re-project, interpolate the
metal trace, FBP) and running the MAR network. This script feeds that route simulated slices whose
ground truth is known and scores two of its images:

* **route LI**: the route's image-domain LI, brought back to the input grid by the route itself
  (the model's network is swapped for one that returns its LI input channel, so the LI goes through
  the same resize-and-add-back step and metal restoration as the network output);
* **network**: what ``correct_slice`` returns, i.e. what the user gets.

For reference the protocol's sinogram-domain ``LI_CT`` (which a clinical user does not have) is
scored too. Every (clean, ``ma_CT``) pair is turned into the stored image a scanner would write:
``HU = (µ / 0.192 − 1) · 1000`` rounded to integers and clipped to [−1024, 3071]. The pairs come from

* ``--phantoms N``: procedural test phantoms simulated by eqmar's own synthesis
  (:func:`eqmar.data.synthesis.synthesize_dataset`) at the model's geometry, with the test masks of
  :func:`eqmar.data.masks.generate_mask_set`;
* ``--sample DIR``: a single-slice SynDeepLesion folder (``gt.h5``, ``0.h5`` … ``9.h5``,
  ``testmask.npy``), e.g. the published sample.

Scores, all on the ground-truth grid and outside the ground-truth metal mask of the pair (the test
mask resized by :func:`eqmar.data.masks.resize_mask`, as :mod:`eqmar.data.datasets` does), so that
every method is scored on the same pixels whatever mask the route found:

* the protocol PSNR/SSIM (:func:`eqmar.metrics.batch_mar_scores` on µ maps);
* the mean signed error and RMSE in HU per region (:func:`eqmar.apps.mar.evaluation.region_errors`);
* the **halo band**: pixels 1 to 5 px (Euclidean) from the metal; its pooled mean signed error and
  RMSE, and the mean over pairs of the absolute per-pair mean signed error (an offset that flips sign
  between pairs does not cancel there). The route's threshold mask also takes in blooming next to the
  metal, whose stored values it puts back; the last column leaves those pixels out of the band, to
  tell that part of the halo from the rest.

Writes ``<out>/clinical_route.json`` (numbers, per pair too) and ``<out>/clinical_route.png`` (rows =
examples; columns: stored-HU input, route LI, network, ground truth, network − ground truth in HU)
and prints markdown tables. Missing or unreadable inputs end with a one-line error and exit status 2.

Examples::

    python bench/clinical_route.py --phantoms 4 --out clinical_route
    python bench/clinical_route.py --phantoms 0 --sample ../shared/conformance/syndeeplesion --out clinical_route
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eqmar.apps.mar.route import STORED_HU_RANGE, stored_hu  # the scanner's stored image, as training makes it

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "bundles" / "eqmar_mar" / "models" / "model.pt"
#: Halo band around the metal, in pixels of the ground-truth grid (distance to the nearest metal pixel).
HALO_BAND_PX = (1.0, 5.0)
#: Methods scored, in table order.
METHODS = ("route LI", "network", "protocol LI (sinogram)")
#: Test masks of the SynDeepLesion protocol (indices into the 10 test masks).
ALL_TEST_MASKS = tuple(range(10))
#: Display window of the image columns (HU), and the +- range of the error map.
WINDOW_HU = (-400.0, 600.0)
ERROR_RANGE_HU = 300.0


class InputError(ValueError):
    """A missing or unreadable input; :func:`main` prints it on one line and exits with status 2."""


@dataclass
class Pair:
    """One (clean, metal-affected) slice pair, in µ (1/cm) on the ground-truth grid.

    Attributes:
        name: ``"<source>:<image id>/mask <k>"``.
        source: ``"phantoms"`` or ``"sample"``.
        mask_index: test-mask index (0..9).
        gt_mu: (H, W) clean µ.
        ma_mu: (H, W) metal-affected µ (``ma_CT``).
        li_mu: (H, W) the protocol's sinogram-domain LI (``LI_CT``), a reference only.
        metal: (H, W) bool ground-truth metal mask.
    """

    name: str
    source: str
    mask_index: int
    gt_mu: np.ndarray
    ma_mu: np.ndarray
    li_mu: np.ndarray
    metal: np.ndarray


@dataclass
class RouteResult:
    """What the clinical route made of one pair, all (H, W) float32 HU on the input grid.

    Attributes:
        stored_hu: the stored input.
        route_li_hu: the route's image-domain LI.
        network_hu: the route's output (what ``correct_slice`` returns).
        route_metal: bool metal mask the route found by its HU threshold.
        info: ``correct_slice``'s info of the network pass.
    """

    stored_hu: np.ndarray
    route_li_hu: np.ndarray
    network_hu: np.ndarray
    route_metal: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ inputs
def _check_masks(mask_indices: Iterable[int]) -> tuple[int, ...]:
    indices = tuple(int(k) for k in mask_indices)
    bad = [k for k in indices if k not in ALL_TEST_MASKS]
    if not indices or bad:
        raise InputError(f"test mask indices must be a non-empty selection of 0..9, got {list(indices)}")
    return indices


def load_sample_pairs(folder: str | Path, mask_indices: Sequence[int] = ALL_TEST_MASKS) -> list[Pair]:
    """Pairs of a single-slice SynDeepLesion folder (``gt.h5``, ``<k>.h5``, ``testmask.npy``).

    Raises:
        InputError: a missing folder or file, or one that cannot be read as expected (the message names it).
    """
    from eqmar.data.masks import load_masks, resize_mask
    from eqmar.data.syndeeplesion import read_clean, read_pair, sample_files

    folder = Path(folder)
    indices = _check_masks(mask_indices)
    try:
        files = sample_files(folder, check_files=False)  # each reader below names a missing or corrupt file
    except FileNotFoundError as error:
        raise InputError(str(error)) from None

    def read(path: Path, reader: Any, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        try:
            arrays = reader(path, keys=keys)
        except (OSError, KeyError, ValueError) as error:  # FileNotFoundError is an OSError
            raise InputError(_naming(path, error)) from error
        for key, array in arrays.items():
            if array.ndim != 2 or array.shape[0] != array.shape[1] or not np.isfinite(array).all():
                raise InputError(f"{path}: {key} must be a square, finite 2-D µ map, got shape {array.shape}")
        return arrays

    gt = read(files["gt"], read_clean, ("image",))["image"].astype(np.float32)
    mask_file = files["masks"]
    try:
        masks = load_masks(mask_file)
    except (OSError, ValueError) as error:
        raise InputError(_naming(mask_file, error)) from error
    if masks.shape[-1] <= max(indices):
        raise InputError(f"{mask_file}: holds {masks.shape[-1]} masks, mask {max(indices)} requested")
    pairs = []
    for k in indices:
        path = files[str(k)]
        arrays = read(path, read_pair, ("ma_CT", "LI_CT"))
        if arrays["ma_CT"].shape != gt.shape or arrays["LI_CT"].shape != gt.shape:
            raise InputError(f"{path}: ma_CT/LI_CT {arrays['ma_CT'].shape} differ from gt.h5's image {gt.shape}")
        # the protocol's rule, as eqmar.data.datasets resizes the test masks for scoring
        metal = resize_mask(masks[:, :, k], gt.shape[0]).astype(bool)
        pairs.append(Pair(f"sample:{folder.name}/mask {k}", "sample", k, gt, arrays["ma_CT"].astype(np.float32),
                          arrays["LI_CT"].astype(np.float32), metal))
    return pairs


def phantom_pairs(
    count: int,
    geometry: Any,
    workdir: str | Path,
    mask_indices: Sequence[int] = ALL_TEST_MASKS,
    mask_seed: int = 0,
    data_seed: int = 0,
    kinds: Sequence[str] | None = None,
    device: str = "auto",
) -> list[Pair]:
    """Simulate ``count`` procedural test phantoms × the test masks with eqmar's synthesis.

    Args:
        count: number of phantoms (the demo's test seeds, disjoint from its training seeds).
        geometry: :class:`~eqmar.ct.geometry.FanBeamGeometry` to simulate with (the model's).
        workdir: folder for the simulated files (a SynDeepLesion-layout root).
        mask_indices: test masks to pair every phantom with.
        mask_seed: seed of :func:`eqmar.data.masks.generate_mask_set` (the demo trains with seed 0).
        data_seed: seed of the phantoms and of the simulated noise.
        kinds: phantom families (default: the families the demo trains on).
        device: projector device of the simulator.

    Raises:
        InputError: a mask with no metal left at the geometry's size, or a failed simulation.
    """
    from eqmar.data.datasets import SynDeepLesionTestDataset
    from eqmar.data.masks import generate_mask_set
    from eqmar.data.synthesis import (
        DEMO_TRAIN_PHANTOMS,
        SynthesisConfig,
        demo_sources,
        select_split_masks,
        synthesize_dataset,
    )

    indices = _check_masks(mask_indices)
    if count < 1:
        raise InputError(f"--phantoms must be positive here, got {count}")
    try:
        # the test split puts pydicom's CT_small.dcm first: ask for one more and keep the phantoms
        sources = [s for s in demo_sources(count + 1, data_seed, "test", kinds or DEMO_TRAIN_PHANTOMS)
                   if s.kind == "phantom"][:count]
        config = SynthesisConfig(geometry=geometry, device=device, seed=data_seed)
        masks = select_split_masks(generate_mask_set(seed=mask_seed), "test")
        report = synthesize_dataset(sources, masks, workdir, "test", config, mask_indices=indices, progress=False)
    except ValueError as error:  # e.g. a mask that vanishes at a reduced size, an unknown phantom kind
        raise InputError(f"phantom synthesis: {_one_line(error)}") from error
    if report.failures:
        first = report.failures[0]
        raise InputError(f"phantom synthesis of {first['image_id']}: {first['error']}")
    dataset = SynDeepLesionTestDataset(workdir, mask_indices=indices, geometry=config.resolve_tag())
    pairs = []
    for i in range(len(dataset)):
        sample = dataset[i]
        pairs.append(Pair(
            f"phantoms:{sample['image_id']}/mask {sample['mask_index']}", "phantoms", int(sample["mask_index"]),
            sample["gt"][0].numpy(), sample["ma_CT"][0].numpy(), sample["LI_CT"][0].numpy(),
            sample["mask"][0].numpy() > 0.5,
        ))
    return pairs


# ------------------------------------------------------------------------------------------- route
class LIChannel(torch.nn.Module):
    """A stand-in MAR network that returns its LI input channel (``[ma_CT, LI_CT, 1 - mask]``)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) -> (B, 1, H, W)``: channel 1."""
        return inputs[:, 1:2]


class ClinicalRoute:
    """eqmar's inference route twice over: with the model's network, and with :class:`LIChannel`.

    Both instances read the same model file, so they share its geometry, threshold and resampling;
    the LI one makes the route's image-domain LI come back to the input grid exactly as the network
    output does (added as a correction, metal pixels restored).

    Args:
        model: an eqmar MAR model file.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        metal_threshold_hu: the route's metal threshold (default: the library's).
        trace_model: ``"interpolating"``, ``"line"`` or ``None`` (the model's, see
            :class:`~eqmar.apps.mar.inference.MARInference`).

    Raises:
        InputError: a missing file or one that is not an eqmar MAR model.
    """

    def __init__(
        self,
        model: str | Path,
        device: str = "auto",
        metal_threshold_hu: float | None = None,
        trace_model: str | None = None,
    ) -> None:
        import warnings

        from eqmar.apps.mar.inference import DEFAULT_METAL_THRESHOLD_HU, MARInference

        threshold = DEFAULT_METAL_THRESHOLD_HU if metal_threshold_hu is None else float(metal_threshold_hu)
        model = Path(model)
        if not model.is_file():
            raise InputError(f"{model}: model file not found")
        try:
            self.network = MARInference(model, device, threshold, trace_model=trace_model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the LI instance would repeat the first one's meta warnings
                self.li = MARInference(model, device, threshold, trace_model=trace_model, network=LIChannel())
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise InputError(_naming(model, error)) from error

    @property
    def geometry(self) -> Any:
        """The model's fan-beam geometry (working grid of the route)."""
        return self.network.geometry

    def __call__(self, hu: np.ndarray) -> RouteResult:
        """Run the route on one stored slice (automatic threshold mask, as ``python -m eqmar.infer``)."""
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a slice without metal warns; the pair still gets scored
            network_hu, info = self.network.correct_slice(hu)
            li_hu, _ = self.li.correct_slice(hu)
        return RouteResult(np.asarray(hu, np.float32), li_hu, network_hu, self.network.metal_mask(hu), info)

    def close(self) -> None:
        """Free both instances' projectors."""
        self.network.close()
        self.li.close()


# ----------------------------------------------------------------------------------------- scoring
def halo_band(metal: np.ndarray, band: tuple[float, float] = HALO_BAND_PX) -> np.ndarray:
    """Bool (H, W): non-metal pixels whose distance to the nearest metal pixel lies in ``band`` (inclusive)."""
    from scipy.ndimage import distance_transform_edt

    metal = np.asarray(metal, bool)
    if not metal.any():
        return np.zeros(metal.shape, bool)
    distance = distance_transform_edt(~metal)
    return (distance >= band[0]) & (distance <= band[1])


def score_pair(pair: Pair, result: RouteResult) -> dict[str, Any]:
    """Per-pair numbers of every method in :data:`METHODS` (see the module docstring)."""
    from eqmar.ct.physics import hu_to_mu, mu_to_hu
    from eqmar.metrics import batch_mar_scores

    predictions = {"route LI": hu_to_mu(result.route_li_hu), "network": hu_to_mu(result.network_hu),
                   "protocol LI (sinogram)": pair.li_mu}
    stack = torch.from_numpy(np.stack([predictions[m] for m in METHODS])[:, None].astype(np.float32))
    gt = torch.from_numpy(np.repeat(pair.gt_mu[None, None], len(METHODS), axis=0).astype(np.float32))
    psnr, ssim = batch_mar_scores(stack, gt, torch.from_numpy(pair.metal.astype(np.float32)))
    band = halo_band(pair.metal)
    gt_hu = mu_to_hu(pair.gt_mu)
    # pixels the route took for metal and put back as stored: blooming that scoring counts as tissue
    restored = band & result.route_metal
    scores: dict[str, Any] = {
        "name": pair.name, "mask_index": pair.mask_index, "metal_pixels": int(pair.metal.sum()),
        "route_metal_pixels": int(result.route_metal.sum()),
        "route_metal_outside_gt": int((result.route_metal & ~pair.metal).sum()),
        "gt_metal_missed_by_route": int((pair.metal & ~result.route_metal).sum()),
        "band_pixels": int(band.sum()), "band_pixels_restored_as_metal": int(restored.sum()), "methods": {},
    }
    for i, method in enumerate(METHODS):
        error = (mu_to_hu(predictions[method]) - gt_hu).astype(np.float64)
        band_error, kept = error[band], error[band & ~result.route_metal]
        scores["methods"][method] = {
            "psnr": float(psnr[i]), "ssim": float(ssim[i]),
            "halo_mean_hu": _mean(band_error), "halo_rmse_hu": _rms(band_error),
            # the band without the pixels the route puts back as stored (blooming it took for metal)
            "halo_mean_hu_outside_route_metal": _mean(kept), "halo_rmse_hu_outside_route_metal": _rms(kept),
        }
    return scores


def summarize(
    pairs: Sequence[Pair], results: Sequence[RouteResult], per_pair: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Averages over pairs, pooled halo-band errors and the region table of every method."""
    from eqmar.apps.mar.evaluation import input_predictor, region_errors
    from eqmar.ct.physics import hu_to_mu, mu_to_hu

    summary: dict[str, Any] = {"pairs": len(pairs), "methods": {}}
    bands = [halo_band(p.metal) for p in pairs]
    for method in METHODS:
        rows = [s["methods"][method] for s in per_pair]
        if method == "protocol LI (sinogram)":
            preds = [p.li_mu for p in pairs]
        else:
            preds = [hu_to_mu(r.route_li_hu if method == "route LI" else r.network_hu) for r in results]
        # one batch per pair: phantoms and the sample live on different grids
        loader = [{"pred": torch.from_numpy(pred[None, None]), "gt": torch.from_numpy(p.gt_mu[None, None]),
                   "mask": torch.from_numpy(p.metal[None, None].astype(np.float32))}
                  for p, pred in zip(pairs, preds, strict=True)]
        pooled = np.concatenate([(mu_to_hu(pred) - mu_to_hu(p.gt_mu))[b].astype(np.float64)
                                 for p, pred, b in zip(pairs, preds, bands, strict=True)])
        summary["methods"][method] = {
            "psnr": float(np.mean([r["psnr"] for r in rows])),
            "ssim": float(np.mean([r["ssim"] for r in rows])),
            "halo_mean_hu": _mean(pooled),
            "halo_abs_mean_hu": float(np.nanmean([abs(r["halo_mean_hu"]) for r in rows])),
            "halo_rmse_hu": _rms(pooled),
            "halo_abs_mean_hu_outside_route_metal": float(np.nanmean(
                [abs(r["halo_mean_hu_outside_route_metal"]) for r in rows])),
            "regions": region_errors(loader, input_predictor("pred")),
        }
    summary["route_metal_outside_gt_pixels"] = int(sum(s["route_metal_outside_gt"] for s in per_pair))
    summary["gt_metal_missed_by_route_pixels"] = int(sum(s["gt_metal_missed_by_route"] for s in per_pair))
    summary["gt_metal_pixels"] = int(sum(s["metal_pixels"] for s in per_pair))
    return summary


def evaluate(
    route: ClinicalRoute, pairs: Sequence[Pair]
) -> tuple[list[RouteResult], list[dict[str, Any]], dict[str, Any]]:
    """Run the route on every pair's stored image and score it: ``(results, per-pair scores, summary)``."""
    if not pairs:
        raise InputError("no pairs to evaluate")
    results = [route(stored_hu(p.ma_mu)) for p in pairs]
    per_pair = [score_pair(p, r) for p, r in zip(pairs, results, strict=True)]
    return results, per_pair, summarize(pairs, results, per_pair)


def format_summary(summary: dict[str, Any]) -> str:
    """Markdown: PSNR/SSIM and halo-band errors per method, then the region table."""
    from eqmar.apps.mar.evaluation import format_region_table

    lo, hi = HALO_BAND_PX
    lines = [
        f"| Method | PSNR (dB) | SSIM | halo {lo:g}-{hi:g} px mean (HU) | mean \\|per-pair mean\\| (HU) | "
        "halo RMSE (HU) | mean \\|per-pair mean\\| outside route metal (HU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, m in summary["methods"].items():
        lines.append(f"| {method} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['halo_mean_hu']:+.0f} | "
                     f"{m['halo_abs_mean_hu']:.0f} | {m['halo_rmse_hu']:.0f} | "
                     f"{m['halo_abs_mean_hu_outside_route_metal']:.0f} |")
    regions = format_region_table({method: m["regions"] for method, m in summary["methods"].items()})
    return "\n".join(lines) + "\n\nMean signed error / RMSE (HU) by distance from the metal:\n\n" + regions


# ------------------------------------------------------------------------------------------ figure
def plot_examples(
    examples: Sequence[tuple[Pair, RouteResult, dict[str, Any]]], path: str | Path, title: str = ""
) -> Path:
    """One row per example: stored HU, route LI, network, ground truth, network − ground truth (HU).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in tests
    import matplotlib.pyplot as plt

    from eqmar.ct.physics import mu_to_hu

    if not examples:
        raise ValueError("plot_examples: no example to plot")
    error_cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.6")
    columns = ("stored HU input", "route LI", "network", "ground truth", "network − GT")
    fig, axes = plt.subplots(len(examples), len(columns), figsize=(2.6 * len(columns), 2.7 * len(examples)),
                             squeeze=False)
    for row, (pair, result, scores) in enumerate(examples):
        gt_hu = mu_to_hu(pair.gt_mu)
        images = (result.stored_hu, result.route_li_hu, result.network_hu, gt_hu)
        for col, image in enumerate(images):
            axes[row, col].imshow(image, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1])
        # the true metal is not scored: grey there, so that the restored implant does not dominate the map
        error_map = np.ma.masked_array(result.network_hu - gt_hu, mask=pair.metal)
        error = axes[row, 4].imshow(error_map, cmap=error_cmap, vmin=-ERROR_RANGE_HU, vmax=ERROR_RANGE_HU)
        li, net = scores["methods"]["route LI"], scores["methods"]["network"]
        captions = ("", f"{li['psnr']:.2f} dB, band {li['halo_mean_hu_outside_route_metal']:+.0f} HU",
                    f"{net['psnr']:.2f} dB, band {net['halo_mean_hu_outside_route_metal']:+.0f} HU", "", "")
        for col, name in enumerate(columns):
            axes[row, col].set_title(f"{name}\n{captions[col]}" if captions[col] else name, fontsize=8)
            axes[row, col].axis("off")
        axes[row, 0].text(2, 10, pair.name.split(":", 1)[-1], color="yellow", fontsize=6, va="top")
        fig.colorbar(error, ax=axes[row, 4], fraction=0.046, pad=0.02)
    fig.suptitle(title or f"window [{WINDOW_HU[0]:g}, {WINDOW_HU[1]:g}] HU; error map ±{ERROR_RANGE_HU:g} HU, "
                 "true metal grey (not scored);\nband = mean signed error 1-5 px from the metal, "
                 "outside what the route takes for metal",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_examples(count: int, total: int) -> list[int]:
    """``count`` indices spread evenly over ``total`` items (all of them when there are fewer)."""
    if total <= count:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, count)})


# -------------------------------------------------------------------------------------------- main
def run(
    model: str | Path = DEFAULT_MODEL,
    phantoms: int = 0,
    sample: str | Path | None = None,
    mask_indices: Sequence[int] = ALL_TEST_MASKS,
    mask_seed: int = 0,
    data_seed: int = 0,
    kinds: Sequence[str] | None = None,
    device: str = "auto",
    trace_model: str | None = None,
    metal_threshold_hu: float | None = None,
) -> tuple[dict[str, Any], dict[str, tuple[list[Pair], list[RouteResult], list[dict[str, Any]]]]]:
    """Evaluate the route on the phantoms and/or the sample.

    Returns:
        ``(report, details)``: the JSON-ready report (model, geometry, per source ``summary`` and
        ``per_pair``), and per source the pairs, route results and per-pair scores (for figures).

    Raises:
        InputError: no source selected, or a missing or bad input.
    """
    if phantoms <= 0 and sample is None:
        raise InputError("nothing to evaluate: give --phantoms N (N > 0) and/or --sample DIR")
    started = time.perf_counter()
    route = ClinicalRoute(model, device, metal_threshold_hu, trace_model)
    geometry = route.geometry
    report: dict[str, Any] = {
        "model": str(model), "meta": route.network.meta, "stored_hu_range": list(STORED_HU_RANGE),
        "metal_threshold_hu": route.network.metal_threshold_hu, "trace_model": route.network.trace_model,
        "working_grid": {"image_size": int(geometry.image_size), "num_views": int(geometry.num_views)},
        "halo_band_px": list(HALO_BAND_PX), "sources": {},
    }
    details: dict[str, tuple[list[Pair], list[RouteResult], list[dict[str, Any]]]] = {}

    def record(source: str, pairs: list[Pair], settings: dict[str, Any]) -> None:
        results, per_pair, summary = evaluate(route, pairs)
        summary["grid"] = int(pairs[0].gt_mu.shape[0])
        details[source] = (pairs, results, per_pair)
        report["sources"][source] = {**settings, "summary": summary, "per_pair": per_pair}

    try:
        if sample is not None:
            record("sample", load_sample_pairs(sample, mask_indices), {"folder": str(sample)})
        if phantoms > 0:
            with tempfile.TemporaryDirectory(prefix="clinical_route_") as workdir:
                simulator_device = "cpu" if route.network.device.type == "cpu" else "auto"
                pairs = phantom_pairs(phantoms, geometry, workdir, mask_indices, mask_seed, data_seed, kinds,
                                      simulator_device)
            record("phantoms", pairs, {"count": phantoms, "mask_seed": mask_seed, "data_seed": data_seed,
                                       "kinds": list(kinds) if kinds else None})
    finally:
        route.close()
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report, details


def write_outputs(
    report: dict[str, Any], details: dict[str, Any], out: str | Path, examples: int = 3
) -> dict[str, Path]:
    """Write ``clinical_route.json`` and ``clinical_route.png`` (examples of every source) under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "clinical_route.json"
    json_path.write_text(json.dumps(report, indent=2, default=_json_default, allow_nan=True))
    rows = []
    for pairs, results, per_pair in details.values():
        rows += [(pairs[i], results[i], per_pair[i]) for i in pick_examples(examples, len(pairs))]
    png_path = plot_examples(rows, out / "clinical_route.png")
    return {"json": json_path, "png": png_path}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 for a missing or bad input)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="eqmar MAR model file (default: %(default)s)")
    parser.add_argument("--sample", type=Path, default=None,
                        help="single-slice SynDeepLesion folder (gt.h5, 0.h5 ... 9.h5, testmask.npy)")
    parser.add_argument("--phantoms", type=int, default=4,
                        help="procedural test phantoms simulated at the model's geometry "
                        "(0: none; default %(default)s)")
    parser.add_argument("--masks", type=int, nargs="+", default=list(ALL_TEST_MASKS),
                        help="test masks (0..9) to pair every image with (default: all ten)")
    parser.add_argument("--mask-seed", type=int, default=0, help="seed of the generated mask set (demo: 0)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the phantoms and simulated noise")
    parser.add_argument("--kinds", nargs="+", default=None,
                        help="phantom families (default: those the demo trains on; 'head' is held out)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    parser.add_argument("--trace-model", choices=("interpolating", "line"), default=None,
                        help="ray model of the route's metal trace (default: the model's, as eqmar.infer)")
    parser.add_argument("--threshold-hu", type=float, default=None,
                        help="the route's metal threshold (default: the library's, 2500 HU)")
    parser.add_argument("--examples", type=int, default=3, help="figure rows per source (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("clinical_route"),
                        help="output folder for clinical_route.json and clinical_route.png (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        report, details = run(args.model, args.phantoms, args.sample, args.masks, args.mask_seed, args.data_seed,
                              args.kinds, args.device, args.trace_model, args.threshold_hu)
        paths = write_outputs(report, details, args.out, args.examples)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    grid = report["working_grid"]
    print(f"model {args.model} (working grid {grid['image_size']} px, {grid['num_views']} views); "
          f"stored HU clipped to {STORED_HU_RANGE}, metal threshold {report['metal_threshold_hu']:g} HU, "
          f"{report['trace_model']} metal trace\n")
    for source, entry in report["sources"].items():
        s = entry["summary"]
        print(f"## {source}: {s['pairs']} pairs at {s['grid']} px "
              f"(route metal outside the true metal: {s['route_metal_outside_gt_pixels']} px, "
              f"true metal missed: {s['gt_metal_missed_by_route_pixels']} of {s['gt_metal_pixels']} px)\n")
        print(format_summary(s) + "\n")
    print(f"wrote {paths['json']} and {paths['png']} ({report['seconds']:.1f} s)")
    return 0


# ----------------------------------------------------------------------------------------- helpers
def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt((values**2).mean())) if values.size else float("nan")


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return " ".join(text.split())


def _naming(path: Path, error: BaseException) -> str:
    """The error on one line, led by ``path`` unless the message names it already."""
    text = _one_line(error)
    return text if str(path) in text else f"{path}: {text}"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path, np.ndarray)):
        return str(value) if isinstance(value, Path) else value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
