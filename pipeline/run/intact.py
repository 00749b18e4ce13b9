"""Whether build/ still holds what kiln wrote there: the check doit runs on every stage task.

doit itself only checks that a task's targets exist. Each stage entry records its outputs'
digest, size and mtime; a file whose stat differs is hashed, and only a different digest
(an edited or damaged output) makes the task run, so the runner restores it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..cache.digest import digest_file
from ..cache.files import atomic_write, read_only
from .entry import StageEntry


def output_stats(out_dir: Path, outputs: dict[str, str]) -> dict[str, list]:
    """rel -> [digest, size, mtime_ns] of installed outputs: what 'intact' is checked against."""
    stats = {}
    for rel, digest in outputs.items():
        st = (out_dir / rel).stat()
        stats[rel] = [digest, st.st_size, st.st_mtime_ns]
    return stats


def changed_outputs(out_dir: Path, recorded: dict) -> tuple[list[str], dict]:
    """(recorded outputs whose file no longer holds what kiln wrote, the stats as they are
    now). Cheap when nothing changed: a file is hashed only when its size or mtime differ
    from the record; one that hashes equal (touched, copied) gets its new stat back, so the
    caller can refresh the record and not hash it again next time."""
    changed, stats = [], {}
    for rel, (digest, size, mtime_ns) in recorded.items():
        try:
            st = (out_dir / rel).stat()
        except FileNotFoundError:
            changed.append(rel)
            continue
        stats[rel] = [digest, st.st_size, st.st_mtime_ns]
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) and digest_file(out_dir / rel) != digest:
            changed.append(rel)
    return changed, stats


def _same_stats(out_dir: str, recorded: dict) -> bool:
    for rel, (_, size, mtime_ns) in recorded.items():
        try:
            st = os.stat(os.path.join(out_dir, rel))
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return False
    return True


def outputs_intact(out_dir: str, recorded: dict, entry_file: str) -> bool:
    """recorded: the outputs doit saved with the task's last run. A stat that differs from it
    is first compared with the entry file's (refreshed when a touched file hashed equal,
    except in read-only mode), then hashed; a touched file costs one hash, not one per run."""
    if _same_stats(out_dir, recorded):
        return True
    entry = StageEntry.load(Path(entry_file))
    if entry is not None and entry.outputs is not None and _same_stats(out_dir, entry.outputs) \
            and {r: v[0] for r, v in entry.outputs.items()} == \
            {r: v[0] for r, v in recorded.items()}:
        return True
    changed, stats = changed_outputs(Path(out_dir), recorded)
    if not changed and not read_only() and entry is not None:
        # same bytes, new stat (touched, copied): record it so the next check is a stat again
        entry.outputs = stats
        with contextlib.suppress(OSError):
            atomic_write(Path(entry_file), entry.to_json())
    return not changed
