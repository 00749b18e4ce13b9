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
import time
from dataclasses import dataclass
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
                os.utime(self._entry(key))   # last use, for prune()
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

    def prune(self, max_age_days: float) -> "PruneResult":
        """Drop entries not used (looked up or saved) for max_age_days, then every blob no
        remaining entry names, and temp files a killed run left (older than an hour)."""
        now = time.time()
        result = PruneResult()
        entries = list((self.root / "ac").glob("*/*.json"))
        for entry_file in entries:
            if now - entry_file.stat().st_mtime > max_age_days * 86400:
                entry_file.unlink(missing_ok=True)
                result.entries_removed += 1
        referenced = set()
        for entry_file in (self.root / "ac").glob("*/*.json"):
            try:
                referenced.update(json.loads(entry_file.read_text())["outputs"].values())
            except (OSError, ValueError, KeyError):
                entry_file.unlink(missing_ok=True)
                result.entries_removed += 1
        for path in self.root.glob("*/*/*"):
            if not path.is_file():
                continue
            stale_tmp = path.name.endswith(".tmp") and now - path.stat().st_mtime > 3600
            orphan_blob = path.parent.parent.name == "cas" and path.name not in referenced \
                and not path.name.endswith(".tmp")
            if stale_tmp or orphan_blob:
                result.bytes_freed += path.stat().st_size
                path.unlink(missing_ok=True)
                result.blobs_removed += orphan_blob
        for shard in self.root.glob("*/*"):
            if shard.is_dir() and not any(shard.iterdir()):
                shard.rmdir()
        result.entries_kept = len(list((self.root / "ac").glob("*/*.json")))
        return result


@dataclass
class PruneResult:
    entries_removed: int = 0
    entries_kept: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0

    def __str__(self) -> str:
        return (f"removed {self.entries_removed} cache entries and {self.blobs_removed} blobs "
                f"({self.bytes_freed / 1e6:.1f} MB); kept {self.entries_kept} entries")
