"""The command line every recipe shares: training flags, config overrides, launching, exit codes.

A recipe declares only its task-specific flags; :func:`add_experiment_arguments` adds the common ones
(output folder, arms, budget, optimiser, EQ-Reg settings, seed, device, resume, progress and the
distributed flags), :func:`collect_overrides` turns the parsed flags into config-field overrides, and
:func:`run_experiment_cli` builds the config (``published`` on ``--data``, else ``demo_default``),
runs it on one process or several and maps user errors to exit code 2 with a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from eqmar.engines.arms import ARMS
from eqmar.engines.config import TRAINING_FIELDS
from eqmar.engines.distributed import add_distributed_arguments, launch
from eqmar.engines.experiment import STRICT_ARM

__all__ = ["COMMON_FIELDS", "add_experiment_arguments", "collect_overrides", "run_experiment_cli"]

# The flags of add_experiment_arguments whose argparse dest is a TrainingConfig field of the same name.
COMMON_FIELDS: tuple[str, ...] = tuple(
    name
    for name in TRAINING_FIELDS
    if name not in ("output_dir", "arms", "milestones", "lr_decay", "resume", "progress")
)


def add_experiment_arguments(
    parser: argparse.ArgumentParser,
    default_out: str | Path,
    arms: Sequence[str] = (*ARMS, STRICT_ARM),
    data_help: str = "data root (default: the embedded demo data)",
    patches: bool = True,
    iterations: bool = True,
) -> argparse.ArgumentParser:
    """Add the flags shared by every recipe.

    Args:
        parser: the recipe's parser (task-specific flags may be added before or after).
        default_out: default ``--out`` folder.
        arms: the arms ``--arm`` accepts.
        data_help: help text of ``--data``.
        patches: add ``--patch-size`` (image-to-image tasks).
        iterations: add ``--iters-per-epoch`` (tasks that sample a fixed number of batches per epoch).
    """
    parser.add_argument("--data", type=Path, help=data_help)
    parser.add_argument("--out", type=Path, default=Path(default_out), help=f"output folder (default {default_out})")
    parser.add_argument("--arm", action="append", choices=list(arms), help="train only this arm (repeatable)")
    parser.add_argument("--epochs", type=int)
    if iterations:
        parser.add_argument("--iters-per-epoch", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size before adding the rotated half")
    if patches:
        parser.add_argument("--patch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lambda", dest="weight", type=float, help="EQ-Reg weight")
    parser.add_argument("--group", choices=["C2", "C4", "D4", "C8"], help="rotation group (strict arm: C2, C4 or D4)")
    parser.add_argument(
        "--reduction", choices=["norm", "mean"], help="EQ-Reg residual: published Frobenius norm or RMS"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int,
        help="torch CPU threads (default: the task's, 1 for the built-in demos, whose small convolutions gain "
        "little from more while extra threads spin-wait on a busy CPU; 0 = torch's default)",
    )
    parser.add_argument("--workers", type=int, help="data-loader workers")
    parser.add_argument("--checkpoint-interval", type=int, help="checkpoint every N iterations")
    parser.add_argument("--resume", action="store_true", help="continue each arm from its newest checkpoint")
    parser.add_argument("--no-progress", action="store_true")
    return add_distributed_arguments(parser)


def collect_overrides(args: argparse.Namespace, fields: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Config overrides from the flags the user set: the training settings plus ``fields`` (dest -> task field).

    The result goes to a task config's ``published``/``demo_default``, which apply it with
    :func:`~eqmar.engines.config.with_overrides`.
    """
    mapping = {**{name: name for name in COMMON_FIELDS}, **(fields or {})}
    overrides = {field: getattr(args, dest) for dest, field in mapping.items() if getattr(args, dest, None) is not None}
    if overrides.get("threads") == 0:
        overrides["threads"] = None
    overrides.update(output_dir=args.out, resume=args.resume, progress=not args.no_progress)
    if args.arm:
        overrides["arms"] = tuple(dict.fromkeys(args.arm))
    return overrides


def _run_in_process(local_rank: int, run: Callable[[Any], dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """One process of an experiment (module level so spawned processes can unpickle it)."""
    return run(cfg)


def run_experiment_cli(
    args: argparse.Namespace,
    config_type: Any,
    run: Callable[[Any], dict[str, Any]],
    overrides: Mapping[str, Any],
    summary: Callable[[dict[str, Any], Any], str],
    builtin: Callable[..., Any] | None = None,
) -> int:
    """Build the config, run the experiment (on ``--nproc`` processes) and print its summary.

    Args:
        args: parsed flags (with ``data``, ``nproc`` and ``backend``).
        config_type: the task's config class, with ``published(data, **overrides)`` and
            ``demo_default(**overrides)``.
        run: ``cfg -> results``; a module-level function (spawned processes import it).
        overrides: config overrides (see :func:`collect_overrides`).
        summary: ``(results, cfg) -> text`` printed by rank 0 at the end.
        builtin: ``(**overrides) -> config`` for runs without ``--data`` (default ``config_type.demo_default``),
            e.g. another preset of the built-in data.

    Returns:
        The exit code: 0, or 2 for a user error (bad data folder, bad setting), reported in one line.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.data is not None:
            if not args.data.is_dir():
                raise FileNotFoundError(f"--data {args.data} is not a folder")
            cfg = config_type.published(args.data, **overrides)
        else:
            cfg = (builtin or config_type.demo_default)(**overrides)
        results = launch(_run_in_process, args.nproc, args.backend, run, cfg)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if results is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print()
    print(summary(results, cfg))
    return 0
