"""Fused CPU kernels for the EQ-Reg residual of the exact cyclic groups (C2, C4).

On a CPU the residual is bound by memory traffic (``docs/benchmarks.md``). PyTorch's operations
rotate, shift, scale and add in separate passes, and a 90° rotation is a strided copy. The numba
kernels here do the forward difference in one pass and the backward gradient of both halves in one
pass over the features. Their results are bit-identical to the PyTorch path, so trained weights do not
depend on which one ran.

They are used for contiguous float32 CPU tensors when numba is installed (``pip install eqmar[fast]``;
``recipes/bootstrap.py`` installs it); everything else (CUDA, half precision, channels-last, C8, D4)
takes the PyTorch path. :func:`use_fused_cpu` switches them off, e.g. to compare the two.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import threading
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

import numpy as np
import torch

from eqmar.equivariance.groups import RotationGroup, _CyclicRot90

__all__ = ["fused_cpu_available", "use_fused_cpu", "fused_cpu_kernels", "applies", "rotated_difference", "residual_gradient"]

_enabled = True
# numba's thread pools may not take two parallel launches at once (its "workqueue" layer aborts).
_launch_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _kernels() -> ModuleType | None:
    """The compiled kernels, or None where numba is missing or cannot compile them here."""
    try:
        from eqmar.equivariance import _numba_kernels

        _compile(_numba_kernels)
    except ImportError as error:
        if importlib.util.find_spec("numba") is not None:  # installed, but e.g. too old for this NumPy
            warnings.warn(f"EQ-Reg's fused CPU kernels are unavailable: numba does not import ({error}); "
                          "using PyTorch operations.", stacklevel=2)
        return None
    except Exception as error:  # a numba that imports but cannot compile must not stop training
        warnings.warn(f"EQ-Reg's fused CPU kernels are unavailable ({error}); using PyTorch operations.", stacklevel=2)
        return None
    return _numba_kernels


def _compile(kernels: ModuleType) -> None:
    """Compile (or load from numba's cache) both kernels on a tiny paired batch, before any real use."""
    z = np.zeros((2, 2, 2, 2), dtype=np.float32)
    out = np.empty_like(z)
    _launch(kernels.rotated_difference_planes, z[:1], z[1:], out[:1], 1, 1, 2)
    _launch(kernels.residual_gradient_planes, out[:1], z[:1], z[1:], out[:1], out[1:], np.float32(1.0), 1, 1, 2, True)


def fused_cpu_available() -> bool:
    """Whether the fused kernels can run here (numba is installed) and are switched on."""
    return _enabled and _kernels() is not None


def use_fused_cpu(enabled: bool) -> bool:
    """Switch the fused CPU kernels on or off for the whole process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


@contextlib.contextmanager
def fused_cpu_kernels(enabled: bool) -> Iterator[None]:
    """Within the block the fused CPU kernels are on (or off)."""
    previous = use_fused_cpu(enabled)
    try:
        yield
    finally:
        use_fused_cpu(previous)


def applies(features: torch.Tensor, grp: RotationGroup) -> bool:
    """Whether :func:`rotated_difference` handles ``features`` of group ``grp``.

    The kernels index without bounds checks, so every shape condition is checked here: a 4-D
    contiguous float32 CPU tensor, channels divisible by the group order, maps the group can act on.
    """
    return (
        isinstance(grp, _CyclicRot90)
        and features.device.type == "cpu"
        and features.dtype == torch.float32
        and features.ndim == 4
        and features.shape[1] % grp.order == 0
        and grp.acts_on(*features.shape[-2:])
        and features.is_contiguous()
        and fused_cpu_available()
    )


def _quarter_turns(n: int, grp: RotationGroup) -> int:
    """Quarter turns of element ``n`` (C2's element 1 is two)."""
    return (n * grp.quarter_turns) % 4  # type: ignore[attr-defined]


def _loaded_kernels() -> ModuleType:
    kernels = _kernels()
    if kernels is None:
        raise RuntimeError("EQ-Reg's fused CPU kernels are unavailable here; check fused_cpu.applies() first.")
    return kernels


def _launch(kernel: Callable[..., None], *args: object) -> None:
    """Run a kernel on as many threads as torch uses, one launch at a time, leaving torch's setting as it was."""
    with _launch_lock:
        import numba

        threads = torch.get_num_threads()
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        kernel(*args)
        if torch.get_num_threads() != threads:
            # starting numba's OpenMP pool resets the thread count of the OpenMP runtime torch shares
            torch.set_num_threads(threads)


def rotated_difference(features: torch.Tensor, half: int, n: int, grp: RotationGroup) -> torch.Tensor:
    """``g · features[:half] - shift_g(features[half:])`` in the layout ``torch.rot90`` would give it.

    Args:
        features: contiguous float32 CPU paired batch (see :func:`applies`).
        half: size of each half.
        n: group element.
        grp: C2 or C4.

    Returns:
        The difference, shape of a half; its storage is contiguous in ``torch.rot90``'s layout.
    """
    q = _quarter_turns(n, grp)
    z = features.detach()
    memory = torch.empty_like(z[:half], memory_format=torch.contiguous_format)
    _launch(_loaded_kernels().rotated_difference_planes, z[:half].numpy(), z[half:].numpy(), memory.numpy(), q, n, grp.order)
    return memory.transpose(2, 3) if q % 2 else memory


def residual_gradient(
    diff: torch.Tensor, grad_features: torch.Tensor | None, factor: torch.Tensor, n: int, grp: RotationGroup
) -> torch.Tensor:
    """The paired batch's gradient ``[rot⁻¹(d)·factor + g0 ; −shift⁻¹(d)·factor + g1]``.

    Args:
        diff: what :func:`rotated_difference` returned.
        grad_features: the network's gradient for the paired features, or None for zero.
        factor: 0-d float32 tensor, the residual's gradient divided by the residual.
        n: group element.
        grp: C2 or C4.

    Returns:
        The gradient of the whole paired batch, a new contiguous tensor.
    """
    q = _quarter_turns(n, grp)
    memory = diff.transpose(2, 3) if q % 2 else diff
    half = memory.shape[0]
    grad = torch.empty((2 * half, *memory.shape[1:]), dtype=memory.dtype)
    given = grad if grad_features is None else grad_features.contiguous()
    _launch(
        _loaded_kernels().residual_gradient_planes,
        memory.numpy(), given[:half].numpy(), given[half:].numpy(), grad[:half].numpy(), grad[half:].numpy(),
        np.float32(factor.item()), q, n, grp.order, grad_features is not None,
    )
    return grad
