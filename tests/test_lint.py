"""ruff, configured in pyproject.toml (pyflakes, bugbear, import order), finds nothing: CI runs
it through this test, so the README's one test command checks the code's hygiene too."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: ./setup.sh installs it (the test extra)")
    done = subprocess.run([ruff, "check", "--no-cache", str(REPO)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
