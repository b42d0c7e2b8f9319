"""Checks run inside a core-only install of eqmar (see .ci/core_install_step).

Usage: python core_install_check.py README.md
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

readme = Path(sys.argv[1]).read_text()
(snippet,) = [block for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "EQReg(" in block]
with tempfile.TemporaryDirectory() as folder:
    script = Path(folder) / "readme_example.py"
    script.write_text(snippet)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=folder)
print(result.stdout, end="")
if result.returncode != 0 or "EQ-Reg term per step:" not in result.stdout:
    sys.exit(f"the README's EQ-Reg example failed in a core-only install:\n{result.stderr[-3000:]}")

import eqmar  # noqa: E402

if "site-packages" not in eqmar.__file__:
    sys.exit(f"eqmar was imported from {eqmar.__file__}, not from the installed package")
from eqmar import EQReg, convs_divisible_by, equivariance_report  # noqa: E402,F401

expected = {"eqmar.ct.projector": "eqmar[ct]", "eqmar.data.syndeeplesion": "eqmar[ct]",
            "eqmar.data.readers": "eqmar[io]", "eqmar.infer": "eqmar[infer]", "eqmar.apps.classify.data": "eqmar[apps]"}
for module, extra in expected.items():
    try:
        importlib.import_module(module)
    except ImportError as error:
        if extra not in str(error):
            sys.exit(f"import {module}: the error does not name {extra}: {error}")
        print(f"import {module}: {error}")
    else:
        sys.exit(f"import {module} succeeded in a core-only install: its extra's packages are installed?")
for module in ("eqmar.equivariance", "eqmar.networks", "eqmar.losses", "eqmar.metrics", "eqmar.engines"):
    importlib.import_module(module)
print("core-only install: README example ran; extras are named where missing")
