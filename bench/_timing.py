"""Timing and reporting helpers shared by the ``bench/`` scripts.

The scripts are run as ``python bench/<script>.py``, which puts ``bench/`` on ``sys.path``, so they
import this module as ``_timing``. Conventions used by every script:

* one warm-up before timing (first calls allocate, build caches and pick kernels);
* the **median** of the timed repeats, with the quartiles where a spread is reported;
* sides of a comparison **alternate** round by round in one process, so machine load affects
  them alike, and a ratio is reported as the median of the per-round ratios;
* every run records the machine and its load next to the numbers (``machine_info``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = [
    "measure",
    "timed",
    "median_seconds",
    "alternate",
    "quartiles",
    "summary",
    "per_round_ratios",
    "load_average",
    "machine_info",
    "machine_footer",
    "markdown_table",
    "write_json",
]


def measure(task: Callable[[], T]) -> tuple[T, float]:
    """``(task(), its wall time in seconds)``, for one-off steps whose result is needed afterwards."""
    start = time.perf_counter()
    result = task()
    return result, time.perf_counter() - start


def timed(task: Callable[[], object], synchronize: Callable[[], None] | None = None) -> Callable[[int], float]:
    """Wrap ``task`` as a round function for :func:`alternate` that returns its wall time.

    Args:
        task: the work to time.
        synchronize: called before the clock stops (``torch.cuda.synchronize`` for GPU work,
            whose kernels are otherwise still running when ``task`` returns).
    """

    def run(_round: int) -> float:
        start = time.perf_counter()
        task()
        if synchronize is not None:
            synchronize()
        return time.perf_counter() - start

    return run


def median_seconds(task: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``task`` (no warm-up: call it once before if needed)."""
    run = timed(task)
    return statistics.median(run(i) for i in range(repeats))


def alternate(tasks: Mapping[str, Callable[[int], float]], rounds: int, warmup: int = 0) -> dict[str, list[float]]:
    """Run every task once per round, in the mapping's order, and collect the seconds they report.

    Each task takes the round index (counting the warm-up rounds, so that per-round choices such as
    a rotation element cycle the same way with and without warm-up) and returns the seconds it
    measured itself: a task may keep set-up that does not belong to the measurement off its clock.

    Args:
        tasks: name -> round function (see :func:`timed` for wrapping a plain callable).
        rounds: measured rounds.
        warmup: rounds run first and discarded.

    Returns:
        name -> the ``rounds`` measured seconds, in round order (index ``i`` of every list is
        the same round, for :func:`per_round_ratios`).
    """
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for i in range(warmup + rounds):
        for name, task in tasks.items():
            seconds = task(i)
            if i >= warmup:
                times[name].append(seconds)
    return times


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); a single value is its own quartiles.

    Uses :func:`statistics.quantiles` with its default (exclusive) method, as the figures already
    in ``docs/benchmarks.md``.
    """
    if not values:
        raise ValueError("quartiles of an empty sequence")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4)
    return q1, statistics.median(values), q3


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """``{"median", "q1", "q3", "n"}`` of a list of measurements."""
    q1, median, q3 = quartiles(values)
    return {"median": median, "q1": q1, "q3": q3, "n": len(values)}


def per_round_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Ratios of two arms' times round by round (both lists from one :func:`alternate` call)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"arms have {len(numerator)} and {len(denominator)} rounds")
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def load_average() -> float | None:
    """1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """What a figure needs next to it: cores, load, Python, torch (threads, CUDA device)."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
    }
    try:
        import torch
    except ImportError:
        return info
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def machine_footer(machine: Mapping[str, Any], load_after: float | None) -> str:
    """One line for under a table: cores, torch threads and the load average before/after the run.

    Args:
        machine: :func:`machine_info` taken at the start of the run.
        load_after: :func:`load_average` at the end.
    """

    def load(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    threads = f", torch threads: {machine['torch_threads']}" if "torch_threads" in machine else ""
    return (f"CPU cores: {machine['cpu_count']}{threads}, 1-min load average before/after: "
            f"{load(machine['load_average'])}/{load(load_after)}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; cells are formatted with ``str`` (format numbers before passing them)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return path
