"""Shared pytest fixtures for eqmar."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance" / "syndeeplesion"


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """The SynDeepLesion conformance sample; tests using it skip when ``../shared`` is absent."""
    if not (CONFORMANCE / "gt.h5").exists():
        pytest.skip(f"SynDeepLesion conformance sample not found at {CONFORMANCE}")
    return CONFORMANCE
