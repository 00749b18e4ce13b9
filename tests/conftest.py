"""Shared fixtures: a throw-away copy of the kiln project, and a way to run doit in it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROJECT_FILES = ["dodo.py", "targets.yaml", "pipeline", "stages", "models"]


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


class Project:
    def __init__(self, root: Path):
        self.root = root

    def doit(self, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("KILN_CACHE", None)
        env.pop("KILN_CONFIG", None)
        proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"doit {' '.join(args)} exited {proc.returncode}\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def record(self) -> list[dict]:
        return json.loads((self.root / "build" / "run.json").read_text())["tasks"]

    def statuses(self) -> dict[str, str]:
        return {t["task"]: t["status"] for t in self.record()}

    def write_config(self, text: str) -> None:
        (self.root / "targets.yaml").write_text(text)


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(copy_project(tmp_path / "proj"))


def has_torch() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


needs_torch = pytest.mark.skipif(not has_torch(), reason="needs kiln[torch]")


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a directory on its own tmpfs of that size (real ENOSPC, and EROFS after
    read_only()), unmounted afterwards. Needs root (as on the dev and CI machines): root
    ignores file permissions, so a real read-only or full disk needs a real filesystem."""
    mounts = []

    class Disk:
        def mount(self, size: str = "1m") -> Path:
            path = tmp_path / f"disk{len(mounts)}"
            path.mkdir()
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
            mounts.append(path)
            return path

        def read_only(self, path: Path) -> None:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)

    yield Disk()
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)
