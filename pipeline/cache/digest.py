"""Content digests and stage keys.

A stage's key hashes what can change its output: the stage name, its code (source bytes of
the files it declares), its canonical parameters, the content digests of its inputs (not the
upstream keys: equal bytes upstream give the same key, which is the early cutoff) and the
versions of the tools it calls.
"""
from __future__ import annotations

import hashlib
import json
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


def stage_key(stage: str, code: dict[str, str], params: dict, inputs: dict[str, str],
              tools: dict[str, str]) -> str:
    return digest_bytes(canonical({"stage": stage, "code": code, "params": params,
                                   "inputs": inputs, "tools": tools}).encode())


# files a model directory may hold that change on every save without changing the model
# (a SavedModel's fingerprint.pb holds a fresh uuid): they never reach a key or a file_dep
VOLATILE_FILES = {"fingerprint.pb"}


def source_files(path: Path) -> list[Path]:
    """A model source's files: the file itself, or a directory's files minus volatile ones."""
    path = path if isinstance(path, Path) else Path(path)   # (a plan asks per case: no copy)
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name not in VOLATILE_FILES)


def digest_source(path: Path) -> str:
    path = Path(path)
    if not path.is_dir():
        return digest_file(path)
    parts = {str(p.relative_to(path)): digest_file(p) for p in source_files(path)}
    return digest_bytes(canonical(parts).encode())
