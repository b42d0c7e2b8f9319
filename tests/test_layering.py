"""The package's layers: a sub-package imports only the layers below it, never one above or beside it.

Two views of the same rule: every ``import`` statement of a module, including the lazy ones inside
functions (read from the source), and what a fresh interpreter has loaded after importing every
module of one sub-package (``sys.modules``), which also catches imports made through ``__init__``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "eqmar"

_BASE = {"eqmar", "eqmar.utils"}
_PHYSICS = {"eqmar.ct", "eqmar.metrics", "eqmar.equivariance"}
_COMPONENTS = {"eqmar.data", "eqmar.networks", "eqmar.losses"}
_ENGINE = {"eqmar.engines"}
_LOWER_THAN_APPS = _BASE | _PHYSICS | _COMPONENTS | _ENGINE

#: unit -> the units it may import (itself always). Units are the sub-packages, ``eqmar.apps.<task>``
#: and the top-level modules; an app uses the shared restoration app only where it builds on it.
ALLOWED: dict[str, set[str]] = {
    "eqmar": {"eqmar"},
    "eqmar.utils": {"eqmar"},
    "eqmar.ct": _BASE,
    "eqmar.metrics": _BASE,
    "eqmar.equivariance": _BASE,
    "eqmar.data": _BASE | {"eqmar.ct"},
    "eqmar.networks": _BASE | {"eqmar.equivariance"},
    "eqmar.losses": _BASE | {"eqmar.equivariance", "eqmar.networks"},
    "eqmar.engines": _BASE | _PHYSICS | _COMPONENTS,
    "eqmar.apps": {"eqmar"},
    "eqmar.apps.restoration": _LOWER_THAN_APPS | {"eqmar.apps"},
    "eqmar.apps.mar": _LOWER_THAN_APPS | {"eqmar.apps"},
    "eqmar.apps.classify": _LOWER_THAN_APPS | {"eqmar.apps"},
    "eqmar.apps.derain": _LOWER_THAN_APPS | {"eqmar.apps", "eqmar.apps.restoration"},
    "eqmar.apps.inpaint": _LOWER_THAN_APPS | {"eqmar.apps", "eqmar.apps.restoration"},
    "eqmar.infer": _LOWER_THAN_APPS | {"eqmar.apps", "eqmar.apps.mar"},
}


def unit_of(module: str) -> str:
    """The layering unit a dotted eqmar module name belongs to."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "apps":
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_modules(path: Path, name: str | None = None) -> set[str]:
    """Every eqmar module a source file (module ``name``, default from its path) imports, also inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if (PACKAGE.parent / base.replace(".", "/")
                                                                            / f"{alias.name}.py").exists())
    return {name for name in found if name == "eqmar" or name.startswith("eqmar.")}


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_rule():
    assert {unit_of(module_name(path)) for path in SOURCES} <= set(ALLOWED)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_point_down(path: Path):
    unit = unit_of(module_name(path))
    upward = sorted(name for name in imported_modules(path) if unit_of(name) not in ALLOWED[unit] | {unit})
    assert not upward, f"{path.relative_to(PACKAGE.parent)} ({unit}) imports {upward}"


_PROBE = """
import importlib, json, pkgutil, sys
names = {names}
for name in names:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m == "eqmar" or m.startswith("eqmar."))))
"""

UNITS = ["eqmar.utils", "eqmar.ct", "eqmar.metrics", "eqmar.equivariance", "eqmar.data", "eqmar.networks",
         "eqmar.losses", "eqmar.engines", "eqmar.apps.restoration", "eqmar.apps.mar", "eqmar.apps.classify",
         "eqmar.apps.derain", "eqmar.apps.inpaint"]


def test_fresh_import_loads_only_lower_layers():
    """Import every module of a unit in a new interpreter (all units at once); nothing above or beside it may load."""
    runs = {}
    for unit in UNITS:
        names = sorted(module_name(path) for path in SOURCES if unit_of(module_name(path)) == unit)
        assert names, unit
        runs[unit] = subprocess.Popen(
            [sys.executable, "-c", _PROBE.format(names=names)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=PACKAGE.parent,
        )
    problems = []
    for unit, process in runs.items():
        out, err = process.communicate(timeout=300)
        if process.returncode:
            problems.append(f"importing {unit} failed: {err[-1000:]}")
            continue
        loaded = json.loads(out.strip().splitlines()[-1])
        foreign = sorted(name for name in loaded if unit_of(name) not in ALLOWED[unit] | {unit})
        if foreign:
            problems.append(f"importing {unit} loaded {foreign}")
    assert not problems, "\n".join(problems)


def test_the_rule_sees_an_upward_import(tmp_path):
    """A lazy import of a higher layer inside a function is found: the case the rule exists for."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from eqmar.data.readers import CTDicomReader\n    from . import geometry\n")
    found = imported_modules(probe, "eqmar.ct.probe")
    assert found == {"eqmar.data.readers", "eqmar.ct", "eqmar.ct.geometry"}
    assert unit_of("eqmar.data.readers") not in ALLOWED["eqmar.ct"]
