"""Content digests and stage keys.

A stage's key hashes what can change its output: the stage name, its code (source bytes of
the files it declares), its canonical parameters, the content digests of its inputs (not the
upstream keys: equal bytes upstream give the same key, which is the early cutoff) and the
versions of the tools it calls.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

CHUNK = 1 << 20


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def canonical(value) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def find_executable(name: str) -> str | None:
    """This interpreter's own bin/ first (doit may run without the venv on PATH), then PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


@functools.lru_cache(maxsize=None)
def tool_version(tool: str) -> str:
    """A tool's version: a Python distribution's from its metadata; otherwise an executable's
    full --version text (iree-compile's names its exact build). Distributions are looked up
    first, so a package that also installs a command of its name never depends on PATH."""
    version = package_version(tool)
    if version != "not installed":
        return version
    exe = find_executable(tool)
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            return " ".join((out.stdout + out.stderr).split())
        raise ValueError(f"{tool} --version failed: declare its Python distribution instead")
    return version


@functools.lru_cache(maxsize=None)
def package_version(dist: str) -> str:
    """Cheap version lookup (no import, no subprocess): used for doit's up-to-date check."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def stage_key(stage: str, code: dict[str, str], params: dict, inputs: dict[str, str],
              tools: dict[str, str]) -> str:
    return digest_bytes(canonical({"stage": stage, "code": code, "params": params,
                                   "inputs": inputs, "tools": tools}).encode())


# files a model directory may hold that change on every save without changing the model
# (a SavedModel's fingerprint.pb holds a fresh uuid): they never reach a key or a file_dep
VOLATILE_FILES = {"fingerprint.pb"}


def source_files(path: Path) -> list[Path]:
    """A model source's files: the file itself, or a directory's files minus volatile ones."""
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name not in VOLATILE_FILES)


def digest_source(path: Path) -> str:
    path = Path(path)
    if not path.is_dir():
        return digest_file(path)
    parts = {str(p.relative_to(path)): digest_file(p) for p in source_files(path)}
    return digest_bytes(canonical(parts).encode())
