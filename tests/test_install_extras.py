"""A light core install: optional packages belong to named extras, and a missing one is named on import."""

from __future__ import annotations

import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from tests.helpers import ROOT


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_core_dependencies_are_torch_numpy_monai_and_ignite():
    names = sorted(d.split(">")[0].split("=")[0].split("<")[0].strip() for d in _project()["dependencies"])
    assert names == ["monai", "numpy", "pytorch-ignite", "torch"]
    assert "numpy>=1.26" in _project()["dependencies"]  # 1.26 and 2.x


def test_extras_hold_every_optional_package_and_all_holds_every_extra():
    from eqmar.utils import _DISTRIBUTIONS, EXTRAS

    extras = _project()["optional-dependencies"]
    assert {"ct", "io", "infer", "apps", "all", "test"} <= set(extras)
    for module, extra in EXTRAS.items():
        distribution = _DISTRIBUTIONS.get(module, module)
        assert any(r.startswith(distribution) for r in extras[extra]), (module, extra)
    assert extras["all"] == ["eqmar[ct,io,infer,apps]"]
    # eqmar itself never imports fire; MONAI's bundle command line (python -m monai.bundle) does
    assert any(r.startswith("fire") for r in extras["apps"])


@pytest.mark.parametrize(("blocked", "module", "extra"), [
    ("astra", "eqmar.ct.projector", "ct"),
    ("h5py", "eqmar.data.syndeeplesion", "ct"),
    ("pydicom", "eqmar.data.readers", "io"),
    ("nibabel", "eqmar.infer", "infer"),
    ("scipy", "eqmar.apps.mar.inference", "infer"),
    ("sklearn", "eqmar.apps.classify.data", "apps"),
])
def test_importing_a_module_whose_extra_is_missing_names_the_extra(blocked, module, extra):
    code = f"import sys; sys.modules[{blocked!r}] = None; import {module}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("eqmar.utils.MissingExtraError") and f"pip install 'eqmar[{extra}]'" in last, last


def test_core_modules_import_without_any_extra():
    """EQ-Reg, networks, losses, metric and engines with every optional package blocked."""
    blocked = ["astra", "odl", "xraydb", "spekpy", "h5py", "scipy", "nibabel", "pydicom", "PIL", "tqdm",
               "matplotlib", "skimage", "sklearn", "yaml", "tensorboard"]
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
            + "import eqmar.equivariance, eqmar.networks, eqmar.losses, eqmar.metrics, eqmar.engines\n"
              "from eqmar import EQReg, convs_divisible_by, equivariance_report\n"
              "import eqmar.ct.geometry\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_optional_import_names_the_extra_for_an_optional_feature():
    from eqmar.utils import MissingExtraError, optional_import

    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from eqmar.equivariance import plot_equivariance_report\n"
            "plot_equivariance_report({}, 'x.png')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "pip install 'eqmar[apps]'" in result.stderr.strip().splitlines()[-1]
    with pytest.raises(MissingExtraError, match=r"needs no_such_package_x.*eqmar\[all\]"):
        optional_import("no_such_package_x", "this test")
    assert optional_import("numpy", "this test").__name__ == "numpy"
