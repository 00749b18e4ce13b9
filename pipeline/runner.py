"""Run one stage node: the single place where a cache hit is restored instead of running.

    key = hash(stage, code, params, input digests, tool versions)
    hit  -> copy the outputs from cache/ into build/          status "cached"
    miss -> run the stage in a fresh temp dir, store, install  status "ran"

Outputs reach build/ by rename only after the stage succeeded, so build/ never holds a
half-written file; the store is written the same way.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from . import keys
from .config import Target
from .stage import ModelSpec, Node, Stage, StageContext, StageError, StageSkipped
from .store import Store, atomic_write


@dataclass(frozen=True)
class Layout:
    """Where a project's files go."""
    root: Path       # the project (where targets.yaml is)
    build: Path
    cache: Path

    def node_dir(self, node: Node) -> Path:
        parts = [node.model] + ([node.target] if node.target else []) + [node.stage]
        return self.build.joinpath(*parts)

    def entry_file(self, node: Node) -> Path:
        return self.build / ".kiln" / "tasks" / f"{_safe(node.task_name)}.json"

    def scratch(self) -> Path:
        """Temp space inside build/, so installing an output is a rename, never a copy."""
        path = self.build / ".tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_file(self, node: Node) -> Path:
        return self.build / "logs" / f"{_safe(node.task_name)}.log"


def _safe(task_name: str) -> str:
    # 'lower:mlp@cpu' -> 'lower.mlp@cpu': stage names hold no '.', targets no '@', so no clash
    return task_name.replace(":", ".", 1).replace("/", "_")


def code_fingerprint(files) -> dict[str, str]:
    # keyed by 'dir/name', not the absolute path: a clone elsewhere must get the same key
    return {f"{Path(f).parent.name}/{Path(f).name}": keys.digest_file(f) for f in files}


def read_files(stage: Stage, model: ModelSpec, target: Target | None, name: str,
               up_stage: Stage) -> tuple[str, ...]:
    """The upstream outputs stage reads (name is 'lower' or a peer's 'validate@cpu')."""
    return stage.reads(name.split("@")[0], up_stage.outputs(model), model, target)


def input_digests(stage: Stage, model: ModelSpec, target: Target | None,
                  upstream: dict[str, tuple[Stage, Path]], first: bool) -> dict[str, str]:
    digests = {}
    for name, (up_stage, up_dir) in sorted(upstream.items()):
        for rel in read_files(stage, model, target, name, up_stage):
            digests[f"{name}/{rel}"] = keys.digest_file(up_dir / rel)
    if first:  # the stage a model enters at reads the model's own files
        for role, path in sorted(model.sources.items()):
            digests[f"source:{role}"] = keys.digest_source(path)
    return digests


def compute_key(stage, model, target, upstream, first) -> tuple[str, dict]:
    parts = {
        "code": code_fingerprint(stage.code_files(model)),
        "params": stage.params(model, target),
        "inputs": input_digests(stage, model, target, upstream, first),
        "tools": {t: keys.tool_version(t) for t in stage.tools(model)},
    }
    return keys.stage_key(stage.name, **parts), parts


def execute(node: Node, stage: Stage, model: ModelSpec, target: Target | None,
            upstream: dict[str, tuple[Stage, Path]], layout: Layout, first: bool) -> dict:
    """Bring node's outputs into build/ (restored or built) and write its record entry.

    Returns the entry; raises StageError (with the entry written) when the stage fails."""
    started = time.perf_counter()
    entry = {"task": node.task_name, "stage": node.stage, "model": node.model,
             "target": node.target, "key": None}
    log_lines: list[str] = []
    store = Store(layout.cache)
    try:
        key, parts = compute_key(stage, model, target, upstream, first)
        entry.update(key=key, fingerprint=parts)
        cached = store.lookup(key)
        if cached and _restore(store, key, cached, layout.node_dir(node), layout):
            entry.update(status="cached", **_meta_fields(cached["meta"]))
        else:
            entry["why"] = explain(_previous_fingerprint(layout.entry_file(node)), parts)
            log_lines.append(f"why: {entry['why']}")
            meta = _run(stage, model, target, upstream, layout, node, key, log_lines, store)
            entry.update(status="ran", **_meta_fields(meta))
    except StageSkipped as skip:
        entry.update(status="skipped", reason=str(skip))
    except StageError as err:
        entry.update(status="failed", error=str(err), command=err.command)
        if err.result is not None:
            entry["result"] = err.result
        log_lines += [err.log] if err.log else []
    except Exception as err:  # a bug or a framework error: keep the traceback in the log
        entry.update(status="failed", error=f"{type(err).__name__}: {err}", command=None)
        log_lines.append(traceback.format_exc())
    if store.warnings:
        entry["warnings"] = store.warnings
        log_lines += [f"warning: {w}" for w in store.warnings]
    entry["seconds"] = round(time.perf_counter() - started, 3)
    _write_log(layout.log_file(node), entry, log_lines)
    entry["log"] = str(layout.log_file(node).relative_to(layout.root))
    atomic_write(layout.entry_file(node), json.dumps(entry, indent=1).encode())
    return entry


def _previous_fingerprint(entry_file: Path) -> dict | None:
    try:
        return json.loads(entry_file.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def explain(before: dict | None, now: dict) -> str:
    """Why a stage had to run: which part of its key differs from its last build here."""
    if not before:
        return "no earlier build of this stage here and none in the cache"
    changes = []
    for part in ("code", "params", "inputs", "tools"):
        old, new = before.get(part) or {}, now[part]
        names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        if names:
            changes.append(f"{part}: {', '.join(names)}")
    return ("changed " + "; ".join(changes)) if changes else \
        "key unchanged but not in the cache (cleared, or another store)"


def _meta_fields(meta: dict) -> dict:
    return {"result": meta["result"]} if meta.get("result") is not None else {}


def _restore(store: Store, key: str, cached: dict, out_dir: Path, layout: Layout) -> bool:
    with tempfile.TemporaryDirectory(dir=layout.scratch()) as tmp:
        if not store.restore(key, cached, Path(tmp)):
            return False
        _install(Path(tmp), list(cached["outputs"]), out_dir)
    return True


def _run(stage, model, target, upstream, layout, node, key, log_lines, store) -> dict:
    with tempfile.TemporaryDirectory(dir=layout.scratch()) as tmp:
        ctx = StageContext(model, target, {n: d for n, (_, d) in upstream.items()}, Path(tmp),
                           log_lines)
        result = stage.run(ctx)
        declared = stage.outputs(model)
        missing = [rel for rel in declared if not (ctx.out / rel).is_file()]
        if missing:
            raise StageError(f"stage {stage.name} did not write {', '.join(missing)}")
        outputs = {rel: keys.digest_file(ctx.out / rel) for rel in declared}
        meta = {"result": result}
        store.save(key, ctx.out, outputs, meta)
        _install(ctx.out, list(declared), layout.node_dir(node))
    return meta


def _install(src: Path, rels: list[str], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if stale.name not in rels:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
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
