"""Shared pytest fixtures for eqmar."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance" / "syndeeplesion"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """The SynDeepLesion conformance sample; tests using it skip when ``../shared`` is absent."""
    if not (CONFORMANCE / "gt.h5").exists():
        pytest.skip(f"SynDeepLesion conformance sample not found at {CONFORMANCE}")
    return CONFORMANCE


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's tests on one torch thread, then restore the setting.

    Small convolutions gain nothing from intra-op threads, and on a shared 2-core runner OpenMP
    spin-waiting made them about 3x slower (measured 44 s vs 15 s CPU time for the network tests).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
