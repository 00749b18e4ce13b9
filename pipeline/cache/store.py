"""The content-addressed store under cache/.

    cache/ac/<key>.json   action cache: key -> {relative output path: digest, ...} and the
                          digest of the stage's result (the numbers the record reports);
                          or, for a stage that failed with this key, a failure entry: no
                          outputs, "failed": true, its metadata blob holding the error,
                          command, result and log (pipeline.run.decide says which failures)
    cache/cas/<digest>    blob store: the bytes, named by their sha256

Every write goes to a temporary file in the same directory and is renamed into place, so a
killed run leaves no partial entry. An entry is believed only when it is whole: it names
exactly the stage's declared outputs, every blob it names re-hashes to its name, and the
result comes from a verified blob, never from the entry itself. Anything else is a miss: the
entry is discarded with a warning and the stage is rebuilt. A cache that cannot be written
(read-only, full) is read as usual and not written, with one warning naming the errno.
In read-only mode (pipeline.cache.files.read_only: `doit explain`) a lookup neither marks the
entry's last use nor discards a damaged one.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NamedTuple

from .digest import CHUNK, canonical, digest_bytes, digest_file
from .files import (UNWRITABLE, atomic_copy, atomic_write, describe_os_error, errno_text,
                    file_identity, read_only, write_verified)
from .remote import RemoteError, RemoteUnavailable

log = logging.getLogger("kiln.store")

FORMAT = 2                                # entries of another format are a silent miss
DIGEST = re.compile(r"[0-9a-f]{64}")
TEMP_GRACE_S = 3600                       # a temp file younger than this may be a live run's


class Found(NamedTuple):
    """A whole cache entry for a key, and where it was found: "local" or "remote"."""
    entry: dict
    where: str

    @property
    def failed(self) -> bool:
        """A failure entry: the stage failed with this key (recall_failure reads why)."""
        return self.entry.get("failed") is True


class Store:
    """The local cache, with an optional remote backend (pipeline.cache.remote) behind it: local
    first, remote second; a remote hit fills the local cache, a save in write mode uploads."""

    def __init__(self, root: str | Path, remote=None):
        self.root = Path(root)
        self.remote = remote
        self.warnings: list[str] = []   # what was discarded, for the run record
        self.remote_outcome: str | None = None   # hit, miss, error, stored: for the record
        self._from_remote: set[str] = set()

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning("kiln: %s", message)

    def _entry(self, key: str) -> Path:
        return self.root / "ac" / key[:2] / f"{key}.json"

    def blob_path(self, digest: str) -> Path:
        """Where the local blob of digest lives (it may be absent)."""
        return self.root / "cas" / digest[:2] / digest

    def _discard(self, path: Path) -> None:
        with contextlib.suppress(OSError):   # a read-only cache keeps it; the miss stands
            path.unlink(missing_ok=True)

    def lookup(self, key: str, expected: Iterable[str]) -> dict | None:
        """The entry saved under key if it is whole (names exactly the expected outputs, by
        well-formed digests, or is a failure entry), else None. A damaged entry is discarded
        with a warning."""
        try:
            entry = json.loads(self._entry(key).read_text())
        except FileNotFoundError:
            return self._lookup_remote(key, set(expected))
        except (OSError, ValueError):
            entry = None
        if isinstance(entry, dict) and entry.get("format") != FORMAT and "outputs" in entry:
            return self._lookup_remote(key, set(expected))   # another kiln version's: not damage
        if not _is_whole(entry, set(expected)):
            if not read_only():   # (in read-only mode the run that follows says so, and does it)
                self._warn(f"cache entry {key[:12]} is damaged or incomplete; discarded it and "
                           "rebuilt")
                self._discard(self._entry(key))
            return self._lookup_remote(key, set(expected))
        if not read_only():
            with contextlib.suppress(OSError):  # last use, for prune(); a read-only cache has none
                os.utime(self._entry(key))
        return entry

    def find(self, key: str, expected: Iterable[str], verify: bool = False) -> Found | None:
        """lookup, saying where the entry was found. verify: a local entry counts only if
        its blobs hash to their names, as restore would find them (for a caller that will
        not restore: a restore checks each blob as it copies it, and rebuilds on a bad one,
        asking no remote)."""
        entry = self.lookup(key, expected)
        if entry is None:
            return None
        if key in self._from_remote:
            return Found(entry, "remote")
        if verify and not self.blobs_verify(entry):
            return None
        return Found(entry, "local")

    def blobs_verify(self, entry: dict) -> bool:
        """Whether every blob a whole local entry names is here and hashes to its name."""
        if self._verified_meta(entry["meta"]) is None:
            return False
        try:
            return all(digest_file(self.blob_path(d)) == d for d in entry["outputs"].values())
        except OSError:
            return False

    def _lookup_remote(self, key: str, expected: set[str]) -> dict | None:
        if self.remote is None:
            return None
        entry = self._remote_call(self.remote.get_entry, key)
        if entry is None:
            self.remote_outcome = self.remote_outcome or "miss"
            return None
        if not _is_whole(entry, expected):
            self._warn(f"remote cache entry {key[:12]} is incomplete or of another format; "
                       "ignored it")
            self.remote_outcome = "miss"
            return None
        self._from_remote.add(key)
        return entry

    def _remote_call(self, method, *args):
        """method(*args), or None with a warning and an 'error' outcome: a remote that fails
        is a miss, never a failed stage."""
        try:
            return method(*args)
        except (RemoteUnavailable, RemoteError) as err:
            self._warn(str(err))
        except OSError as err:   # the local cache would not take a downloaded blob
            self._warn(f"remote cache: could not keep a download ({describe_os_error(err)})")
        self.remote_outcome = "error"
        return None

    def _fetched(self, digest: str) -> bool:
        """Make the local blob present, from the remote when the entry came from there."""
        if self.blob_path(digest).is_file():
            return True
        return bool(self._remote_call(self._download, digest))

    def _download(self, digest: str) -> bool:
        response = self.remote.open_blob(digest)
        if response is None:
            return False
        with response:
            if write_verified(self.blob_path(digest), response.iter_content(CHUNK), digest):
                return True
        self.remote.mark_bad(digest)
        self._warn(f"remote cache blob {digest[:12]} did not match its digest; ignored it "
                   "(a writer replaces it)")
        return False

    def restore(self, key: str, entry: dict, dest: Path) -> dict | None:
        """Copy the entry's outputs into dest, each hashed as it is copied (so what lands is
        what was verified, whatever happens to the blob meanwhile); return the stage's result
        metadata read from its verified blob. None on any damage: the entry is discarded.
        (A failure entry has no outputs: dest is never written.)"""
        remote = key in self._from_remote
        if remote and not all(self._fetched(d) for d in [entry["meta"], *entry["outputs"].values()]):
            self.remote_outcome = self.remote_outcome or "miss"   # a blob missing or bad there
            return None
        meta = self._verified_meta(entry["meta"])
        if meta is None:
            return self._damaged(key, entry["meta"], "(result)")
        for rel, digest in entry["outputs"].items():
            if not self._copy_verified(digest, dest / rel):
                return self._damaged(key, digest, rel)
        if remote:   # a remote hit fills the local cache: its blobs are here already
            self.remote_outcome = "hit"
            with contextlib.suppress(OSError):
                atomic_write(self._entry(key), json.dumps(entry, indent=1, sort_keys=True).encode())
        return meta

    def recall_failure(self, key: str, entry: dict) -> dict | None:
        """The failure a failure entry remembers ({"error", "command", "result", "log"}), read
        from its verified metadata blob (fetched from the remote, like a restore's, when the
        entry came from there); None when that blob is missing or damaged (the entry is
        discarded, with a warning, and the stage runs)."""
        meta = self.restore(key, entry, self.root)   # (no outputs: nothing is copied)
        failure = (meta or {}).get("failure")
        if meta is not None and not (isinstance(failure, dict)
                                     and isinstance(failure.get("error"), str)):
            return self._damaged(key, entry["meta"], "(failure)")
        return failure

    def failure_files(self, key: str) -> dict[str, list] | None:
        """The local files a failure entry under key is, {"entry": [path, identity], "meta":
        [path, identity]} (its metadata blob holds the failure; identity: files.file_identity,
        which a lookup's last-use mark leaves as it is): what tells, by a stat, that the
        failure is still remembered as it was (pipeline.run.uptodate.settled). None when the
        local cache holds no failure entry for key."""
        try:
            entry = json.loads(self._entry(key).read_text())
        except (OSError, ValueError):
            return None
        if not (_is_whole(entry, set()) and entry.get("failed") is True):
            return None
        files = {"entry": self._entry(key), "meta": self.blob_path(entry["meta"])}
        found = {role: [str(path), file_identity(path)] for role, path in files.items()}
        return None if any(identity is None for _, identity in found.values()) else found

    def _damaged(self, key: str, digest: str, rel: str) -> None:
        self._warn(f"cache blob {digest[:12]} for {rel} is missing or corrupted; "
                   "discarded the entry and rebuilt")
        self._discard(self.blob_path(digest))
        self._discard(self._entry(key))

    def _verified_meta(self, digest: str) -> dict | None:
        try:
            data = self.blob_path(digest).read_bytes()
            meta = json.loads(data) if digest_bytes(data) == digest else None
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def _copy_verified(self, digest: str, dst: Path) -> bool:
        try:
            with open(self.blob_path(digest), "rb") as src:
                return write_verified(dst, iter(lambda: src.read(CHUNK), b""), digest)
        except FileNotFoundError:
            return False

    def save(self, key: str, src: Path, outputs: dict[str, str], meta: dict,
             failed: bool = False) -> bool:
        """Store the files of src named in outputs (rel path -> digest) and meta, then the
        entry. Blobs go first and the entry last, so an entry never names a missing blob.
        False (with one warning) when the cache cannot be written: the build goes on; False
        in read-only mode. failed: a failure entry (remember_failure)."""
        if read_only():
            return False
        meta_bytes = canonical(meta).encode()
        meta_digest = digest_bytes(meta_bytes)
        entry = {"format": FORMAT, "outputs": outputs, "meta": meta_digest,
                 **({"failed": True} if failed else {})}
        stored = self._save_local(key, src, outputs, meta_bytes, entry)
        if self.remote is not None and self.remote.writes:
            self._remote_call(self._upload, key, src, outputs, meta_bytes, entry)
        return stored

    def remember_failure(self, key: str, failure: dict) -> bool:
        """Store that the stage failed with key: an entry naming no outputs, marked failed,
        whose metadata blob holds failure (error, command, result, log). It replaces what
        the key held and goes to the remote in write mode, as save does (save replaces it in
        turn when the stage later succeeds with this key)."""
        return self.save(key, self.root, {}, {"failure": failure}, failed=True)

    def _upload(self, key, src, outputs, meta_bytes, entry) -> None:
        """Blobs first, the entry last: a reader never sees an entry whose blobs are missing."""
        for rel, digest in outputs.items():
            self.remote.put_blob(digest, src / rel)
        self.remote.put_blob(entry["meta"], meta_bytes)
        self.remote.put_entry(key, entry)
        self.remote_outcome = "stored"

    def _save_local(self, key, src, outputs, meta_bytes, entry) -> bool:
        meta_digest = entry["meta"]
        try:
            for rel, digest in outputs.items():
                self._put_blob(digest, lambda blob, rel=rel: atomic_copy(src / rel, blob))
            self._put_blob(meta_digest, lambda blob: atomic_write(blob, meta_bytes))
            atomic_write(self._entry(key), json.dumps(entry, indent=1, sort_keys=True).encode())
        except OSError as err:
            if err.errno not in UNWRITABLE:
                raise
            self._unwritable(err)
            return False
        return True

    def _unwritable(self, err: OSError) -> None:
        """The warning of a cache that will not take a save: the same words for every stage,
        which the run's summary folds into its one line, and not printed as it happens (72
        lines for 15 cases, whichever process each stage ran in)."""
        self.warnings.append(f"cache {self.root} is not writable ({errno_text(err)}); built "
                             "without storing")

    def _put_blob(self, digest: str, write) -> None:
        blob = self.blob_path(digest)
        with contextlib.suppress(FileNotFoundError):   # (a concurrent prune may remove it)
            if digest_file(blob) == digest:
                # mark it fresh: prune keeps young unreferenced blobs while the entry is written
                with contextlib.suppress(OSError):
                    os.utime(blob)
                return
        write(blob)   # absent, or bad bytes sitting at the digest's name: (re)write it

    def prune(self, max_age_days: float) -> "PruneResult":
        """Drop entries not used (looked up or saved) for max_age_days, then every blob no
        remaining entry names, and temp files a killed run left (older than an hour).

        Safe to run while builds write to the same cache: every file may vanish under it, and
        an unreferenced blob younger than the age limit (at most an hour) is kept, since a
        build writes its blobs before the entry that names them."""
        now = time.time()
        max_age_s = max_age_days * 86400
        result = PruneResult()
        for entry_file in self._entries():
            if now - _mtime(entry_file, now) > max_age_s and _unlink(entry_file):
                result.entries_removed += 1
        referenced = set()
        for entry_file in self._entries():
            try:
                entry = json.loads(entry_file.read_text())
                referenced.update(entry["outputs"].values())
                referenced.add(entry["meta"])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                if _unlink(entry_file):
                    result.entries_removed += 1
        blob_grace = min(TEMP_GRACE_S, max_age_s)
        for path in [*_files_in_shards(self.root / "ac"), *_files_in_shards(self.root / "cas")]:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            age = now - stat.st_mtime
            is_tmp = path.name.endswith(".tmp")
            stale_tmp = is_tmp and age > TEMP_GRACE_S
            orphan_blob = (path.parent.parent.name == "cas" and not is_tmp
                           and path.name not in referenced and age >= blob_grace)
            if (stale_tmp or orphan_blob) and path.is_file() and _unlink(path):
                result.bytes_freed += stat.st_size
                result.blobs_removed += orphan_blob
        for shard in [*_listdir(self.root / "ac"), *_listdir(self.root / "cas")]:
            with contextlib.suppress(OSError):   # not empty (any more), or gone already
                shard.rmdir()
        result.entries_kept = len(self._entries())
        return result

    def _entries(self) -> list[Path]:
        return [p for p in _files_in_shards(self.root / "ac") if p.suffix == ".json"]


def _listdir(path: Path) -> list[Path]:
    """path's entries; none if it vanished (pathlib's glob raises when a concurrent prune
    removes a directory it is walking)."""
    try:
        return [path / name for name in os.listdir(path)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _files_in_shards(kind_dir: Path) -> list[Path]:
    return [path for shard in _listdir(kind_dir) for path in _listdir(shard)]


def _is_whole(entry, expected: set[str]) -> bool:
    """Names exactly the expected outputs (a failure entry: none), by well-formed digests."""
    if not (isinstance(entry, dict) and entry.get("format") == FORMAT
            and isinstance(entry.get("outputs"), dict)):
        return False
    if entry.get("failed", False) is not False:
        if entry["failed"] is not True or entry["outputs"]:
            return False
    elif set(entry["outputs"]) != expected:
        return False
    return all(isinstance(d, str) and DIGEST.fullmatch(d)
               for d in [*entry["outputs"].values(), entry.get("meta")])


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return default


def _unlink(path: Path) -> bool:
    """Remove path; False if another process removed it first."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def prune_scratch(scratch: Path) -> int:
    """Remove what killed runs left in build/.tmp: entries untouched for over an hour (a live
    run's temp directory is younger, or has younger files in it). Returns how many."""
    removed = 0
    now = time.time()
    for path in scratch.glob("*") if scratch.is_dir() else ():
        try:
            newest = max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")])
        except FileNotFoundError:
            continue
        if now - newest > TEMP_GRACE_S:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else _unlink(path)
            removed += 1
    return removed


@dataclass
class PruneResult:
    entries_removed: int = 0
    entries_kept: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0

    def __str__(self) -> str:
        return (f"removed {self.entries_removed} cache entries and {self.blobs_removed} blobs "
                f"({self.bytes_freed / 1e6:.1f} MB); kept {self.entries_kept} entries")
