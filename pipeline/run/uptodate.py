"""Whether a stage task is up to date: doit's check beside its file_dep.

The params and tool versions are those its last run saw, the inputs a soft upstream (a variant
among several) left are the same, and its outputs in build/ still hold what it wrote.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path

from ..cache.digest import digest_file
from ..cache.files import atomic_write, read_only
from .intact import changed_outputs, is_output_stats, same_stats


CHECK_SIGNATURE = inspect.Signature(
    [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("task", "values")])



def stage_check(task, values) -> bool | None:
    """doit's check of a stage task, beside its file_dep: the params and tool versions are
    those its last run saw, the inputs a soft upstream left are the same, and its outputs
    in build/ still hold what it wrote (a touched output's new stat is recorded)."""
    info = task.meta["kiln"]
    entry = values.get("entry")
    if values.get("watched") != info["watched"] or not isinstance(entry, dict):
        return False   # never ran here, last failed, or a param or tool changed
    if info.get("soft_deps") and not same_inputs(info["soft_deps"], values.get("soft_inputs")):
        return False   # what a variant among several left it (doit checks the others)
    outputs = entry.get("outputs")
    if outputs is None:
        return None    # skipped: no outputs to check; doit's target check decides
    if not is_output_stats(outputs):
        return False   # an older kiln's record: run (the runner restores it from the cache)
    return outputs_intact(info["out_dir"], outputs, info["entry"])



def outputs_intact(out_dir: str, recorded: dict, entry_file: str) -> bool:
    """recorded: the outputs doit saved with the task's last run. A stat that differs from it
    is first compared with the entry file's (refreshed when a touched file hashed equal,
    except in read-only mode), then hashed; a touched file costs one hash, not one per run."""
    if same_stats(out_dir, recorded):
        return True
    from .entry import StageEntry   # (only when a stat differs: a no-op run never needs it)
    entry = StageEntry.load(Path(entry_file))
    if entry is not None and entry.outputs is not None and same_stats(out_dir, entry.outputs) \
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



def input_state(path: str, digest: str | None = None) -> list | None:
    """[digest, size, mtime_ns] of an input a soft upstream left, or None when it left none
    (digest: the one already taken, e.g. for the stage's key)."""
    try:
        st = os.stat(path)
        return [digest or digest_file(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return None



def same_inputs(paths: list[str], recorded: dict | None) -> bool:
    """The inputs hold what they held at the task's last run (absent then, absent now counts
    as the same): a stat, and a hash only where the stat differs."""
    recorded = recorded or {}
    for path in paths:
        was = recorded.get(path, "unknown")
        try:
            st = os.stat(path)
        except OSError:
            if was is not None:
                return False
            continue
        if not isinstance(was, list):
            return False
        if [st.st_size, st.st_mtime_ns] != was[1:] and (input_state(path) or [None])[0] != was[0]:
            return False
    return True

