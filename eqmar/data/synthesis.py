"""Build a SynDeepLesion-layout data set from CT slices and metal masks.

The job is resumable and reproducible:

- every file gets its own random stream, seeded from ``(seed, image id, mask index)``, so the output
  does not depend on the number of workers, the order of work, sharding or interruptions;
- files that already exist are kept (writes are atomic, so an existing file is complete) and
  temporary files left by a killed run are removed when their image is processed again;
- the list file names every image whose ``gt.h5`` and pair files are all present, and is rewritten
  when the run ends, also when it is interrupted.

Per image, the tissue projections are computed once and reused for all its masks; per worker
process, each mask is projected once and reused for all images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqmar.data.syndeeplesion import SynDeepLesionLayout, write_clean, write_pair
from eqmar.utils import require_extra

require_extra(__name__, "h5py", "scipy")

__all__ = [
    "ImageSource",
    "SynthesisConfig",
    "SynthesisReport",
    "file_seed",
    "shard_sources",
    "select_split_masks",
    "synthesize_dataset",
    "deeplesion_sources",
    "volume_sources",
    "demo_sources",
    "holdout_sources",
    "file_sources",
    "DEMO_TRAIN_PHANTOMS",
    "HOLDOUT_PHANTOMS",
]

logger = logging.getLogger("eqmar.synthesis")

_PAIR_FILE_KEYS = ("ma_sinogram", "LI_sinogram", "ma_CT", "LI_CT", "metal_trace")


@dataclass(frozen=True)
class ImageSource:
    """Where one CT slice comes from; loaded lazily inside the worker that simulates it.

    Attributes:
        image_id: ``"<series>/<slice>"`` id in the output layout.
        kind: "file" (a DeepLesion PNG, DICOM file or NIfTI/DICOM volume slice), "phantom", or
            "pydicom-testdata".
        path: file or folder for "file"; the data-file name for "pydicom-testdata".
        index: slice index within a volume (0 for single slices); phantom seed for "phantom".
        variant: phantom kind ("abdomen", "thorax", ...).
    """

    image_id: str
    kind: str = "file"
    path: str = ""
    index: int = 0
    variant: str = ""

    def load_hu(self) -> np.ndarray:
        """Return the slice in HU, float32, square."""
        if self.kind == "phantom":
            from eqmar.data.phantoms import phantom_slice

            return np.asarray(phantom_slice(self.variant, seed=self.index), dtype=np.float32)
        if self.kind == "pydicom-testdata":
            from pydicom.data import get_testdata_file

            path = get_testdata_file(self.path, download=False)
            if path is None:
                raise FileNotFoundError(f"pydicom test file {self.path!r} is not installed")
            return _slice_from_file(str(path), 0)
        if self.kind == "file":
            return _slice_from_file(self.path, self.index)
        raise ValueError(f"unknown image source kind {self.kind!r} for {self.image_id}")


def _slice_from_file(path: str, index: int) -> np.ndarray:
    from eqmar.data.slices import load_ct_slices

    slices = load_ct_slices(path)
    if not 0 <= index < len(slices):
        raise IndexError(f"{path}: slice {index} requested, {len(slices)} available")
    return np.asarray(slices[index][0], dtype=np.float32)


@dataclass
class SynthesisConfig:
    """Settings of a synthesis run.

    Attributes:
        geometry: preset name or :class:`~eqmar.ct.geometry.FanBeamGeometry`.
        image_size: reduce the preset to this image size (None: keep).
        num_views: views of the reduced geometry (None: scaled with the image size).
        tag: geometry tag used in folder and list-file names (default: the preset name, or
            ``<preset>_<size>px<views>v`` for a reduced geometry).
        device: projector device ("auto", "cpu", "cuda").
        metal: implant metal.
        seed: base seed.
    """

    geometry: Any = "640geo"
    image_size: int | None = None
    num_views: int | None = None
    tag: str | None = None
    device: str = "auto"
    metal: str = "Ti"
    seed: int = 0

    def resolve_geometry(self) -> Any:
        from eqmar.ct.geometry import FanBeamGeometry

        geometry = FanBeamGeometry.preset(self.geometry) if isinstance(self.geometry, str) else self.geometry
        if self.image_size is not None or self.num_views is not None:
            geometry = geometry.scaled(self.image_size or geometry.image_size, self.num_views)
        return geometry

    def resolve_tag(self) -> str:
        if self.tag:
            return self.tag
        base = self.geometry if isinstance(self.geometry, str) else "custom"
        if self.image_size is None and self.num_views is None:
            return base
        geometry = self.resolve_geometry()
        return f"{base}_{geometry.image_size}px{geometry.num_views}v"


@dataclass
class SynthesisReport:
    """What a run did; saved as JSON beside the data.

    Attributes:
        images_total: images assigned to this run (after sharding and ``limit``).
        images_complete: images whose files are all present at the end.
        files_written: h5 files written by this run.
        files_kept: h5 files found complete from an earlier run.
        failures: ``{"image_id", "source", "error"}`` for every image that could not be processed.
        rejected_inputs: ``{"source", "error"}`` for every input file or folder that yielded no
            image at all (e.g. a scan rejected by :func:`volume_sources`); the same list in every shard.
        seconds: wall time.
        interrupted: the run was stopped before the end.
    """

    images_total: int = 0
    images_complete: int = 0
    files_written: int = 0
    files_kept: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    rejected_inputs: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def file_seed(seed: int, image_id: str, mask_index: int | None) -> int:
    """Seed of one output file's noise, independent of work order (``mask_index`` None: gt.h5)."""
    key = f"{seed}|{image_id}|{'gt' if mask_index is None else int(mask_index)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def shard_sources(sources: Sequence[ImageSource], shard: tuple[int, int] = (0, 1)) -> list[ImageSource]:
    """The disjoint, deterministic share ``i`` of ``n`` of the sources (by sorted image id).

    Raises:
        ValueError: for an invalid shard or duplicate image ids.
    """
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    ids = [s.image_id for s in sources]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate image ids in the input: {dupes}")
    ordered = sorted(sources, key=lambda s: s.image_id)
    return [s for i, s in enumerate(ordered) if i % count == index]


def select_split_masks(masks: np.ndarray, split: str) -> np.ndarray:
    """Masks of one split: the standard 90/10 split of a 100-mask set, otherwise the stack as given."""
    from eqmar.data.masks import MASK_SET_SIZE, split_mask_set

    if masks.ndim != 3:
        raise ValueError(f"masks must be a (H, W, N) stack, got shape {masks.shape}")
    if masks.shape[-1] == MASK_SET_SIZE:
        train, test = split_mask_set(masks)
        return train if split == "train" else test
    return masks


# ----------------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _init_worker(config: SynthesisConfig, layout: SynDeepLesionLayout, masks: np.ndarray) -> None:
    from eqmar.ct.simulator import SynDeepLesionSimulator

    _WORKER.clear()
    _WORKER["simulator"] = SynDeepLesionSimulator(config.resolve_geometry(), device=config.device, metal=config.metal)
    _WORKER.update(config=config, layout=layout, masks=masks, prepared_masks={})


def _release_worker() -> None:
    """Free the in-process worker's simulator (ASTRA objects, the cached back-projection matrix)."""
    simulator = _WORKER.pop("simulator", None)
    _WORKER.clear()
    if simulator is not None:
        simulator.close()


def _remove_stale_temporaries(folder: Path) -> None:
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def _prepared_mask(k: int) -> Any:
    cache = _WORKER["prepared_masks"]
    if k not in cache:
        cache[k] = _WORKER["simulator"].prepare_mask(_WORKER["masks"][..., k])
    return cache[k]


def _process_image(source: ImageSource, mask_indices: Sequence[int]) -> dict[str, Any]:
    """Simulate every missing file of one image; never raises (errors are returned)."""
    sim, layout, config = _WORKER["simulator"], _WORKER["layout"], _WORKER["config"]
    result = {"image_id": source.image_id, "written": 0, "kept": 0, "error": None}
    try:
        folder = layout.slice_dir(source.image_id)
        if folder.is_dir():
            _remove_stale_temporaries(folder)
        targets = [(None, layout.gt_path(source.image_id))] + [
            (k, layout.pair_path(source.image_id, k)) for k in mask_indices
        ]
        missing = [(k, path) for k, path in targets if not path.is_file()]
        result["kept"] = len(targets) - len(missing)
        if not missing:
            return result
        prepared = sim.prepare_image(source.load_hu())
        for k, path in missing:
            rng = np.random.default_rng(file_seed(config.seed, source.image_id, k))
            if k is None:
                clean = sim.simulate_clean(prepared, rng)
                write_clean(path, clean["image"], clean["poly_sinogram"], clean["poly_CT"])
            else:
                pair = sim.simulate_pair(prepared, _prepared_mask(k), rng)
                write_pair(path, *(pair[key] for key in _PAIR_FILE_KEYS))
            result["written"] += 1
    except Exception as error:  # a bad input is reported and skipped, never fatal for the run
        result["error"] = f"{type(error).__name__}: {error}"
    return result


# ------------------------------------------------------------------------------------ driver
def _complete_ids(layout: SynDeepLesionLayout, image_ids: Iterable[str], mask_indices: Sequence[int]) -> list[str]:
    return [
        i
        for i in image_ids
        if layout.gt_path(i).is_file() and all(layout.pair_path(i, k).is_file() for k in mask_indices)
    ]


def _write_masks(layout: SynDeepLesionLayout, masks: np.ndarray) -> None:
    from eqmar.utils import atomic_write

    stored = np.ascontiguousarray(masks, dtype=np.uint8)
    if layout.mask_file.is_file():
        existing = np.load(layout.mask_file)
        if existing.shape != stored.shape or not np.array_equal(existing, stored):
            raise ValueError(
                f"{layout.mask_file} already exists with different masks; use a new output folder or the same masks."
            )
        return
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file handle: np.save would append ".npy" to a path
            np.save(handle, stored)

    atomic_write(layout.mask_file, write)


def _simulation_settings(config: SynthesisConfig) -> dict[str, Any]:
    """What decides the content of the files: metal, base seed and geometry (not the device)."""
    return {"metal": config.metal, "seed": config.seed, "geometry": asdict(config.resolve_geometry())}


def _write_settings(layout: SynDeepLesionLayout, config: SynthesisConfig) -> None:
    """Record the settings of a split, or refuse to resume a split made with other settings.

    Resuming keeps every file that exists; without this check a re-run with another metal or seed
    would silently mix old and new files.
    """
    from eqmar.utils import atomic_write

    settings = json.loads(json.dumps(_simulation_settings(config)))
    path = layout.settings_file
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{path} is unreadable ({error}); remove it only if the split was made with these settings"
            ) from error
        differ = sorted(key for key in settings.keys() | existing.keys() if settings.get(key) != existing.get(key))
        if differ:
            was, now = ({k: d.get(k) for k in differ} for d in (existing, settings))
            raise ValueError(
                f"{path}: the files of this split were simulated with other settings (was {was}, now {now}); "
                "use a new output folder or the same settings"
            )
        return
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(settings, indent=2)))


def _run_jobs(
    sources: Sequence[ImageSource], mask_indices: Sequence[int], workers: int,
    init_args: tuple, on_result: Callable[[dict[str, Any]], None],
) -> None:
    if workers <= 1:
        _init_worker(*init_args)
        try:
            for source in sources:
                on_result(_process_image(source, mask_indices) | {"source": source})
        finally:
            _release_worker()
        return
    # "spawn", not fork: a forked child inherits the parent's OpenMP/ASTRA thread state and can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=init_args
    ) as pool:
        pending = {pool.submit(_process_image, s, mask_indices): s for s in sources}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_result(future.result() | {"source": pending.pop(future)})
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def synthesize_dataset(
    sources: Sequence[ImageSource],
    masks: np.ndarray,
    out_dir: str | Path,
    split: str = "train",
    config: SynthesisConfig | None = None,
    mask_indices: Sequence[int] | None = None,
    workers: int = 1,
    limit: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    rejected_inputs: Sequence[dict[str, str]] = (),
) -> SynthesisReport:
    """Simulate every (image, mask) pair of ``sources`` × ``mask_indices`` into the SynDeepLesion layout.

    Args:
        sources: the CT slices.
        masks: ``(512, 512, N)`` binary masks of this split (see :func:`select_split_masks`); saved
            as ``<split>mask.npy`` (0/1). Checked by :func:`eqmar.data.masks.check_mask_stack`
            (a single (H, W) mask counts as N = 1, 0/255 values as 0/1).
        out_dir: data root.
        split: "train" or "test".
        config: geometry, device, metal and seed.
        mask_indices: masks to pair each image with (default all ``N``).
        workers: processes (1: in this process).
        limit: only the first ``limit`` sources of this shard.
        shard: ``(i, n)``: process the i-th of n disjoint shares of the images.
        progress: show a progress bar.
        rejected_inputs: inputs that yielded no image (``{"source", "error"}``, as collected by
            :func:`volume_sources`), copied into the report.

    Returns:
        The report, also written to ``<out_dir>/synthesis_report_<split>.json``, or to
        ``synthesis_report_<split>_shard<i>of<n>.json`` for a shard of ``n > 1``, so that shards
        sharing ``out_dir`` keep each its own report.

    Raises:
        ValueError: invalid masks (see above), an empty mask among ``mask_indices``, mask indices
            out of range, an invalid shard or duplicate image ids; raised before anything is written.
    """
    from eqmar.ct.simulator import resize_metal_mask
    from eqmar.data.masks import check_mask_stack

    config = config or SynthesisConfig()
    started = time.perf_counter()
    layout = SynDeepLesionLayout(Path(out_dir), split, config.resolve_tag())
    masks = check_mask_stack(masks, f"{split} masks")
    indices = list(range(masks.shape[-1])) if mask_indices is None else [int(k) for k in mask_indices]
    bad = [k for k in indices if not 0 <= k < masks.shape[-1]]
    if bad:
        raise ValueError(f"mask indices {bad[:5]} are outside the {masks.shape[-1]} masks of the {split} split")
    # An empty mask would give pairs without metal, indistinguishable from real ones in training;
    # small masks can also vanish when resized to a reduced geometry.
    empty = [k for k in indices if not masks[..., k].any()]
    if empty:
        raise ValueError(
            f"{split} masks {empty[:10]} are empty (no metal pixel); leave them out of the mask indices "
            "(--mask-indices) or fix the mask file"
        )
    size = config.resolve_geometry().image_size
    vanished = [k for k in indices if not resize_metal_mask(masks[..., k], size).any()]
    if vanished:
        raise ValueError(
            f"{split} masks {vanished[:10]} have no metal pixel left at {size} px (too small for the reduced "
            "geometry); leave them out of the mask indices (--mask-indices) or use a larger --image-size"
        )
    todo = shard_sources(sources, shard)[: limit if limit is not None else None]
    layout.root.mkdir(parents=True, exist_ok=True)
    _write_masks(layout, masks)
    _write_settings(layout, config)
    report = SynthesisReport(images_total=len(todo), rejected_inputs=[dict(entry) for entry in rejected_inputs])
    bar = _progress_bar(len(todo) * (len(indices) + 1), progress, f"{split} {layout.geometry}")

    def on_result(result: dict[str, Any]) -> None:
        report.files_written += result["written"]
        report.files_kept += result["kept"]
        if result["error"]:
            source = result["source"]
            report.failures.append(
                {"image_id": source.image_id, "source": source.path or source.variant, "error": result["error"]}
            )
            logger.warning("skipped %s (%s): %s", source.image_id, source.path or source.kind, result["error"])
        if bar is not None:
            bar.update(len(indices) + 1)

    try:
        _run_jobs(todo, indices, workers, (config, layout, masks), on_result)
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        if bar is not None:
            bar.close()
        complete = _complete_ids(layout, [s.image_id for s in todo], indices)
        listed = set(layout.read_list()) if layout.list_file.is_file() else set()
        layout.write_list(sorted(listed | set(complete)))
        report.images_complete = len(complete)
        report.seconds = round(time.perf_counter() - started, 3)
        suffix = f"_shard{shard[0]}of{shard[1]}" if shard[1] > 1 else ""
        report.save(layout.root / f"synthesis_report_{split}{suffix}.json")
    return report


def _progress_bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="file")


# ----------------------------------------------------------------------------------- sources
def deeplesion_sources(root: str | Path, image_list: str | Path | None = None) -> list[ImageSource]:
    """Slices of a DeepLesion ``Images_png`` tree (or a folder that is one), optionally from a list.

    ``image_list`` holds one slice per line, as ``000001_01_01/109.png``, ``000001_01_01_109.png``
    (the ``File_name`` column of ``DL_info.csv``) or ``000001_01_01/109``. ``DL_info.csv`` itself
    works too: its header line is skipped, the first column is read, and a slice listed once per
    lesion is used once (first occurrence kept).
    """
    root = Path(root)
    base = root / "Images_png" if (root / "Images_png").is_dir() else root
    if not base.is_dir():
        raise FileNotFoundError(f"DeepLesion folder not found: {root}")
    if image_list is None:
        files = sorted(base.glob("*/*.png"))
        if not files:
            raise FileNotFoundError(f"no DeepLesion PNG slices (<series>/<slice>.png) under {base}")
    else:
        lines = [line for line in _list_lines(image_list) if line.split(",")[0].strip() != "File_name"]
        relative = dict.fromkeys(_deeplesion_relative(line, image_list) for line in lines)  # ordered, unique
        files = [base / entry for entry in relative]
    return [ImageSource(image_id=f"{f.parent.name}/{f.stem}", kind="file", path=str(f)) for f in files]


def _list_lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _deeplesion_relative(entry: str, list_path: str | Path) -> str:
    entry = entry.split(",")[0].strip()
    if "/" not in entry:
        series, _, slice_name = entry.rpartition("_")
        if not series:
            raise ValueError(f"{list_path}: cannot read DeepLesion file name {entry!r}")
        entry = f"{series}/{slice_name}"
    return entry if entry.endswith(".png") else entry + ".png"


def volume_sources(folder: str | Path, rejected: list[dict[str, str]] | None = None) -> list[ImageSource]:
    """Slices of the DICOM files/series and NIfTI volumes in ``folder``, picked by
    :func:`eqmar.data.slices.load_ct_slices` (its docstring gives the slice rule).

    Each volume is read once here to count its selected slices; the slices are read again in the
    worker that simulates them. A scan that cannot be read is skipped with a warning and, when
    ``rejected`` is given, recorded there as ``{"source", "error"}`` (pass it on to
    :func:`synthesize_dataset` to have it in the report).

    The series id of a scan is its file name without ``.nii.gz``/``.nii``/``.dcm``/``.dicom`` (a
    folder keeps its name); scans whose ids would clash keep their full file names instead.

    Raises:
        FileNotFoundError: missing folder, or no readable scan in it.
    """
    from eqmar.data.slices import load_ct_slices

    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"{folder}: is a file; --scans takes a folder of scans (put the file in a folder of its own)")
    if not folder.is_dir():
        raise FileNotFoundError(f"scan folder not found: {folder}")
    candidates = _volume_candidates(folder)
    names = _series_names(candidates)
    sources = []
    for path in candidates:
        try:
            count = len(load_ct_slices(str(path)))
        except Exception as error:
            logger.warning("skipped %s: %s", path, error)
            if rejected is not None:
                rejected.append({"source": str(path), "error": f"{type(error).__name__}: {error}"})
            continue
        sources += [
            ImageSource(image_id=f"{names[path]}/{i:03d}", kind="file", path=str(path), index=i) for i in range(count)
        ]
    if not sources:
        raise FileNotFoundError(f"no readable DICOM or NIfTI CT data in {folder}")
    return sources


_SCAN_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom")


def _volume_candidates(folder: Path) -> list[Path]:
    """NIfTI and DICOM files at the top level, and sub-folders holding DICOM series.

    Hidden files are ignored. DICOM files are recognised by suffix, by having none, or by their
    preamble, since PACS exports often name them by UID (``1.2.840.113619.2.55.3.604``).
    """
    from pydicom.misc import is_dicom

    found: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and (path.name.lower().endswith(_SCAN_SUFFIXES) or path.suffix == "" or is_dicom(path)):
            found.append(path)
        elif path.is_dir() and any(p.is_file() for p in path.iterdir()):
            found.append(path)
    return found


def _series_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Series id per scan: the name without its scan suffix, or the full name where those clash."""

    def stem(path: Path) -> str:
        lower = path.name.lower()
        suffix = next((s for s in _SCAN_SUFFIXES if lower.endswith(s) and path.is_file()), "")
        return path.name[: len(path.name) - len(suffix)] or path.name

    stems = [stem(p) for p in paths]
    uses = Counter(stems)
    return {p: (p.name if uses[s] > 1 else s) for p, s in zip(paths, stems, strict=True)}


DEMO_PHANTOMS = ("abdomen", "thorax", "pelvis", "head")

DEMO_TRAIN_PHANTOMS = ("abdomen", "thorax", "pelvis")
"""The phantom families the MAR demo trains on; ``head`` is kept for its held-out set."""

HOLDOUT_PHANTOMS = ("head",)
"""Phantom families of the MAR demo's held-out set: anatomy its training data never contains."""


def demo_sources(
    count: int = 8, seed: int = 0, split: str = "train", kinds: Sequence[str] = DEMO_PHANTOMS
) -> list[ImageSource]:
    """The embedded default: procedural phantoms of each kind (and pydicom's ``CT_small.dcm`` in test).

    Train and test phantoms use disjoint seeds. The one real CT slice shipped with pydicom goes to
    the test split, so the default evaluation includes real anatomy.

    Args:
        count: number of slices (CT_small included in the test split).
        seed: data seed; phantoms of seed ``s`` use phantom seeds ``1000 s + i`` (``+ 500`` in test).
        split: ``"train"`` or ``"test"``.
        kinds: phantom families to cycle through (see :data:`eqmar.data.phantoms.PHANTOM_KINDS`).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    _check_phantom_kinds(kinds)
    sources = []
    if split == "test":
        sources.append(ImageSource(image_id="ct_small_000001/001", kind="pydicom-testdata", path="CT_small.dcm"))
    offset = seed * 1000 + (500 if split == "test" else 0)
    for i in range(count - len(sources)):
        kind = kinds[i % len(kinds)]
        sources.append(
            ImageSource(image_id=f"phantom_{kind}/{i:03d}", kind="phantom", index=offset + i, variant=kind)
        )
    return sources


def holdout_sources(
    count: int = 4, seed: int = 0, kinds: Sequence[str] = HOLDOUT_PHANTOMS, extra: Sequence[str | Path] = ()
) -> list[ImageSource]:
    """A held-out test set: ``CT_small.dcm``, ``count`` phantoms of ``kinds``, then the files in ``extra``.

    The phantom seeds (``1000 seed + 700 + i``) are disjoint from :func:`demo_sources`' train and test
    seeds, so with families the training set does not contain, no held-out image shares anatomy with
    training. ``extra`` takes any CT slice :func:`eqmar.data.slices.load_ct_slices` reads (a DeepLesion
    PNG, DICOM, NIfTI, or a SynDeepLesion ``gt.h5``); each file gives its first selected slice.
    """
    _check_phantom_kinds(kinds)
    sources = [ImageSource(image_id="ct_small_000001/001", kind="pydicom-testdata", path="CT_small.dcm")]
    for i in range(count):
        kind = kinds[i % len(kinds)]
        sources.append(ImageSource(image_id=f"phantom_{kind}/{i:03d}", kind="phantom", index=seed * 1000 + 700 + i,
                                   variant=kind))
    return sources + file_sources(extra)


def file_sources(paths: Sequence[str | Path]) -> list[ImageSource]:
    """One source per CT file (its first selected slice), with ids ``file_<j>_<name>/000`` in the given order."""
    return [
        ImageSource(
            image_id=f"file_{j:02d}_{Path(path).name.split('.')[0] or 'image'}/000", kind="file", path=str(path)
        )
        for j, path in enumerate(paths)
    ]


def _check_phantom_kinds(kinds: Sequence[str]) -> None:
    from eqmar.data.phantoms import PHANTOM_KINDS

    unknown = [k for k in kinds if k not in PHANTOM_KINDS]
    if not kinds or unknown:
        raise ValueError(f"phantom kinds must be a non-empty selection of {PHANTOM_KINDS}, got {tuple(kinds)}.")
