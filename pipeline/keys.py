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


@functools.lru_cache(maxsize=None)
def tool_version(tool: str) -> str:
    """A tool's version. 'iree-compile' style names (on PATH) give their full --version text;
    anything else is a Python distribution name read from its metadata."""
    exe = shutil.which(tool)
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
        return " ".join((out.stdout + out.stderr).split())
    return package_version(tool)


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
