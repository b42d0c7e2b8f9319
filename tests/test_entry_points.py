"""The console scripts of ``[project.scripts]`` and the ``python ...`` forms that run the same code."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_user_facing_commands_are_console_scripts():
    assert SCRIPTS == {"eqmar-infer": "eqmar.apps.mar.cli:main", "eqmar-synthesize": "eqmar.data.cli:main"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_target_has_help(name, capsys):
    module, _, function = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "eqmar.infer", "--help"],
     [sys.executable, str(ROOT / "data_tools" / "synthesize_mar.py"), "--help"]],
    ids=["python -m eqmar.infer", "data_tools/synthesize_mar.py"],
)
def test_the_python_forms_still_work(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--out" in result.stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_installed_scripts_run(name):
    """Where the package is installed (the set-up installs it), the console script itself runs."""
    script = Path(sys.executable).parent / name
    if not script.exists():
        pytest.skip(f"{name} is not installed beside {sys.executable}")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {name}")
