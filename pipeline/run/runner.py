"""Run one stage node: the single place where a cache hit is restored instead of running.

    key = hash(stage, code, params, input digests, tool versions)
    hit  -> copy the outputs from cache/ into build/          status "cached"
    miss -> run the stage in a fresh temp dir, store, install  status "ran"

Outputs reach build/ by rename only after the stage succeeded, so build/ never holds a
half-written file; the store is written the same way. The entry records each output's digest
and stat, so an output damaged or edited in build/ later is noticed (pipeline.run.intact)
and brought back here, with a warning.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from ..cache import remote
from ..cache.digest import digest_file, digest_source, stage_key
from ..cache.files import UNWRITABLE, atomic_write, describe_os_error
from ..cache.probes import tool_version
from ..cache.store import Store
from ..plan.layout import Layout
from ..stage import ModelSpec, Node, Stage, StageContext, StageError, StageSkipped, Target, read_files
from . import machine
from .intact import changed_outputs, output_stats


def code_fingerprint(files) -> dict[str, str]:
    # keyed by 'dir/name', not the absolute path: a clone elsewhere must get the same key
    return {f"{Path(f).parent.name}/{Path(f).name}": digest_file(f) for f in files}


def input_digests(stage: Stage, model: ModelSpec, target: Target | None,
                  upstream: dict[str, tuple[Stage, Path]], first: bool) -> dict[str, str]:
    digests = {}
    for name, (up_stage, up_dir) in sorted(upstream.items()):
        for rel in read_files(stage, model, target, name, up_stage):
            if stage.partial_inputs and not (up_dir / rel).is_file():
                digests[f"{name}/{rel}"] = "absent"   # a variant that failed: none to read
                continue
            digests[f"{name}/{rel}"] = digest_file(up_dir / rel)
    if first:  # the stage a model enters at reads the model's own files
        for role, path in sorted(model.sources.items()):
            digests[f"source:{role}"] = digest_source(path)
    return digests


def compute_key(stage, model, target, upstream, first) -> tuple[str, dict]:
    parts = {
        "code": code_fingerprint(stage.code_files(model)),
        "params": stage.params(model, target),
        "inputs": input_digests(stage, model, target, upstream, first),
        "tools": {t: tool_version(t) for t in stage.tools(model)},
    }
    return stage_key(stage.name, **parts), parts


def _check_inputs_present(stage, model, target, upstream) -> None:
    """doit runs a stage only when its inputs exist, except after a variant's stage failed
    (its failure is recorded, the others go on): then the rest of that variant is skipped."""
    if stage.partial_inputs:
        return
    for name, (up_stage, up_dir) in sorted(upstream.items()):
        for rel in read_files(stage, model, target, name, up_stage):
            if not (up_dir / rel).is_file():
                raise StageSkipped(f"skipped: {name} has no {rel} (it failed or was skipped)")


def execute(node: Node, stage: Stage, model: ModelSpec, target: Target | None,
            upstream: dict[str, tuple[Stage, Path]], layout: Layout, first: bool,
            delegate: Callable[[], dict] | None = None) -> dict:
    """Bring node's outputs into build/ (restored or built) and write its record entry.

    On a miss the stage runs here, or, given a delegate (pipeline.executor), elsewhere: the
    delegate returns the worker's entry and the outputs come back through the cache.
    Returns the entry (status failed when the stage failed)."""
    started = time.perf_counter()
    entry = {"task": node.task_name, "stage": node.stage, "model": node.model,
             "target": node.target, "key": None}
    log_lines: list[str] = []
    store = Store(layout.cache, remote.connect(layout.remote) if layout.remote else None)
    out_dir = layout.node_dir(node)
    previous = _previous_entry(layout.entry_file(node))
    try:
        _check_inputs_present(stage, model, target, upstream)
        key, parts = compute_key(stage, model, target, upstream, first)
        entry.update(key=key, fingerprint=parts)
        damaged = _damaged_outputs(previous, key, out_dir)
        cached = store.lookup(key, stage.outputs(model))
        meta = _restore(store, key, cached, out_dir, layout) if cached else None
        if meta is not None:
            entry.update(status="cached", **_meta_fields(meta))
            outputs = cached["outputs"]
        else:
            entry["why"] = explain(previous.get("fingerprint"), parts, previous.get("status"))
            log_lines.append(f"why: {entry['why']}")
            if delegate is None:
                meta, outputs = _run(stage, model, target, upstream, layout, node, key,
                                     log_lines, store)
            else:
                meta, outputs = _delegated(delegate, store, key, stage.outputs(model), out_dir,
                                           layout, entry, log_lines)
            entry.update(status="ran", **_meta_fields(meta))
        entry["outputs"] = output_stats(out_dir, outputs)
        done = "restored it from the cache" if entry["status"] == "cached" else "rebuilt it"
        store.warnings += [f"{_shown(out_dir / rel, layout)} no longer matched what kiln wrote; "
                           f"{done}" for rel in damaged]
    except StageSkipped as skip:
        entry.update(status="skipped", reason=str(skip))
    except StageError as err:
        entry.update(status="failed", error=str(err), command=err.command)
        if err.result is not None:
            entry["result"] = err.result
        log_lines += [err.log] if err.log else []
    except OSError as err:  # a disk that will not take the write: say which path and why
        error = describe_os_error(err, layout.build) if err.errno in UNWRITABLE else \
            f"{type(err).__name__}: {err}"
        entry.update(status="failed", error=error, command=None)
        log_lines.append(traceback.format_exc())
    except Exception as err:  # a bug or a framework error: keep the traceback in the log
        entry.update(status="failed", error=f"{type(err).__name__}: {err}", command=None)
        log_lines.append(traceback.format_exc())
    if store.remote_outcome:
        entry["remote"] = store.remote_outcome
    if store.warnings:
        entry["warnings"] = store.warnings
        log_lines += [f"warning: {w}" for w in store.warnings]
    entry["seconds"] = round(time.perf_counter() - started, 3)
    entry["log"] = str(layout.log_file(node).relative_to(layout.root))
    _write_entry(layout, node, entry, log_lines)
    return entry


def _write_entry(layout: Layout, node: Node, entry: dict, log_lines: list[str]) -> None:
    """The log and the record entry; on a disk that will not take them, the entry still
    reaches the reporter in memory, with the reason."""
    try:
        _write_log(layout.log_file(node), entry, log_lines)
        atomic_write(layout.entry_file(node), json.dumps(entry, indent=1).encode())
    except OSError as err:
        if err.errno not in UNWRITABLE:
            raise
        entry.setdefault("warnings", []).append(f"record entry not written: {describe_os_error(err)}")
        entry["log"] = None


def _damaged_outputs(previous: dict, key: str, out_dir: Path) -> list[str]:
    """Outputs edited or damaged in build/ since this same key was built here (a changed key
    rebuilds them anyway; a missing file is not damage, just absent)."""
    if previous.get("key") != key or not isinstance(previous.get("outputs"), dict):
        return []
    return [rel for rel in changed_outputs(out_dir, previous["outputs"])[0]
            if (out_dir / rel).exists()]


def _shown(path: Path, layout: Layout) -> str:
    return str(path.relative_to(layout.root)) if path.is_relative_to(layout.root) else str(path)


def _previous_entry(entry_file: Path) -> dict:
    try:
        entry = json.loads(entry_file.read_text())
    except (OSError, ValueError):
        return {}
    return entry if isinstance(entry, dict) else {}


def explain(before: dict | None, now: dict, last_status: str | None = None) -> str:
    """Why a stage had to run: which part of its key differs from its last build here."""
    if not before:
        return "no earlier build of this stage here and none in the cache"
    changes = []
    for part in ("code", "params", "inputs", "tools"):
        old, new = before.get(part) or {}, now[part]
        names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        if names:
            changes.append(f"{part}: {', '.join(names)}")
    if changes:
        return "changed " + "; ".join(changes)
    if last_status == "failed":
        return "its last run failed with this same key (a failure is not cached)"
    return "key unchanged but not in the cache (cleared, or another store)"


def _meta_fields(meta: dict) -> dict:
    return {"result": meta["result"]} if meta.get("result") is not None else {}


def _restore(store: Store, key: str, cached: dict, out_dir: Path, layout: Layout) -> dict | None:
    """The verified result metadata with the outputs installed, or None (a miss)."""
    with tempfile.TemporaryDirectory(dir=layout.scratch()) as tmp:
        meta = store.restore(key, cached, Path(tmp))
        if meta is not None:
            _install(Path(tmp), list(cached["outputs"]), out_dir, layout)
    return meta


def _run(stage, model, target, upstream, layout, node, key, log_lines, store):
    with tempfile.TemporaryDirectory(dir=layout.scratch()) as tmp:
        with machine.shared(layout.cache) as held:   # a timing elsewhere waits for this run
            ctx = StageContext(model, target, {n: d for n, (_, d) in upstream.items()},
                               Path(tmp), log_lines, held)
            result = stage.run(ctx)
        declared = stage.outputs(model)
        missing = [rel for rel in declared if not (ctx.out / rel).is_file()]
        if missing:
            raise StageError(f"stage {stage.name} did not write {', '.join(missing)}")
        outputs = {rel: digest_file(ctx.out / rel) for rel in declared}
        meta = {"result": result}
        store.save(key, ctx.out, outputs, meta)
        _install(ctx.out, list(declared), layout.node_dir(node), layout)
    return meta, outputs


def _delegated(delegate, store: Store, key: str, declared, out_dir: Path, layout: Layout,
               entry: dict, log_lines: list[str]) -> tuple[dict, dict]:
    """The stage ran on a worker: take its verdict, and its outputs from the cache (verified
    like any restore). A failure there is this stage's failure, never retried."""
    theirs = delegate()
    entry["worker"] = theirs.get("worker")
    log_lines += [f"ran on worker {entry['worker']}", theirs.get("log_text", "")]
    store.warnings += theirs.get("warnings", [])
    store.remote_outcome = theirs.get("remote") or store.remote_outcome   # the worker stored it
    if theirs.get("status") == "skipped":
        raise StageSkipped(theirs.get("reason") or "skipped on the worker")
    if theirs.get("status") == "failed":
        raise StageError(theirs.get("error") or "failed on the worker", theirs.get("command"),
                         theirs.get("result"))
    if theirs.get("key") != key:
        raise StageError(f"the worker computed key {str(theirs.get('key'))[:12]}, this machine "
                         f"{key[:12]}: it does not see the same code, inputs or tools (workers "
                         "need this project at the same path and version)")
    cached = store.lookup(key, declared)
    meta = _restore(store, key, cached, out_dir, layout) if cached else None
    if meta is None:
        raise StageError("the worker built this stage but its outputs are not in this machine's "
                         "cache: workers need the same cache (one machine, a shared file system) "
                         "or the remote cache (KILN_REMOTE in write mode on the workers)")
    return meta, cached["outputs"]


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


def _write_log(path: Path, entry: dict, lines: list[str]) -> None:
    head = [f"task: {entry['task']}", f"status: {entry.get('status')}", f"key: {entry['key']}"]
    if entry.get("error"):
        head.append(f"error: {entry['error']}")
    if entry.get("command"):
        head.append(f"command: {entry['command']}")
    atomic_write(path, ("\n".join(head + [""] + lines) + "\n").encode())
