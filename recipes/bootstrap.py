#!/usr/bin/env python3
"""Run a command inside eqmar's own virtual environment, creating it first if needed.

Usage::

    python3 recipes/bootstrap.py recipes/mar_deeplesion.py   # set up, then run the main job
    python3 recipes/bootstrap.py -m pytest                   # set up, then run the tests

Everything after the script name is handed to the environment's Python interpreter.

The environment lives in ``.venv`` beside ``pyproject.toml`` (override with ``EQMAR_VENV``). It is
(re)installed whenever ``pyproject.toml`` changes. PyTorch is installed before the package so that
pip does not resolve the plain ``torch`` range to a multi-GB CUDA build on a machine without a GPU:
without a visible NVIDIA GPU the CPU build named by ``EQMAR_TORCH_CPU`` (default ``torch==2.13.0``)
is installed, with one the range from ``pyproject.toml`` is left to pip. Set ``EQMAR_TORCH`` to any
pip requirement to choose the build yourself.

Only the standard library is used here: this file runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("EQMAR_VENV", ROOT / ".venv"))
STAMP = VENV / ".eqmar-installed"


def _venv_python() -> Path:
    sub = "Scripts/python.exe" if os.name == "nt" else "bin/python"
    return VENV / sub


def _has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _torch_requirement() -> str | None:
    """The pip requirement to pre-install for torch, or None to let the package range decide."""
    if "EQMAR_TORCH" in os.environ:
        return os.environ["EQMAR_TORCH"]
    if _has_nvidia_gpu():
        return None
    return os.environ.get("EQMAR_TORCH_CPU", "torch==2.13.0")


def _fingerprint() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(str(_torch_requirement()).encode())
    return digest.hexdigest()


def _pip(*args: str) -> None:
    cmd = [str(_venv_python()), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _torch_installed() -> bool:
    probe = subprocess.run([str(_venv_python()), "-c", "import torch"], capture_output=True)
    return probe.returncode == 0


def ensure_environment() -> Path:
    """Create and install the environment unless it is already current; return its interpreter."""
    if not _venv_python().exists():
        print(f"creating virtual environment {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    fingerprint = _fingerprint()
    if STAMP.exists() and STAMP.read_text().strip() == fingerprint:
        return _venv_python()
    requirement = _torch_requirement()
    if requirement is not None and not _torch_installed():
        _pip("-q", requirement)
    _pip("-q", "-e", f"{ROOT}[test,all]")
    STAMP.write_text(fingerprint + "\n")
    return _venv_python()


def main(argv: list[str]) -> int:
    if argv and argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    python = ensure_environment()
    if not argv:
        print(f"environment ready: {python}")
        return 0
    return subprocess.run([str(python), *argv]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
