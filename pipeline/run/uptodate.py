"""Whether a stage task is up to date: doit's check beside its file_dep; and whether a task
doit will run anyway has a settled outcome, which the run reports again without a plan.

Up to date: the params and tool versions are those its last run saw, the inputs a soft
upstream (a variant among several) left are the same, and its outputs in build/ still hold
what it wrote.

Settled: its last outcome was a failure the cache remembers under its key, or a skip for an
input an upstream left absent, and nothing that outcome was a verdict on has changed since:
the task's watched digest (params, tool versions, code), each file its key reads (by stat),
and the cache's failure entry (by identity). doit never holds a failed task up to date (it
drops its state, and its outputs are missing), so it runs the task's action again; the
session asks this first, and reports the outcome as pipeline.run.decide would decide it
(`failed (cached)`, or the same skip) without making the plan or computing a key. `doit
explain` asks the same question. Like an up-to-date task, a settled one is not asked again
whether it can run on this machine (Stage.unavailable).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..cache.digest import digest_bytes, digest_file
from ..cache.files import atomic_write, file_identity, read_only, stat_of
from ..vocab import Status
from .intact import changed_outputs, is_output_stats, same_stats

if TYPE_CHECKING:   # (loaded only where a task's last entry is read: settled)
    from .entry import StageEntry


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
    from .entry import StageEntry  # (only when a stat differs: a no-op run never needs it)
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


class KeySources(NamedTuple):
    """What a stage task's key is made of, as the session sees it without a plan: the task's
    watched digest (its params, tool versions and code) and every file its key reads (its
    file_dep and the inputs soft upstreams leave), sorted."""
    watched: str
    files: tuple[str, ...]

    @classmethod
    def of(cls, task) -> KeySources:
        """A doit stage task's."""
        info = task.meta["kiln"]
        return cls(info["watched"], tuple(sorted({*task.file_dep, *info.get("soft_deps", ())})))

    def stats(self) -> dict[str, list | None]:
        """Each file's [size, mtime_ns] now (None: absent)."""
        return {path: stat_of(path) for path in self.files}


def verdict_on(sources: KeySources, inputs: dict[str, list | None],
               cache: dict[str, list] | None = None) -> dict:
    """StageEntry.verdict_on of a settled outcome: the watched digest, the inputs' stats as
    they were when its key was computed (KeySources.stats), and the failure entry's files in the
    cache (Store.failure_files; none for a skip)."""
    return {"watched": sources.watched, "inputs": inputs, "cache": cache or {}}


class Settled(NamedTuple):
    entry: StageEntry          # the outcome, as this run reports it
    log: list[str] | None      # its log's lines, as the runner writes them for it; None when
    # the entry file says it already (then nothing is written: a run after a run like this)


def settled(entry_file: Path, sources: KeySources, cache_root: Path) -> Settled | None:
    """The task's last outcome as this run reports it, when it was settled and nothing it
    was a verdict on has changed (the module's docstring); None otherwise. Reads only.
    cache_root: the local cache this run uses (a failure another cache remembers is not
    this run's)."""
    from .entry import REMEMBERED_WHY, StageEntry, remembered_lines
    entry = StageEntry.load(entry_file)
    held = entry.verdict_on if entry is not None else None
    if not held or held.get("watched") != sources.watched or held.get("inputs") != sources.stats():
        return None
    cache = held.get("cache")
    if not (isinstance(cache, dict) and _still_there(cache.values(), cache_root)):
        return None
    if entry.failed and entry.key and set(cache) == {"entry", "meta"}:
        now = dataclasses.replace(entry, status=Status.CACHED_FAILURE,
                                  why=REMEMBERED_WHY.format(cache="the cache"))
    elif entry.status == Status.SKIPPED and not cache:
        now = entry
    else:
        return None
    # what this run did of it: nothing (as NOT_THIS_RUN says of an up-to-date task)
    now = dataclasses.replace(now, seconds=0.0, tool_seconds=None, warnings=[], remote=None,
                              worker=None)
    if now == entry:
        return Settled(now, None)
    if not now.failed:
        return Settled(now, [])
    log = _remembered_log(cache["meta"][0])
    return None if log is None else Settled(now, remembered_lines(now.why, log))


def _still_there(files, cache_root: Path) -> bool:
    """Whether each [path, identity] is a file of cache_root that is as it was (an entry
    file of another shape, damaged or older: not)."""
    inside = f"{cache_root}{os.sep}"
    return all(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
               and item[0].startswith(inside) and file_identity(item[0]) == item[1]
               for item in files)


def _remembered_log(meta_blob: str) -> str | None:
    """The log a failure entry's metadata blob remembers, when the blob holds what its name
    says (as Store.recall_failure reads it: a damaged one makes the runner run the stage);
    else None."""
    try:
        data = Path(meta_blob).read_bytes()
        if digest_bytes(data) != Path(meta_blob).name:
            return None
        failure = json.loads(data)["failure"]
        return (failure.get("log") or "") if isinstance(failure.get("error"), str) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
