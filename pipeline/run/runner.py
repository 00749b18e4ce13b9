"""Do what pipeline.run.decide decided for one stage node, and record it.

    restore -> copy the outputs from cache/ into build/          status "cached"
    run     -> run the stage in a fresh temp dir, store, install  status "ran"
    skip    -> nothing                                            status "skipped"
    fail    -> nothing (its key could not be computed)            status "failed"
               or its failure with this key, from the cache       status "failed (cached)"

Outputs reach build/ by rename only after the stage succeeded, so build/ never holds a
half-written file; the store is written the same way. A node that fails leaves none of its
outputs in build/, not even an earlier build's. The entry records each output's digest
and stat, so an output damaged or edited in build/ later is noticed (pipeline.run.intact)
and brought back here, with a warning. A stage whose run fails with a verdict on its inputs
(decide.not_a_verdict) is remembered under its key: its error, command, result and log.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .. import process
from ..cache import remote
from ..cache.digest import digest_file
from ..cache.files import UNWRITABLE, atomic_write, describe_os_error
from ..cache.store import Store
from ..plan.layout import Layout
from ..stage import Node, StageContext, StageError, StageSkipped
from ..vocab import Status
from . import machine, warned
from .decide import Decision, decide, not_a_verdict
from .entry import StageEntry, remembered_lines
from .intact import changed_outputs, output_stats
from .uptodate import KeySources, verdict_on

if TYPE_CHECKING:   # (the plan's modules: loaded by whoever made the job)
    from ..plan.tasks import Job


def execute(job: Job, layout: Layout, delegate: Callable[[], dict] | None = None,
            sources: KeySources | None = None) -> StageEntry:
    """Bring job's outputs into build/ (restored or built), as pipeline.run.decide decides,
    and write its record entry.

    On a miss the stage runs here, or, given a delegate (pipeline.run.executor), elsewhere: the
    delegate returns the worker's entry and the outputs come back through the cache.
    sources: what the doit task's key is made of; an outcome settled by it (a failure the cache
    remembers, a skip for an absent input or for an upstream outcome it need not diagnose)
    records it, so that the next run reports that outcome without a plan
    (pipeline.run.uptodate.settled).
    Returns the entry (status failed when the stage failed)."""
    log_lines: list[str] = []
    with process.tool_clock() as tools, warned.into(log_lines):
        entry = _execute(job, layout, delegate, sources, time.perf_counter(), log_lines)
    entry.tool_seconds = round(sum(tools.values()), 3) if tools else None
    _write_entry(layout, job.node, entry, log_lines)
    return entry


def _execute(job: Job, layout: Layout, delegate: Callable[[], dict] | None,
             sources: KeySources | None, started: float, log_lines: list[str]) -> StageEntry:
    """execute's work, but for writing the entry (its log in log_lines)."""
    node = job.node
    entry = StageEntry.of(node)
    store = Store(layout.cache, remote.connect(layout.remote) if layout.remote else None)
    # the inputs as the key will read them (stat first: a file edited meanwhile is a change)
    inputs = sources.stats() if sources is not None else None
    decision = None
    try:
        decision = decide(job, layout, store.find)
        _carry_out(decision, job, layout, store, entry, log_lines, delegate)
    except StageSkipped as skip:
        entry.status, entry.reason = Status.SKIPPED, str(skip)
    except process.Interrupted as err:   # the run is stopping: no verdict, nothing remembered
        entry.status, entry.error = Status.INTERRUPTED, str(err)
    except StageError as err:
        entry.status = Status.CACHED_FAILURE if isinstance(err, FailedBefore) else Status.FAILED
        entry.error, entry.command = str(err), err.command
        entry.result = err.result if err.result is not None else entry.result
        log_lines += [err.log] if err.log else []
    except OSError as err:  # a disk that will not take the write: say which path and why
        entry.status, entry.command = Status.FAILED, None
        entry.error = describe_os_error(err, layout.build) if err.errno in UNWRITABLE else \
            f"{type(err).__name__}: {err}"
        log_lines.append(traceback.format_exc())
    except Exception as err:  # a bug or a framework error: keep the traceback in the log
        entry.status, entry.command = Status.FAILED, None
        entry.error = f"{type(err).__name__}: {err}"
        log_lines.append(traceback.format_exc())
    if entry.failed or entry.unfinished:
        _withdraw(layout, job)
    entry.remote = store.remote_outcome
    entry.warnings = store.warnings
    log_lines += [f"warning: {w}" for w in store.warnings]
    entry.seconds = round(time.perf_counter() - started, 3)
    entry.log = str(layout.log_file(node).relative_to(layout.root))
    if sources is not None and decision is not None:
        entry.verdict_on = _settled_on(sources, inputs, decision, entry, store)
    return entry


def _settled_on(sources: KeySources, inputs: dict, decision: Decision, entry: StageEntry,
                store: Store) -> dict | None:
    """StageEntry.verdict_on for an outcome the key's makings settle: a failure the local
    cache remembers under the key (whether this run found it there or remembered it), or a
    skip for an input an upstream left absent or for an upstream outcome the stage need not
    diagnose (Decision.settles); None for any other."""
    if entry.status == Status.SKIPPED and decision.settles:
        return verdict_on(sources, inputs)
    if entry.failed and entry.key is not None:
        cache = store.failure_files(entry.key)
        return verdict_on(sources, inputs, cache) if cache else None
    return None


def _carry_out(decision: Decision, job: Job, layout: Layout, store: Store, entry: StageEntry,
               log_lines: list[str], delegate: Callable[[], dict] | None) -> None:
    """Do what was decided: a skip or a failure raises (execute records it); a restore, or
    a remembered failure, whose blobs turn out damaged runs instead."""
    if decision.action == "skip":
        raise StageSkipped(decision.why)
    if decision.action == "fail" and not decision.remembered:
        raise StageError(decision.why, log=decision.detail)
    key = decision.key
    entry.key, entry.fingerprint = key, decision.parts
    if decision.remembered:
        failure = store.recall_failure(key, decision.found.entry)
        if failure is not None:
            entry.why = decision.why
            log_lines += remembered_lines(decision.why, failure.get("log") or "")
            raise FailedBefore(failure["error"], failure.get("command"), failure.get("result"))
    out_dir = layout.node_dir(job.node)
    damaged = _damaged_outputs(decision.previous, key, out_dir)
    found = decision.found if decision.action == "restore" else None
    meta = _restore(store, key, found.entry, out_dir, layout) if found is not None else None
    if meta is not None:
        entry.status, entry.result = Status.CACHED, meta.get("result")
        outputs = found.entry["outputs"]
    else:
        entry.why = decision.why if decision.action == "run" else decision.why_it_runs()
        log_lines.append(f"why: {entry.why}")
        if delegate is None:
            meta, outputs = _run(job, layout, key, log_lines, store)
        else:
            meta, outputs = _delegated(delegate, job, key, layout, store, entry, log_lines)
        entry.status, entry.result = Status.RAN, meta.get("result")
    entry.outputs = output_stats(out_dir, outputs)
    done = "restored it from the cache" if entry.status == Status.CACHED else "rebuilt it"
    store.warnings += [f"{_shown(out_dir / rel, layout)} no longer matched what kiln wrote; "
                       f"{done}" for rel in damaged]


def _withdraw(layout: Layout, job: Job) -> None:
    """A failed node's outputs from an earlier build leave build/: what reads them where
    they exist (a pick among variants, a stage that follows a failure) must not take an
    earlier success for this run's (the cache still holds them under their own key)."""
    out_dir = layout.node_dir(job.node)
    for rel in job.stage.outputs(job.model):
        try:
            (out_dir / rel).unlink(missing_ok=True)
        except OSError:   # (a directory, or a disk that refuses: the entry still says failed)
            pass


def _write_entry(layout: Layout, node: Node, entry: StageEntry, log_lines: list[str]) -> None:
    """The log and the record entry; on a disk that will not take them, the entry still
    reaches the reporter in memory, with the reason."""
    try:
        _write_log(layout.log_file(node), entry, log_lines)
        atomic_write(layout.entry_file(node), entry.to_json())
    except OSError as err:
        if err.errno not in UNWRITABLE:
            raise
        entry.warnings.append(f"record entry not written: {describe_os_error(err)}")
        entry.log = None


def _damaged_outputs(previous: StageEntry | None, key: str, out_dir: Path) -> list[str]:
    """Outputs edited or damaged in build/ since this same key was built here (a changed key
    rebuilds them anyway; a missing file is not damage, just absent)."""
    if previous is None or previous.key != key or previous.outputs is None:
        return []
    return [rel for rel in changed_outputs(out_dir, previous.outputs)[0]
            if (out_dir / rel).exists()]


def _shown(path: Path, layout: Layout) -> str:
    return str(path.relative_to(layout.root)) if path.is_relative_to(layout.root) else str(path)


def _restore(store: Store, key: str, cached: dict, out_dir: Path, layout: Layout) -> dict | None:
    """The verified result metadata with the outputs installed, or None (a miss)."""
    with tempfile.TemporaryDirectory(dir=layout.scratch()) as tmp:
        meta = store.restore(key, cached, Path(tmp))
        if meta is not None:
            _install(Path(tmp), list(cached["outputs"]), out_dir, layout)
    return meta


class FailedBefore(StageError):
    """The stage failed with this same key before: that failure (error, command, result,
    log), remembered in the cache, raised instead of running it."""


def _run(job: Job, layout: Layout, key: str, log_lines: list[str],
         store: Store) -> tuple[dict, dict]:
    """Run the stage in a fresh temp dir, store its outputs, install them: (meta, outputs).
    A failure of the stage's own run is remembered under key when it is a verdict on its
    inputs (decide.not_a_verdict)."""
    stage = job.stage
    declared = stage.outputs(job.model)
    ran_from = len(log_lines)   # the lines of this run: what a remembered failure keeps
    with tempfile.TemporaryDirectory(dir=layout.scratch()) as tmp:
        try:
            with machine.shared(layout.cache) as held:   # a timing elsewhere waits for this run
                ctx = StageContext(job.model, job.target,
                                   {n: d for n, (_, d) in job.upstream.items()}, Path(tmp),
                                   log_lines, held,
                                   makers={n: up for n, (up, _) in job.upstream.items()},
                                   store=store)
                result = stage.run(ctx)
            missing = [rel for rel in declared if not (ctx.out / rel).is_file()]
            if missing:
                raise StageError(f"stage {stage.name} did not write {', '.join(missing)}")
        except BaseException as err:
            log_lines.append(_remember(store, key, err, log_lines[ran_from:]))
            raise
        outputs = {rel: digest_file(ctx.out / rel) for rel in declared}
        meta = {"result": result}
        store.save(key, ctx.out, outputs, meta)
        _install(ctx.out, list(declared), layout.node_dir(job.node), layout)
    return meta, outputs


# a remembered failure keeps at most this much of its log: its start and its end
LOG_KEPT = 200_000


def _remember(store: Store, key: str, err: BaseException, lines: list[str]) -> str:
    """Remember the failure of a stage's run under its key when it is a verdict on its
    inputs (replacing what the key held: a failure retry=failed ran again); the line its
    log gets about it. A failure that is no verdict leaves the cache as it was."""
    log = "\n".join([*lines, *([err.log] if isinstance(err, StageError) else [])]).strip()
    why_not = not_a_verdict(err, log)
    if why_not is not None:
        return f"failure not remembered: {why_not}"
    if len(log) > LOG_KEPT:
        cut = len(log) - LOG_KEPT
        log = f"{log[:LOG_KEPT // 2]}\n[... {cut} characters left out ...]\n{log[-LOG_KEPT // 2:]}"
    failure = {"error": str(err), "command": err.command, "result": err.result, "log": log}
    if not store.remember_failure(key, failure):
        return "failure not remembered: the cache was not written"
    return ("failure remembered under its key: the next run reports it without running the "
            "stage (retry=failed runs it again)")


def _delegated(delegate: Callable[[], dict], job: Job, key: str, layout: Layout, store: Store,
               entry: StageEntry, log_lines: list[str]) -> tuple[dict, dict]:
    """The stage ran on a worker: take its verdict (its entry, with its log as "log_text"),
    and its outputs from the cache (verified like any restore). A failure there is this
    stage's failure, never retried (the worker remembered it, or not: its runner decides)."""
    report = delegate()
    theirs = StageEntry.from_dict(report, job.node)
    entry.worker = theirs.worker
    log_lines += [f"ran on worker {theirs.worker}", report.get("log_text", "")]
    store.warnings += theirs.warnings
    store.remote_outcome = theirs.remote or store.remote_outcome   # the worker stored it
    if theirs.status == Status.SKIPPED:
        raise StageSkipped(theirs.reason or "skipped on the worker")
    if theirs.failed:   # (a failure it found remembered stays "failed (cached)" here)
        failure = FailedBefore if theirs.status == Status.CACHED_FAILURE else StageError
        raise failure(theirs.error or "failed on the worker", theirs.command, theirs.result)
    if theirs.key != key:
        raise StageError(f"the worker computed key {str(theirs.key)[:12]}, this machine "
                         f"{key[:12]}: it does not see the same code, inputs or tools (workers "
                         "need this project at the same path and version)")
    out_dir = layout.node_dir(job.node)
    found = store.find(key, job.stage.outputs(job.model))
    meta = _restore(store, key, found.entry, out_dir, layout) if found else None
    if meta is None:
        raise StageError("the worker built this stage but its outputs are not in this machine's "
                         "cache: workers need the same cache (one machine, a shared file system) "
                         "or the remote cache (KILN_REMOTE in write mode on the workers)")
    return meta, found.entry["outputs"]


def _install(src: Path, rels: list[str], out_dir: Path, layout: Layout) -> None:
    """Make out_dir hold exactly rels (moved from src). It removes what is not declared, so
    it refuses any out_dir or output path that would reach outside build/<model>/."""
    build = layout.build.resolve()
    target = out_dir.resolve()
    if not (target.is_relative_to(build) and target != build and
            not target.relative_to(build).parts[0].startswith(".")):
        raise StageError(f"refusing to write {out_dir}: outside {layout.build}")
    for rel in rels:
        if not (target / rel).resolve().is_relative_to(target):
            raise StageError(f"refusing to write output {rel!r}: outside {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    declared = {Path(rel).parts[0] for rel in rels}
    for stale in out_dir.iterdir():
        if stale.name not in declared:
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
    for rel in rels:
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).replace(out_dir / rel)


def _write_log(path: Path, entry: StageEntry, lines: list[str]) -> None:
    atomic_write(path, entry.log_text(lines))
