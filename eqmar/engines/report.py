"""What every recipe reports: the arm table, ``results.json``/``results.md`` and an example figure.

Recipes score each arm (plain / aug / eqreg / strict) plus any input baseline with their task's
metrics, then hand the numbers here so every task prints the same table layout and writes the same
files: ``results.json`` (numbers, timings, equivariance) and ``results.md`` (the tables).

A run that trains only some arms (``--arm``) into a directory holding an earlier run's results keeps
the earlier arms that it does not retrain, provided the earlier run used the same settings
(:func:`merge_earlier_arms`); otherwise the earlier ``results.json`` is renamed aside, never lost.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from eqmar.engines.distributed import is_main_process
from eqmar.engines.experiment import ArmResult
from eqmar.equivariance import EquivarianceReport

__all__ = [
    "RUN_ONLY_SETTINGS",
    "config_as_json",
    "format_arm_table",
    "format_equivariance_table",
    "arm_summary",
    "merge_earlier_arms",
    "note_earlier_arms",
    "write_results",
    "plot_image_grid",
]

logger = logging.getLogger("eqmar.report")

#: ``config`` keys that say which arms ran and how or where, not what they learnt: runs that differ
#: only in these produce comparable arms.
RUN_ONLY_SETTINGS: frozenset[str] = frozenset(
    {"arms", "resume", "progress", "checkpoint_interval", "workers", "threads", "device", "output_dir"}
)


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{digits}f}"


def format_arm_table(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] | None = None,
    digits: Mapping[str, int] | None = None,
    first_header: str = "Method",
) -> str:
    """A Markdown table with one row per method (baselines and arms) and one column per metric.

    Args:
        rows: ``{method: {metric: value}}`` in display order.
        columns: metrics to show (default: the keys of the first row).
        digits: decimals per metric (default 4, or 2 for names containing "psnr").
        first_header: header of the method column.
    """
    if not rows:
        raise ValueError("format_arm_table: no rows.")
    columns = list(columns) if columns is not None else list(next(iter(rows.values())))
    digits = dict(digits or {})
    places = {c: digits.get(c, 2 if "psnr" in c.lower() else 4) for c in columns}
    lines = [
        "| " + " | ".join([first_header, *columns]) + " |",
        "|---|" + "|".join(":---:" for _ in columns) + "|",
    ]
    for name, values in rows.items():
        lines.append("| " + " | ".join([name, *(_cell(values.get(c), places[c]) for c in columns)]) + " |")
    return "\n".join(lines)


def format_equivariance_table(
    results: Mapping[str, ArmResult | EquivarianceReport | Mapping[str, Any] | None],
) -> str:
    """Markdown table of each arm's mean layer error and output error (arms without a report are left out).

    Args:
        results: per arm, its :class:`ArmResult`, its report, or the report's JSON form
            (:meth:`EquivarianceReport.to_dict`, as an earlier run's ``results.json`` holds it).
    """
    lines = [
        "| arm | measured layers | mean relative layer error | output error |",
        "|---|:---:|:---:|:---:|",
    ]
    for arm, result in results.items():
        report = result.equivariance if isinstance(result, ArmResult) else result
        if isinstance(report, Mapping):
            report = EquivarianceReport.from_dict(report)
        if report is not None:
            lines.append(f"| {arm} | {len(report.layers)} | {report.mean_layer_error:.4f} | {report.output:.4f} |")
    return "\n".join(lines)


def arm_summary(result: ArmResult) -> dict[str, Any]:
    """JSON-ready summary of one arm: metrics, timings, final loss, weights and equivariance."""
    return {
        "metrics": result.metrics,
        "train_seconds": result.train_seconds,
        "iterations": result.iterations,
        "final_loss": result.final_loss,
        "weights": str(result.weights) if result.weights is not None else None,
        "validation": result.validation,
        "equivariance": result.equivariance.to_dict() if result.equivariance is not None else None,
    }


def config_as_json(cfg: Any) -> dict[str, Any]:
    """A recipe's dataclass config as the ``"config"`` entry of ``results.json`` (paths as strings).

    :func:`merge_earlier_arms` compares this entry with an earlier run's, so every recipe builds it here.
    """
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):  # a nested config, e.g. the TrainingConfig every task config holds
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)) and any(isinstance(v, Path) for v in value):
            return [str(v) if isinstance(v, Path) else v for v in value]
        return value

    return {k: plain(v) for k, v in asdict(cfg).items()}


def merge_earlier_arms(
    output_dir: str | Path,
    config: Mapping[str, Any],
    arms: Mapping[str, Mapping[str, Any]],
    order: Sequence[str] = (),
    ignore: Collection[str] = RUN_ONLY_SETTINGS,
    check: Callable[[Mapping[str, Any]], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """This run's arm summaries plus those of an earlier comparable run into the same directory.

    The earlier run is ``output_dir/results.json``. Its arms are kept when its ``"config"`` equals
    ``config`` in every key but ``ignore`` (at any depth); arms trained again now replace their
    earlier entries. When a setting differs, the file names an arm outside ``order``, or it cannot be
    read or ``check`` refuses one of its arms, nothing is kept: a warning says why and the earlier
    file is renamed to ``results.<UTC timestamp>.json`` (by rank 0 only), so that this run's results
    never overwrite the results of a run they cannot be merged with.

    Args:
        output_dir: the run's output directory.
        config: this run's ``"config"`` entry of ``results.json``.
        arms: this run's ``{arm: JSON summary}``.
        order: the task's full arm order; the merged arms follow it. When given, an earlier arm
            outside it makes the earlier file incomparable.
        ignore: ``config`` keys that do not affect comparability, at the top level or nested.
        check: called on every earlier arm summary (e.g. to build its table row); raising
            ``KeyError``, ``TypeError`` or ``ValueError`` marks the earlier file unreadable.

    Returns:
        ``{arm: summary}``: this run's summaries and the kept earlier ones, each of the latter with
        ``"from_earlier_run": True``.
    """
    earlier, machine = _comparable_earlier_arms(Path(output_dir) / "results.json", config, ignore, order, check)
    merged: dict[str, dict[str, Any]] = {arm: dict(summary) for arm, summary in arms.items()}
    # the machine goes with each kept arm: results are deterministic per processor, not across them
    merged.update(
        {
            arm: {"machine": machine, **summary, "from_earlier_run": True}
            for arm, summary in earlier.items()
            if arm not in arms
        }
    )
    rank = {arm: index for index, arm in enumerate(order)}
    # sorted() is stable: arms outside ``order`` keep their place, this run's first, after the ordered ones
    return dict(sorted(merged.items(), key=lambda item: rank.get(item[0], len(rank))))


def note_earlier_arms(
    table: str, arms: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str] | None = None
) -> str:
    """``table`` followed by a line naming its rows that come from an earlier run (unchanged when none do).

    Args:
        table: a Markdown table.
        arms: the merged ``{arm: summary}`` of :func:`merge_earlier_arms`.
        labels: an arm's row name in ``table`` where it is not the arm's name (e.g. "strict (P4)").
    """
    labels = labels or {}
    names = [labels.get(arm, arm) for arm, summary in arms.items() if summary.get("from_earlier_run")]
    if not names:
        return table
    return f"{table}\n\n*From an earlier run into this directory with the same settings: {', '.join(names)}.*"


def _comparable_earlier_arms(
    path: Path,
    config: Mapping[str, Any],
    ignore: Collection[str],
    order: Sequence[str],
    check: Callable[[Mapping[str, Any]], Any] | None,
) -> tuple[dict[str, Any], Any]:
    """The ``"arms"`` and ``"machine"`` of the results file at ``path`` if they can be merged; else move it aside."""
    if not path.exists():
        return {}, None
    try:
        earlier = json.loads(path.read_text())
        arms = _readable_arms(earlier, check)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        # AttributeError: valid JSON that is not an object; Key/TypeError: an arm entry of another format
        _set_aside(path, f"cannot read it ({type(error).__name__}: {error})")
        return {}, None
    unknown = [arm for arm in arms if order and arm not in order]
    if unknown:
        _set_aside(path, f"it holds arms this task does not know: {', '.join(map(str, unknown))}")
        return {}, None
    differing = _differing_settings(earlier["config"], config, ignore)
    if differing:
        _set_aside(path, f"it was made with other settings ({', '.join(differing)})")
        return {}, None
    return arms, earlier.get("machine")


def _readable_arms(earlier: Any, check: Callable[[Mapping[str, Any]], Any] | None) -> dict[str, Any]:
    """``earlier["arms"]`` after checking that every entry is a summary this run can tabulate."""
    if not isinstance(earlier.get("config"), Mapping) or not isinstance(earlier.get("arms"), Mapping):
        raise ValueError("no 'config' or 'arms' entry")
    for arm, summary in earlier["arms"].items():
        if not isinstance(summary, Mapping) or not isinstance(summary.get("metrics"), Mapping):
            raise ValueError(f"arm {arm!r} has no 'metrics' object")
        if summary.get("equivariance") is not None:
            EquivarianceReport.from_dict(summary["equivariance"])
        if check is not None:
            check(summary)
    return dict(earlier["arms"])


def _set_aside(path: Path, reason: str) -> None:
    """Rename the earlier results file (rank 0) and say why its arms are not merged."""
    if not is_main_process():
        return
    try:
        kept = f"it is kept as {_move_aside(path)}"
    except OSError as error:  # this run's results come after training: they must still be written
        kept = f"it could not be renamed ({type(error).__name__}: {error}) and may be overwritten"
    logger.warning("the earlier %s is not merged into this run's results: %s; %s", path, reason, kept)


def _differing_settings(
    earlier: Mapping[str, Any], current: Mapping[str, Any], ignore: Collection[str] = (), prefix: str = ""
) -> list[str]:
    """Names of the settings that differ, nested mappings as ``outer.inner``, compared in their JSON form.

    ``ignore`` applies at every depth: tasks nest their own config (e.g. ``meta.derain``), whose
    run-only keys are as irrelevant as the top-level ones.
    """
    differing = []
    for key in sorted(set(earlier) | set(current), key=str):
        if key in ignore:
            continue
        old, new = earlier.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differing += _differing_settings(old, new, ignore, prefix=f"{prefix}{key}.")
        # JSON text, not ==: tuples are lists in the earlier file and NaN must equal NaN
        elif key not in earlier or key not in current or _json_text(old) != _json_text(new):
            differing.append(f"{prefix}{key}")
    return differing


def _json_text(value: Any) -> str:
    return json.dumps(_ints_as_floats(value), sort_keys=True, default=_json_default)


def _ints_as_floats(value: Any) -> Any:
    """``1`` and ``1.0`` are the same setting (a weight given as an int by a caller, as a float by the CLI)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, Mapping):
        return {k: _ints_as_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_ints_as_floats(v) for v in value]
    return value


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to ``<stem>.<UTC timestamp>.json`` beside it (a counter is added if that exists)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    count = 1
    while target.exists():
        target = path.with_name(f"{path.stem}.{stamp}-{count}{path.suffix}")
        count += 1
    path.rename(target)
    return target


def write_results(
    output_dir: str | Path, payload: Mapping[str, Any], tables: Sequence[str], stem: str = "results"
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` (``payload``) and ``<stem>.md`` (``tables``, blank-line separated).

    Files are written to a temporary name and renamed, so an interrupted run never leaves half a file.
    In a distributed run only rank 0 writes; every rank gets the paths.
    """
    out = Path(output_dir)
    if not is_main_process():
        return out / f"{stem}.json", out / f"{stem}.md"
    from eqmar.utils import atomic_write

    json_text = json.dumps(payload, indent=2, default=_json_default)
    md_text = "\n\n".join(tables) + "\n"
    written = [
        atomic_write(out / name, lambda tmp, text=text: tmp.write_text(text))
        for name, text in ((f"{stem}.json", json_text), (f"{stem}.md", md_text))
    ]
    return written[0], written[1]


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"results.json: cannot serialise {type(value).__name__}")


def _display_image(value: Any) -> np.ndarray:
    """(H, W) or (H, W, 3) float array from a tensor/array shaped (H, W), (1|3, H, W) or (H, W, 3)."""
    array = value.detach().float().cpu().numpy() if hasattr(value, "detach") else np.asarray(value, dtype=np.float32)
    array = np.squeeze(array)
    if array.ndim == 3 and array.shape[0] == 3:
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3):
        raise ValueError(f"plot_image_grid: expected a 2-D grey or RGB image, got shape {array.shape}.")
    return array


def plot_image_grid(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    captions: Sequence[Mapping[str, str]] | None = None,
    title: str | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    cmap: str = "gray",
    cell_size: tuple[float, float] = (2.2, 2.3),
) -> Path:
    """Write a PNG grid: one row per example, one column per method (input, each arm, ground truth).

    Args:
        rows: per example, ``{column name: image}``; grey (H, W)/(1, H, W) or RGB (3, H, W)/(H, W, 3).
        path: output PNG.
        captions: optional per-cell text (e.g. PSNR/SSIM) with the same keys.
        title: figure title.
        value_range: display range (RGB images are clipped to it and rescaled to [0, 1]).
        cmap: colour map of grey images.
        cell_size: width and height of one panel in inches.

    In a distributed run only rank 0 draws and writes; every rank gets the path.
    """
    if not is_main_process():
        return Path(path)
    from eqmar.utils import optional_import

    optional_import("matplotlib", "plot_image_grid").use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_image_grid: no rows to plot.")
    columns = list(rows[0])
    low, high = value_range
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(cell_size[0] * len(columns), cell_size[1] * len(rows)), squeeze=False
    )
    for r, row in enumerate(rows):
        for c, name in enumerate(columns):
            ax = axes[r][c]
            image = _display_image(row[name])
            if image.ndim == 3:
                ax.imshow(np.clip((image - low) / (high - low), 0.0, 1.0))
            else:
                ax.imshow(image, cmap=cmap, vmin=low, vmax=high)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if captions is not None and name in captions[r]:
                ax.set_xlabel(captions[r][name], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
