"""Whether build/ still holds what kiln wrote there: outputs' stats, taken and compared.

doit itself only checks that a task's targets exist. Each stage entry records its outputs'
digest, size and mtime; a file whose stat differs is hashed, and only a different digest
(an edited or damaged output) makes the task run, so the runner restores it (the check
doit runs on every stage task is pipeline.run.uptodate's, built on these).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..cache.digest import digest_file


def is_output_stats(outputs) -> bool:
    """Whether outputs is what this kiln records: rel -> [digest, size, mtime_ns] (older
    entries held bare digests). The up-to-date check asks this of doit's saved values without
    building the entry (it runs for every task of a no-op run; StageEntry's module, which
    checks entries with it, is not loaded by a no-op run)."""
    if not isinstance(outputs, dict):
        return False
    for stat in outputs.values():
        if not (isinstance(stat, list) and len(stat) == 3):
            return False
    return True


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


def same_stats(out_dir: str, recorded: dict) -> bool:
    for rel, (_, size, mtime_ns) in recorded.items():
        try:   # (a plain join: os.path.join's checks cost more than the stat, every output
            st = os.stat(f"{out_dir}/{rel}")   # of every task of a no-op run)
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            return False
    return True
