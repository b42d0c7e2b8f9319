#!/usr/bin/env python
"""MAR inference: images/s and peak memory of the published DICDNet at 416 x 416, and end-to-end seconds per slice.

Network: the backbone with the published settings of ``MARExperimentConfig.published`` (DICDNet:
T = 10 stages, 36 X-net channels, 32 dictionary filters of 9 x 9, 3 ResBlocks per proximal net),
untrained (the weights do not change the cost), in eval mode under ``torch.inference_mode()``.
For each batch size: warm-up passes, then timed forward passes; images/s = batch / median seconds.

Peak memory: every configuration runs in a fresh subprocess, so that one configuration's peak
does not carry over into the next:

* CPU: the peak resident set size of that process (``getrusage(RUSAGE_SELF).ru_maxrss``) minus
  its resident size just before the first forward pass (after the imports, the network and the
  input are in memory). ``tracemalloc`` would not see torch's allocations (they bypass Python's
  allocator). The peak before the first pass is recorded too: if it equals the final peak, the
  forward passes never rose above the imports' high-water mark and the delta is only an upper
  bound of what they need.
* CUDA: ``torch.cuda.max_memory_allocated`` minus ``torch.cuda.memory_allocated`` before the first
  pass (tensors alive at the peak, not the caching allocator's reserve, which is given as well).

End to end (``--e2e-repeats``, 0 to skip): ``MARInference.correct_slice`` on a 512 x 512 slice
(pydicom's ``CT_small.dcm`` resized, with a 9 mm metal insert at 3071 HU) and a model file of the
same untrained network. A slice costs the threshold mask, the resize to the working size, the
image-domain LI (re-projection, interpolation across the metal trace, FBP), one forward pass and
the way back to 512 px; the LI step is timed on its own too, alternating with the whole slice.
The first slice, which builds the projector and the CPU back-projection matrix, is the warm-up
and reported as ``first_slice_s``. Finally ``--cli-runs`` runs of ``python -m eqmar.infer`` on that
slice as a DeepLesion PNG give the cold wall time a user sees for one slice (interpreter start,
imports, model load, projector set-up included). ``--model FILE`` times the end-to-end path with
that model file instead (e.g. the shipped weights, which run on overlapping patches); the forward
table, which measures one untrained network on whole images, is then skipped.

``--threads N`` sets torch's threads in the measuring processes and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``
in every child process (the ``python -m eqmar.infer`` command has no thread option of its own).

Examples::

    python bench/bench_inference.py --json inference.json --markdown inference.md
    python bench/bench_inference.py --device cuda --batches 1 4 16 --repeats 20
    python bench/bench_inference.py --model bundles/eqmar_mar/models/model.pt --threads 1   # the shipped weights
    python bench/bench_inference.py --size 64 --views 64 --batches 1 --repeats 1 --warmup 0 --stages 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _timing import (
    alternate,
    load_average,
    machine_footer,
    machine_info,
    markdown_table,
    measure,
    summary,
    timed,
    write_json,
)
from bench_eqreg_overhead import mar_input
from bench_synthesis import ct_slice_hu, metal_mask

from eqmar.apps.mar.inference import MARInference, image_domain_li
from eqmar.apps.mar.model_file import build_from_spec, save_mar_model
from eqmar.apps.mar.workflow import BACKBONES, MARExperimentConfig, mar_network_spec
from eqmar.apps.mar.writers import write_deeplesion_png
from eqmar.ct.geometry import FanBeamGeometry
from eqmar.ct.physics import hu_to_mu, prepare_hu, resize_square
from eqmar.data.masks import resize_mask
from eqmar.utils import resolve_torch_device

__all__ = ["network_spec_for", "main"]

_ROOT = Path(__file__).resolve().parent.parent
_RESULT_PREFIX = "BENCH_RESULT "  # marks the worker's result line among anything else it prints
_METAL_HU = 3071.0  # top of the usual 12-bit CT range, where stored metal saturates
_SLICE_SIZE = 512  # DeepLesion slices


# --------------------------------------------------------------------------------- memory probes
def _rss_now_mb() -> float | None:
    """Current resident set size (Linux ``/proc``); None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class _MemoryProbe:
    """Peak memory of what runs between :meth:`start` and :meth:`stop` on one device."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated() / 2**20
        else:
            self.before, self.peak_before = _rss_now_mb(), _peak_rss_mb()

    def stop(self) -> dict[str, Any]:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
            return {"method": "torch.cuda.max_memory_allocated", "allocated_before_mb": self.before,
                    "peak_allocated_mb": peak, "peak_delta_mb": peak - self.before,
                    "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
        peak = _peak_rss_mb()
        return {"method": "ru_maxrss of a fresh process minus RSS before the first pass", "rss_before_mb": self.before,
                "peak_rss_before_mb": self.peak_before, "peak_rss_mb": peak,
                "peak_delta_mb": None if self.before is None else peak - self.before}


# --------------------------------------------------------------------------------------- workers
def _set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def _synchronizer(device: torch.device) -> Callable[[], None] | None:
    # CUDA kernels run asynchronously: without a synchronisation the clock would stop at their launch
    return torch.cuda.synchronize if device.type == "cuda" else None


def _forward_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Images/s and peak memory of forward passes at one batch size (runs in its own process)."""
    _set_threads(spec["threads"])
    device = torch.device(spec["device"])
    network = build_from_spec(spec["network"]).to(device).eval()
    x = mar_input(spec["batch"], spec["size"]).to(device)
    probe = _MemoryProbe(device)
    probe.start()
    with torch.inference_mode():
        run = timed(lambda: network(x), _synchronizer(device))
        seconds = alternate({"forward": run}, spec["repeats"], spec["warmup"])["forward"]
    stats = summary(seconds)
    return {"batch": spec["batch"], "threads": torch.get_num_threads(), "seconds": stats,
            "images_per_s": spec["batch"] / stats["median"], "ms_per_image": stats["median"] * 1e3 / spec["batch"],
            "memory": probe.stop()}


def _e2e_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per slice of ``MARInference`` and of its LI step (runs in its own process)."""
    _set_threads(spec["threads"])
    hu = np.load(spec["slice"])
    probe = _MemoryProbe(torch.device(spec["device"]))
    probe.start()
    with MARInference(spec["model"], device=spec["device"], trace_model=spec["trace_model"]) as engine:
        size = engine.image_size
        mu = hu_to_mu(prepare_hu(hu, size))
        working_mask = resize_mask(engine.metal_mask(hu).astype(np.uint8), size).astype(bool)
        (_, info), first = measure(lambda: engine.correct_slice(hu))
        times = alternate({
            "slice": timed(lambda: engine.correct_slice(hu), _synchronizer(engine.device)),
            "li": timed(lambda: image_domain_li(mu, working_mask, engine.projector(), engine.trace_model)),
        }, spec["repeats"])
    return {"working_size": size, "views": info["num_views"], "metal_pixels": info["metal_pixels"],
            "trace_model": engine.trace_model, "threads": torch.get_num_threads(), "first_slice_s": first,
            "slice_s": summary(times["slice"]), "li_s": summary(times["li"]), "memory": probe.stop()}


_WORKERS = {"forward": _forward_worker, "e2e": _e2e_worker}


def _in_subprocess(kind: str, spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run a worker in a fresh interpreter and return its result."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)],
        capture_output=True, text=True, env=_thread_env(threads), cwd=_ROOT, check=False,
    )
    results = [line for line in completed.stdout.splitlines() if line.startswith(_RESULT_PREFIX)]
    if completed.returncode != 0 or not results:
        raise RuntimeError(f"{kind} worker failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    return json.loads(results[-1][len(_RESULT_PREFIX):])


def _thread_env(threads: int) -> dict[str, str]:
    """Environment for child processes: ``threads`` OpenMP/MKL threads, for code that has no thread setting."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


# ---------------------------------------------------------------------------------------- parent
def network_spec_for(backbone: str, stages: int | None = None) -> dict[str, Any]:
    """Model spec of ``backbone`` with the published settings (optionally fewer stages, for smoke runs)."""
    overrides: dict[str, Any] = {"backbone": backbone} | ({} if stages is None else {"num_stages": stages})
    # data is not read: only the network fields of the configuration are used
    return mar_network_spec(MARExperimentConfig.published(Path("."), **overrides))


def _geometry_tag(size: int, views: int) -> str:
    """640geo, or the reduced tag ``MARInference`` reads back (``640geo_<size>px<views>v``)."""
    full = FanBeamGeometry.preset("640geo")
    return "640geo" if (size, views) == (full.image_size, full.num_views) else f"640geo_{size}px{views}v"


def _write_inputs(
    folder: Path, spec: dict[str, Any], size: int, views: int, model: Path | None = None
) -> tuple[Path, Path, Path]:
    """Model file (``model``, or one of the untrained ``spec``), slice (.npy) and the same slice as a DeepLesion PNG."""
    if model is None:
        model = save_mar_model(folder / "model.pt", build_from_spec(spec), spec,
                               meta={"geometry_tag": _geometry_tag(size, views), "image_size": size})
    hu = np.array(resize_square(ct_slice_hu(), _SLICE_SIZE))
    hu[metal_mask(_SLICE_SIZE) > 0] = _METAL_HU
    np.save(folder / "slice.npy", hu)
    return model, folder / "slice.npy", write_deeplesion_png(folder / "input" / "slice.png", hu)


def _cli_wall_seconds(model: Path, png: Path, out: Path, args: argparse.Namespace) -> list[float]:
    """Wall times of ``python -m eqmar.infer`` on one PNG slice."""
    command = [sys.executable, "-m", "eqmar.infer", "--checkpoint", str(model), "--input", str(png),
               "--output", str(out), "--device", args.device, "--quiet"]
    if args.trace_model is not None:
        command += ["--trace-model", args.trace_model]
    seconds = []
    for _ in range(args.cli_runs):
        completed, wall = measure(lambda: subprocess.run(command, capture_output=True, text=True, cwd=_ROOT,
                                                         env=_thread_env(args.threads), check=False))
        if completed.returncode != 0:
            raise RuntimeError(f"python -m eqmar.infer failed (exit {completed.returncode}):\n"
                               f"{completed.stderr[-3000:]}")
        seconds.append(wall)
    return seconds


def _end_to_end(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="eqmar_bench_") as tmp:
        model, slice_npy, png = _write_inputs(Path(tmp), spec, args.size, args.views, args.model)
        result: dict[str, Any] = {}
        if args.e2e_repeats:
            result = _in_subprocess("e2e", {"model": str(model), "slice": str(slice_npy), "device": args.device,
                                            "trace_model": args.trace_model, "threads": args.threads,
                                            "repeats": args.e2e_repeats}, args.threads)
        if args.cli_runs:
            result["cli_wall_s"] = summary(_cli_wall_seconds(model, png, Path(tmp) / "out", args))
    return result


def _memory_cell(memory: dict[str, Any]) -> str:
    if memory.get("peak_delta_mb") is None:
        return f"{memory.get('peak_rss_mb', memory.get('peak_allocated_mb')):.0f} MiB (process peak)"
    total = memory.get("peak_allocated_mb", memory.get("peak_rss_mb"))
    return f"{memory['peak_delta_mb']:.0f} MiB (process {total:.0f} MiB)"


def _markdown(results: dict[str, Any]) -> str:
    net = results["network"]
    kwargs = ", ".join(f"{k}={v}" for k, v in net["spec"]["kwargs"].items())
    title = f"{net['spec']['backbone']} ({kwargs}; {net['parameters']:,} parameters)"
    lines = []
    if results["forward"]:
        lines += [f"## Inference: {title}, {results['size']} x {results['size']}, {results['device']}\n",
                  markdown_table(
                      ["batch", "threads", "ms/image", "images/s", "peak memory above start (process)"],
                      [[r["batch"], r["threads"], f"{r['ms_per_image']:.1f}", f"{r['images_per_s']:.3f}",
                        _memory_cell(r["memory"])] for r in results["forward"]],
                  )]
    e2e = results.get("end_to_end")
    if e2e:
        model = f" ({results['model']}: {title})" if results.get("model") else ""
        lines.append(f"\n## End to end{model}: 512 px slice -> {results['size']} px working grid, "
                     f"{results['views']} views, {e2e.get('trace_model', results['trace_model'])} trace\n")
        rows = []
        if "slice_s" in e2e:
            rows += [[f"MARInference.correct_slice (median of {e2e['slice_s']['n']})",
                      f"{e2e['slice_s']['median']:.3f} s"],
                     ["of which image-domain LI", f"{e2e['li_s']['median']:.3f} s"],
                     ["first slice (with projector set-up)", f"{e2e['first_slice_s']:.3f} s"],
                     ["peak memory above start (engine, projector, one slice)", _memory_cell(e2e["memory"])]]
        if "cli_wall_s" in e2e:
            rows.append([f"python -m eqmar.infer, one slice, cold (median of {e2e['cli_wall_s']['n']})",
                         f"{e2e['cli_wall_s']['median']:.2f} s"])
        lines.append(markdown_table(["step", "value"], rows))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch (and OpenMP/MKL) threads in the measuring processes (0: leave default)")
    parser.add_argument("--backbone", choices=BACKBONES, default="dicdnet")
    parser.add_argument("--stages", type=int, default=None, help="unrolled stages (default: the published 10)")
    parser.add_argument("--size", type=int, default=416, help="image size (416: the 640geo grid)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per batch size (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes first")
    parser.add_argument("--views", type=int, default=640, help="views of the end-to-end geometry (640: 640geo)")
    parser.add_argument("--trace-model", choices=["interpolating", "line"], default=None,
                        help="metal trace model of the end-to-end runs (default: the model's; see python -m "
                        "eqmar.infer --help)")
    parser.add_argument("--model", type=Path, default=None,
                        help="time the end-to-end path with this eqmar model file (forward table skipped)")
    parser.add_argument("--e2e-repeats", type=int, default=3, help="timed slices after a warm-up one (0: skip)")
    parser.add_argument("--cli-runs", type=int, default=1,
                        help="cold python -m eqmar.infer runs on one slice (0: skip)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    parser.add_argument("--markdown", type=Path, default=None, help="write the Markdown tables to this file")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure every batch size (and the end-to-end path), print Markdown tables and return the results."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker:
        kind, spec = args.worker
        print(_RESULT_PREFIX + json.dumps(_WORKERS[kind](json.loads(spec))), flush=True)
        return {}
    if args.repeats < 1 or args.warmup < 0 or args.e2e_repeats < 0 or args.cli_runs < 0:
        parser.error("--repeats must be >= 1; --warmup, --e2e-repeats and --cli-runs >= 0")
    try:
        args.device = str(resolve_torch_device(args.device))
    except ValueError as error:
        parser.error(f"--device: {error}")
    _set_threads(args.threads)  # only so that the recorded machine info shows the workers' thread count
    if args.model is not None:
        from eqmar.apps.mar.inference import model_geometry
        from eqmar.apps.mar.model_file import load_mar_model

        network, payload = load_mar_model(args.model)
        spec, geometry = payload["network"], model_geometry(payload.get("meta"), source=args.model)
        args.size, args.views, args.batches = int(geometry.image_size), int(geometry.num_views), []
        parameters = sum(p.numel() for p in network.parameters())
    else:
        spec = network_spec_for(args.backbone, args.stages)
        parameters = sum(p.numel() for p in build_from_spec(spec).parameters())
    results: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "worker"},
        "machine": machine_info(), "device": args.device, "size": args.size, "views": args.views,
        "trace_model": args.trace_model, "network": {"spec": spec, "parameters": parameters},
        "model": str(args.model) if args.model is not None else None,
    }
    results["forward"] = [
        _in_subprocess("forward", {"network": spec, "device": args.device, "batch": batch, "size": args.size,
                                   "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads},
                       args.threads)
        for batch in args.batches
    ]
    if args.e2e_repeats or args.cli_runs:
        results["end_to_end"] = _end_to_end(spec, args)
    results["load_average_after"] = load_average()
    text = _markdown(results) + "\n\n" + machine_footer(results["machine"], results["load_average_after"])
    print(text)
    if args.json:
        write_json(args.json, results)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
