"""The shared helpers of eqmar.utils: the device resolver, the thread context, lazy package names."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from eqmar.utils import lazy_exports, resolve_torch_device, torch_threads


def test_resolve_torch_device():
    assert resolve_torch_device("cpu") == torch.device("cpu")
    assert resolve_torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_torch_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_torch_device("cuda")


def test_torch_threads_sets_and_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):  # restored on an error too
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be positive"), torch_threads(0):
        pass


def test_lazy_exports_imports_on_first_use(monkeypatch):
    package = types.ModuleType("eqmar_lazy_probe")
    package.__path__ = []  # a package, so that sub-modules resolve under it
    sub = types.ModuleType("eqmar_lazy_probe.part")
    sub.VALUE = 42
    monkeypatch.setitem(sys.modules, "eqmar_lazy_probe", package)
    monkeypatch.setitem(sys.modules, "eqmar_lazy_probe.part", sub)
    package.__getattr__, package.__dir__ = lazy_exports("eqmar_lazy_probe", {"VALUE": "part"})
    assert package.VALUE == 42
    assert "VALUE" in dir(package)
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = package.missing
