"""The code base stays ruff-clean (configuration in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import ROOT


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff is not installed")
    proc = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_script_has_a_usage_block():
    """icefall style: each recipe and bench script starts with a runnable usage block."""
    scripts = sorted((ROOT / "egs").rglob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    scripts = [s for s in scripts if s.name not in ("report.py", "__init__.py", "recipes.py")
               and "local" not in s.parts]
    assert scripts
    for path in scripts:
        text = path.read_text()
        assert "Usage:" in text.split('"""')[1], f"{path} has no usage block"
