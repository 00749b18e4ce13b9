"""The content-addressed store under cache/.

    cache/ac/<key>.json   action cache: key -> {relative output path: digest, ...} plus meta
    cache/cas/<digest>    blob store: the bytes, named by their sha256

Every write goes to a temporary file in the same directory and is renamed into place, so a
killed run leaves no partial entry. Every read re-hashes the bytes: a corrupted blob is
discarded with a warning and the stage is rebuilt.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .keys import digest_file

log = logging.getLogger("kiln.store")


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.warnings: list[str] = []   # what was discarded, for the run record

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("kiln: %s", message)

    def _entry(self, key: str) -> Path:
        return self.root / "ac" / key[:2] / f"{key}.json"

    def _blob(self, digest: str) -> Path:
        return self.root / "cas" / digest[:2] / digest

    def lookup(self, key: str) -> dict | None:
        """The entry saved under key, or None. A damaged entry counts as a miss."""
        try:
            entry = json.loads(self._entry(key).read_text())
            if isinstance(entry.get("outputs"), dict):
                return entry
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        self._warn(f"cache entry {key[:12]} is damaged; discarded it and rebuilt")
        self._entry(key).unlink(missing_ok=True)
        return None

    def restore(self, key: str, entry: dict, dest: Path) -> bool:
        """Copy the entry's outputs into dest, verifying each digest. False on any damage."""
        for rel, digest in entry["outputs"].items():
            blob = self._blob(digest)
            if not blob.is_file() or digest_file(blob) != digest:
                self._warn(f"cache blob {digest[:12]} for {rel} is missing or corrupted; "
                           "discarded the entry and rebuilt")
                blob.unlink(missing_ok=True)
                self._entry(key).unlink(missing_ok=True)
                return False
        for rel, digest in entry["outputs"].items():
            atomic_copy(self._blob(digest), dest / rel)
        return True

    def save(self, key: str, src: Path, outputs: dict[str, str], meta: dict) -> None:
        """Store the files of src named in outputs (rel path -> digest), then the entry.

        Blobs go first and the entry last, so an entry never names a blob that is not there."""
        for rel, digest in outputs.items():
            blob = self._blob(digest)
            if not blob.is_file():
                atomic_copy(src / rel, blob)
        entry = {"outputs": outputs, "meta": meta}
        atomic_write(self._entry(key), json.dumps(entry, indent=1, sort_keys=True).encode())
