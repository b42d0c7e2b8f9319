"""Shared pytest fixtures for eqmar."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import CONFORMANCE, astra_has_cuda


@pytest.fixture(scope="session")
def conformance_dir() -> Path:
    """The SynDeepLesion conformance sample; tests using it skip when it is absent."""
    if not (CONFORMANCE / "gt.h5").exists():
        pytest.skip(f"SynDeepLesion conformance sample not found at {CONFORMANCE}")
    return CONFORMANCE


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    """Each test that takes it runs on the CPU and, where PyTorch sees a GPU, again on CUDA."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch")
    return torch.device(request.param)


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def ct_device(request) -> str:
    """Projector devices: ``"cpu"`` always, ``"cuda"`` where ASTRA has its CUDA projectors."""
    if request.param == "cuda" and not astra_has_cuda():
        pytest.skip("ASTRA reports no CUDA device (astra.use_cuda() is False)")
    return request.param


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


