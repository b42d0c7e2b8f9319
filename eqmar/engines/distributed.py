"""Data-parallel training for every eqmar recipe: launching, sharding the data, rank-0 side effects.

A recipe runs the same code on one process or on ``N``: ``--nproc N`` (see
:func:`add_distributed_arguments`) spawns ``N`` processes on this machine through
``ignite.distributed.Parallel``, and ``torchrun`` starts them itself; :func:`launch` handles both.
When the world size is above one, the shared engine (:func:`~eqmar.engines.build_trainer`,
:func:`~eqmar.engines.run_arms`) adapts on its own:

- the network trains inside ``DistributedDataParallel`` (:func:`wrap_network`); EQ-Reg hooks, the
  checkpoints and evaluation use the unwrapped module, so there is still one forward pass per step;
- the training loader is rebuilt by :func:`shard_loader`: the batch size it was given is the *global*
  batch, split evenly over the processes, and :class:`ShardedSampler` gives each process its share of
  the indices the original sampler draws, so iterations per epoch, the learning-rate schedule and the
  global batch of a step are those of a one-process run;
- every process draws the same group element each step (the draw generators share the seed);
- checkpoints, TensorBoard logs, progress bars, statistics logs and result files are written by
  rank 0 only; evaluation runs on every rank (the weights are identical, and task metrics that
  all-reduce stay correct), so every rank returns the same results.

See ``docs/distributed.md`` for commands.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Iterator, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import ignite.distributed as idist
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "BACKENDS",
    "ShardedSampler",
    "add_distributed_arguments",
    "average_over_ranks",
    "barrier",
    "is_distributed",
    "is_main_process",
    "launch",
    "main_process_first",
    "rank_device",
    "resolve_backend",
    "shard_loader",
    "started_by_torchrun",
    "wrap_network",
]

BACKENDS = ("auto", "gloo", "nccl")

T = TypeVar("T")

# DataLoader settings a sharded loader keeps; batch size, sampler and generator are set per rank.
_LOADER_SETTINGS = (
    "num_workers", "collate_fn", "pin_memory", "drop_last", "timeout", "worker_init_fn",
    "multiprocessing_context", "persistent_workers", "pin_memory_device", "in_order",
)


# ---------------------------------------------------------------------------------------- queries
def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return idist.get_world_size() > 1


def is_main_process() -> bool:
    """True on global rank 0, and in a one-process run: the process that writes files and logs."""
    return idist.get_rank() == 0


def started_by_torchrun() -> bool:
    """True in a process that ``torchrun`` (or another ``env://`` launcher) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def barrier() -> None:
    """Wait for every rank (no-op in a one-process run)."""
    if is_distributed():
        idist.barrier()


def average_over_ranks(value: float) -> float:
    """Mean of ``value`` over the ranks (``value`` itself in a one-process run); every rank must call it."""
    if not is_distributed():
        return value
    return float(idist.all_reduce(float(value))) / idist.get_world_size()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others: e.g. a data set that rank 0 synthesizes or downloads."""
    with idist.one_rank_first(rank=0):
        yield


# ------------------------------------------------------------------------------------- launching
def resolve_backend(backend: str = "auto") -> str:
    """``"nccl"`` for ``"auto"`` when CUDA is available, else ``"gloo"``; an explicit backend is checked.

    Raises:
        ValueError: for an unknown backend, or ``"nccl"`` without CUDA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown distributed backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("the nccl backend needs CUDA GPUs; use --backend gloo to train on CPUs")
    return backend


def add_distributed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--nproc`` and ``--backend`` to a recipe's parser; pass them on to :func:`launch`."""
    group = parser.add_argument_group("distributed training")
    group.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="data-parallel processes on this machine (default 1); --batch-size stays the global batch, "
        "split over them. Under torchrun leave it at 1",
    )
    group.add_argument(
        "--backend", choices=BACKENDS, default="auto",
        help="torch.distributed backend: nccl (one GPU per process), gloo (CPU), auto: nccl if CUDA is available",
    )
    return parser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _RankRunner:
    """Run ``fn(local_rank, *args)`` in each process and hand rank 0's result (or any rank's error) back.

    Spawned processes cannot return values, so they go through pickle files in ``directory``; under
    torchrun (``directory`` None) the result stays on this object, in this process.
    """

    def __init__(self, fn: Callable[..., Any], directory: str | None = None, threads: int | None = None) -> None:
        self.fn = fn
        self.directory = directory
        self.threads = threads
        self.result: Any = None

    def __call__(self, local_rank: int, *args: Any) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            result = self.fn(local_rank, *args)
        except BaseException as error:
            self._dump(f"error-{local_rank}", error)
            raise
        if idist.get_rank() == 0:
            self.result = result
            self._dump("result", result)

    def _dump(self, name: str, value: Any) -> None:
        if self.directory is None:
            return
        try:
            data = pickle.dumps(value)
        except Exception:  # an unpicklable error still reaches the parent through torch.multiprocessing
            return
        Path(self.directory, name).write_bytes(data)

    def load(self, name: str) -> Any:
        path = Path(self.directory or "", name)
        if self.directory is None or not path.exists():
            return None
        try:
            return pickle.loads(path.read_bytes())
        except Exception:
            return None


def launch(main_fn: Callable[..., T], nproc: int = 1, backend: str = "auto", *args: Any) -> T | None:
    """Run ``main_fn(local_rank, *args)`` on ``nproc`` processes, under torchrun, or directly.

    - ``nproc > 1``: spawns ``nproc`` processes on this machine under
      ``ignite.distributed.Parallel(backend, nproc_per_node=nproc)`` (a free port unless ``MASTER_PORT``
      is set; each process gets ``cpu_count // nproc`` torch threads unless ``OMP_NUM_THREADS`` is set).
      ``main_fn`` and ``args`` must pickle (a module-level function).
    - started by ``torchrun`` with several processes: joins its process group (``nproc`` must be 1).
    - otherwise: calls ``main_fn(0, *args)`` in this process.

    Args:
        main_fn: the per-process entry point; its first argument is the local rank.
        nproc: processes to spawn on this machine.
        backend: "auto", "gloo" or "nccl" (see :func:`resolve_backend`).
        args: further arguments of ``main_fn``.

    Returns:
        What ``main_fn`` returned on global rank 0; None on the other ranks under torchrun.

    Raises:
        ValueError: for ``nproc < 1``, ``nproc > 1`` under torchrun, or too few GPUs for nccl.
        Exception: the error a spawned process raised, re-raised here with its own type when it pickles.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    if started_by_torchrun():
        if nproc > 1:
            raise ValueError("torchrun already started the processes: leave --nproc at 1 under torchrun")
        runner = _RankRunner(main_fn)
        with idist.Parallel(backend=resolve_backend(backend)) as parallel:
            parallel.run(runner, *args)
        return runner.result
    if nproc == 1:
        return main_fn(0, *args)
    backend = resolve_backend(backend)
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise ValueError(f"nccl needs one GPU per process: {nproc} processes, {torch.cuda.device_count()} GPUs")
    threads = None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // nproc)
    port = int(os.environ.get("MASTER_PORT", 0)) or _free_port()
    with tempfile.TemporaryDirectory(prefix="eqmar-launch-") as directory:
        runner = _RankRunner(main_fn, directory, threads)
        try:
            with idist.Parallel(backend=backend, nproc_per_node=nproc, master_port=port) as parallel:
                parallel.run(runner, *args)
        except Exception as error:
            original = runner.load(f"error-{getattr(error, 'error_index', 0)}")
            if isinstance(original, Exception):
                raise original from error
            raise
        return runner.load("result")


# ------------------------------------------------------------------------------- model and data
def rank_device(device: str | torch.device) -> torch.device:
    """``device``, with CUDA pinned to this process's GPU (``cuda:<local rank>``) in a distributed run."""
    device = torch.device(device)
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", idist.get_local_rank())
    return device


def wrap_network(network: nn.Module, device: str | torch.device) -> nn.Module:
    """``network`` in ``DistributedDataParallel`` in a distributed run, else ``network`` itself.

    Not ``idist.auto_model``: that moves the network to ``idist.device()`` whatever device was asked
    for, and in a one-process run on several GPUs wraps ``DataParallel``, which splits the paired batch
    that EQ-Reg's hooks expect whole.
    """
    if not is_distributed() or isinstance(network, nn.parallel.DistributedDataParallel):
        return network
    device = rank_device(device)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


class ShardedSampler(DistributedSampler):
    """This rank's share of the indices another sampler draws.

    Each epoch, the wrapped sampler lists its indices from the global RNG seeded with
    ``seed + epoch`` (restored afterwards), so every rank lists the same indices; the list is padded
    to a multiple of ``num_replicas`` and rank ``r`` takes every ``num_replicas``-th index from ``r``.
    With a per-rank batch of ``B / num_replicas``, step ``t`` then trains on exactly the indices of
    step ``t`` of a one-process run with batch ``B`` over the same list. Being a
    ``DistributedSampler``, MONAI's workflows call :meth:`set_epoch` at every epoch start.

    Args:
        sampler: the sampler to shard (e.g. a ``RandomSampler`` with replacement).
        num_replicas: number of ranks (default: the world size).
        rank: this rank (default: the global rank).
        seed: seed of the per-epoch index lists.
    """

    def __init__(
        self, sampler: Sampler | Sized, num_replicas: int | None = None, rank: int | None = None, seed: int = 0
    ) -> None:
        num_replicas = idist.get_world_size() if num_replicas is None else num_replicas
        rank = idist.get_rank() if rank is None else rank
        # DistributedSampler sizes the shard from len(dataset); the wrapped sampler's length is what counts.
        super().__init__(
            sampler, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed  # type: ignore[arg-type]
        )
        self.sampler = sampler

    def __iter__(self) -> Iterator[int]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.epoch)
            indices = list(self.sampler)  # type: ignore[call-overload]
        if not indices:
            return iter([])
        indices = (indices * math.ceil(self.total_size / len(indices)))[: self.total_size]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


def shard_loader(loader: Any, seed: int = 0) -> Any:
    """This rank's training loader in a distributed run (``loader`` itself otherwise).

    The batch size of ``loader`` is the global batch: each of the ``N`` ranks loads ``batch_size / N``
    samples per step from a :class:`ShardedSampler` around ``loader``'s sampler. The data set's random
    transforms are re-seeded with ``seed + rank``, so ranks (which see different samples) draw
    different crops, reproducibly. A loader whose sampler is already a ``DistributedSampler`` is
    returned unchanged: the task sharded it itself.

    Raises:
        TypeError: for anything but a ``torch``/MONAI ``DataLoader`` (shard those yourself).
        ValueError: without a batch size, or when it is not divisible by the world size.
    """
    if not is_distributed() or isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    from monai.data import DataLoader as MonaiDataLoader
    from monai.data.utils import set_rnd

    if type(loader) not in (DataLoader, MonaiDataLoader):
        raise TypeError(
            f"distributed training shards a torch or MONAI DataLoader, got {type(loader).__name__}; give it a "
            "DistributedSampler (e.g. eqmar.engines.ShardedSampler) and it is used as it is."
        )
    world, rank = idist.get_world_size(), idist.get_rank()
    if loader.batch_size is None or loader.batch_size % world:
        raise ValueError(
            f"the training batch size ({loader.batch_size}) is the global batch, split over {world} processes: "
            f"make it a multiple of {world}."
        )
    settings = {name: getattr(loader, name) for name in _LOADER_SETTINGS if hasattr(loader, name)}
    if loader.num_workers > 0:
        settings["prefetch_factor"] = loader.prefetch_factor
    sharded = type(loader)(
        loader.dataset,
        batch_size=loader.batch_size // world,
        sampler=ShardedSampler(loader.sampler, world, rank, seed),
        generator=torch.Generator().manual_seed(seed + rank),  # worker seeds, distinct per rank
        **settings,
    )
    set_rnd(loader.dataset, seed + rank)
    return sharded
