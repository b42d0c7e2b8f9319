"""Small helpers shared across eqmar: optional dependencies, devices and threads, parsing, atomic writes."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "EXTRAS",
    "MissingExtraError",
    "atomic_write",
    "lazy_exports",
    "optional_import",
    "parse_index_ranges",
    "require_extra",
    "resolve_torch_device",
    "torch_threads",
]

#: The ``pip install eqmar[<extra>]`` that brings each optional package (import name -> extra).
#: ``pip install eqmar`` itself needs torch, numpy, MONAI and Ignite only (EQ-Reg and the networks).
EXTRAS = {
    "astra": "ct", "odl": "ct", "xraydb": "ct", "spekpy": "ct", "h5py": "ct", "scipy": "ct",
    "nibabel": "io", "pydicom": "io", "PIL": "io",
    "tqdm": "apps", "matplotlib": "apps", "skimage": "apps", "sklearn": "apps", "yaml": "apps", "tensorboard": "apps",
}
#: Distribution names where they differ from the import name.
_DISTRIBUTIONS = {"astra": "astra-toolbox", "PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn",
                  "yaml": "pyyaml"}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the ``eqmar[...]`` extra that brings it."""


def _message(feature: str, module: str, extra: str) -> str:
    package = _DISTRIBUTIONS.get(module, module)
    return f"{feature} needs {package}, which is not installed: pip install 'eqmar[{extra}]'"


def _missing(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is None  # None marks a module blocked from import
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require_extra(feature: str, *modules: str, extra: str | None = None) -> None:
    """Fail at import time, naming the extra, when a module's optional dependencies are missing.

    Only looks the packages up (no import), so modules that call it at their top stay cheap to import.

    Args:
        feature: what needs them, usually the calling module's ``__name__``.
        modules: top-level import names (``"astra"``, ``"PIL"``...).
        extra: the extra to name (default: the one :data:`EXTRAS` lists for each module).

    Raises:
        MissingExtraError: the first missing module, e.g. ``eqmar.ct.projector needs astra-toolbox,
            which is not installed: pip install 'eqmar[ct]'``.
    """
    for module in modules:
        if _missing(module):
            raise MissingExtraError(_message(feature, module, extra or EXTRAS.get(module, "all")))


def optional_import(module: str, feature: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"matplotlib.pyplot"``) for ``feature``, or raise naming the extra.

    For optional parts of modules that work without the package (a figure of an otherwise core
    function, a progress bar).

    Raises:
        MissingExtraError: the package is not installed.
    """
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is not: let its error speak
        raise MissingExtraError(_message(feature, top, extra or EXTRAS.get(top, "all"))) from error


def parse_index_ranges(text: str | None) -> list[int] | None:
    """Parse ``"0-79"`` or ``"0,3,5-7"`` into a list of ints; None stays None.

    Raises:
        ValueError: for a malformed part or a descending range, naming it.
    """
    if text is None:
        return None
    indices: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                if high < low:
                    raise ValueError
                indices.extend(range(low, high + 1))
            else:
                indices.append(int(part))
        except ValueError:
            raise ValueError(f"cannot read index range {part!r} in {text!r} (expected e.g. 0-79 or 0,3,5-7)") from None
    return indices


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file lives in the same folder so that :func:`os.replace` is an atomic rename on
    POSIX and Windows. On any error the temporary file is removed and ``path`` is left untouched.

    Args:
        path: final file path; missing parent folders are created.
        write: callable that writes the complete file at the path it is given.

    Returns:
        The final path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A unique name rather than tempfile.mkstemp: mkstemp files are mode 0600, and the rename
    # would carry that into a data set meant to be shared.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        # flushed to disk before the rename: after a power loss a resumed run keeps every file it
        # finds, so a renamed file must never be a truncated one
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def resolve_torch_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device name, checked to exist.

    Raises:
        ValueError: for an unknown device name, or CUDA requested where it is not available.
    """
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    return resolved


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``threads`` (None: leave it), then restore it.

    Small convolutions gain little from threads, and on a shared CPU OpenMP spin-waiting can make
    them far slower, so experiments may pin the count for their run only.

    Raises:
        ValueError: ``threads`` is not positive.
    """
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be positive, got {threads}.")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package that serves ``exports`` (name -> sub-module) on first use.

    PEP 562 lets ``import eqmar.ct`` stay light: a name's sub-module (and its optional dependencies)
    is imported only when the name is first looked up.

    Args:
        package: the package's ``__name__``.
        exports: exported name -> the sub-module (relative to ``package``) that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
