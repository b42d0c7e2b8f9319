"""The README's code must run exactly as shown."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import ROOT


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_quick_start_has_exactly_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.index("## Quick start") < readme.index("```")
    first_block = re.search(r"```\w*\n(.*?)```", readme, flags=re.S).group(1)
    commands = [line for line in first_block.splitlines() if line.strip()]
    assert commands == [
        "python3 recipes/bootstrap.py recipes/mar_deeplesion.py",
        "python3 recipes/bootstrap.py -m pytest",
    ]
    assert (ROOT / "recipes" / "mar_deeplesion.py").exists()


def test_use_eqreg_on_your_own_network_snippet_runs(tmp_path) -> None:
    (snippet,) = [b for b in _python_blocks() if "EQReg(" in b]
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    terms = [float(v) for v in re.findall(r"[-\d.]+", result.stdout.split("EQ-Reg term per step:")[1].splitlines()[0])]
    assert len(terms) == 4 and max(terms) > 0  # 2 epochs x 2 steps; the regulariser is active
    assert "mean relative layer error" in result.stdout
