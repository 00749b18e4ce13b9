"""`doit explain`: what the next run would do to every selected stage, and why, without
running, restoring or writing anything (not build/, not the cache, not .doit.db).

    doit explain model=mlp target=cpu      # the usual model= / target= / matrix= / shard=
    doit explain compile                   # what `doit compile` would do

A task does something in two layers, and explain asks both the way the run would:
1. doit decides whether the task's action runs at all (file_dep content, params and tool
   versions, outputs intact, targets present, a recorded run): explain asks doit's own
   Dependency.get_status, on a read-only copy of .doit.db, as `doit info` does.
2. the action (runner.execute) restores the outputs when the stage's key is in the cache,
   else runs the stage: explain computes the key with runner.compute_key and looks it up
   without touching the store, and says why with runner.explain, the record's own words.

Stages are judged in graph order. An upstream stage that stays up to date leaves its files as
they are; one that would be restored leaves the bytes its cache entry names (known now); one
that would run leaves bytes nobody knows yet: a stage downstream of it that has no reason of
its own is a "maybe" ("waits on lower:mlp@cpu: runs if its outputs change"), kept apart from
the definite list.

It is a doit command plugin (pyproject.toml, [tool.doit.plugins.command]) rather than a task:
a task would be run by `doit run`, which saves its success in .doit.db and lists it among the
tasks; a command reads the same dodo.py and command-line variables and writes nothing.
"""
from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
from doit.cmd_base import DoitCmdBase, check_tasks_exist
from doit.dependency import Dependency, JsonDB, MD5Checker, SqliteDB, get_file_md5
from doit.exceptions import InvalidCommand

from ..cache import probes, remote
from ..cache.digest import digest_file, stage_key
from ..cache.store import Store, _is_whole
from ..plan import memo, tasks as kiln_tasks
from ..plan.layout import Layout
from ..report import record
from ..run.intact import changed_outputs
from ..run.runner import _previous_entry, compute_key, explain as why_ran
from ..run.uptodate import CHECK_SIGNATURE, stage_check
from ..stage import Node, read_files
from .session import _Check

ACTIONS = ("run", "restore", "maybe", "fail")   # what explain lists; "up-to-date" it does not
NO_RECORD = "no earlier run recorded"


@dataclass
class Verdict:
    """What the next run does to one stage task, and what its outputs will then hold."""
    task: str
    action: str                          # run | restore | maybe | fail | up-to-date
    why: str = ""
    known: bool = False     # the bytes its outputs will hold after the run are known now
    digests: dict[str, str] = field(default_factory=dict)   # rel -> sha256 a cache entry names
    files: dict[str, Path] = field(default_factory=dict)    # rel -> a file with those bytes
    # (for a stage that runs: its files now, which is what "if its outputs stay the same" means)


@dataclass
class Explanation:
    verdicts: list[Verdict]
    notes: list[str] = field(default_factory=list)   # e.g. a remote cache that did not answer

    def lines(self) -> list[str]:
        shown = [v for v in self.verdicts if v.action in ACTIONS]
        if not shown:
            return ["nothing to do: every task is up to date"] + [f"note: {n}" for n in self.notes]
        width = max(len(v.task) for v in shown)
        order = {a: i for i, a in enumerate(ACTIONS)}
        out = [f"{v.action:<8}{v.task:<{width}}  {v.why}"
               for v in sorted(shown, key=lambda v: order[v.action])]
        counts = {a: sum(v.action == a for v in self.verdicts) for a in (*ACTIONS, "up-to-date")}
        words = {"run": "run", "restore": "restored from the cache", "maybe": "may run",
                 "fail": "fail before running", "up-to-date": "up to date"}
        out.append(", ".join(f"{counts[a]} {words[a]}" for a in words if counts[a])
                   + " (\"may run\": if what they wait on changes its outputs)"
                   * bool(counts["maybe"]))
        return out + [f"note: {n}" for n in self.notes]


# --- doit's layer, read-only ------------------------------------------------------------

class ReadOnlySqliteDB(SqliteDB):
    """doit's sqlite3 backend opened read-only: a missing file is an empty database (every
    task has no recorded run), and nothing is ever written or created."""

    def _sqlite3(self, name):
        def dict_factory(cursor, row):
            return {col[0]: row[i] for i, col in enumerate(cursor.description)}
        sqlite3.register_converter("json", lambda data: self.codec.decode(data.decode("utf-8")))
        types = sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES
        conn = None
        if Path(name).exists():
            conn = sqlite3.connect(f"{Path(name).resolve().as_uri()}?mode=ro", uri=True,
                                   detect_types=types)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'doit'").fetchone() is None:
                conn.close()
                conn = None
        if conn is None:   # no runs recorded: an empty database in memory
            conn = sqlite3.connect(":memory:", detect_types=types)
            conn.execute("create table doit (task_id text not null primary key, task_data json)")
        conn.row_factory = dict_factory
        return conn

    def set(self, task_id, dependency, value):   # get_status never saves; be sure of it
        pass

    def remove(self, task_id):
        # get_status forgets a task whose file checker changed: in memory only
        self._cache[task_id] = {}

    def dump(self):
        self._conn.close()


class ReadOnlyJsonDB(JsonDB):
    def dump(self):
        pass


READ_ONLY_BACKENDS = {"sqlite3": ReadOnlySqliteDB, "json": ReadOnlyJsonDB}


def read_only_dependency(dep_file: str, backend: str, checker_cls, codec_cls) -> Dependency:
    if backend not in READ_ONLY_BACKENDS:
        raise InvalidCommand(f"doit explain reads the sqlite3 or json backend, not {backend!r}")
    return Dependency(READ_ONLY_BACKENDS[backend], dep_file, checker_cls=checker_cls,
                      codec_cls=codec_cls)


def _check_read_only(task, values) -> bool | None:
    """session's stage check without its writes (the touched-output refresh, the record)."""
    return stage_check(task, values, refresh=False)


_check_read_only.__signature__ = CHECK_SIGNATURE


def _read_only_uptodate(task) -> None:
    """Swap the stage task's check for the read-only one (this process runs nothing)."""
    task.uptodate = [(_check_read_only, args, kwargs) if isinstance(utd, _Check)
                     else (utd, args, kwargs) for utd, args, kwargs in task.uptodate]


# --- the cache, read-only ---------------------------------------------------------------

def lookup(layout: Layout, key: str, expected, notes: list[str]) -> tuple[str, dict | None]:
    """Where the run would find key: ('local', entry) when the local entry is whole and its
    blobs verify (as Store.lookup and Store.restore check them), ('remote', entry) when the
    remote cache has a whole entry, else ('miss', None). Reads only: no last-use mark, no
    discarding a damaged entry, no download of a blob."""
    store = Store(layout.cache)
    expected = set(expected)
    try:
        entry = json.loads(store._entry(key).read_text())
    except (OSError, ValueError):
        entry = None    # absent, or damaged: the run discards it and asks the remote
    if _is_whole(entry, expected):
        # a whole entry with a bad blob: the run discards it and builds (no remote asked)
        return ("local", entry) if _blobs_verify(store, entry) else ("miss", None)
    if layout.remote is None:   # (an entry of another format: the remote too, no warning)
        return "miss", None
    try:
        entry = remote.connect(layout.remote).get_entry(key)
    except (remote.RemoteUnavailable, remote.RemoteError) as err:
        if str(err) not in notes:
            notes.append(str(err))
        return "miss", None
    return ("remote", entry) if _is_whole(entry, expected) else ("miss", None)


def _blobs_verify(store: Store, entry: dict) -> bool:
    if store._verified_meta(entry["meta"]) is None:
        return False
    try:
        return all(digest_file(store._blob(d)) == d for d in entry["outputs"].values())
    except OSError:
        return False


# --- judging one stage ------------------------------------------------------------------

class Judge:
    """Verdicts for a plan's stage tasks, in graph order (each needs its upstream's)."""

    def __init__(self, plan, tasks: dict, dep_manager: Dependency):
        self.plan, self.tasks, self.dep = plan, tasks, dep_manager
        self.verdicts: dict[Node, Verdict] = {}
        self.notes: list[str] = []

    def explain(self, nodes) -> Explanation:
        for node in nx.topological_sort(self.plan.graph.subgraph(nodes)):
            self.verdicts[node] = self.judge(node)
        return Explanation(list(self.verdicts.values()), self.notes)

    def _shown(self, path) -> str:
        path = Path(path)
        root = self.plan.layout.root
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def judge(self, node: Node) -> Verdict:
        task = self.tasks[node.task_name]
        _read_only_uptodate(task)
        reasons = self.dep.get_status(task, self.tasks, get_log=True).reasons
        from_up = {str(f): up for up in self.plan.graph.predecessors(node)
                   for f in kiln_tasks._read_files(self.plan, node, up)}
        waits = sorted({up.task_name for up in from_up.values() if not self.verdicts[up].known})
        missing = [f for f in reasons.get("missing_file_dep", []) if f not in from_up]
        if missing:
            return self._verdict(node, "fail", "missing file: " + ", ".join(
                self._shown(f) for f in missing) + " (doit stops it)")
        own = self._own_reasons(task, reasons, from_up)
        changed_inputs = [f for f, up in from_up.items() if self.verdicts[up].known
                          and self._input_changes(task, f, up, reasons)]
        if not own and not changed_inputs:
            if waits:
                return self._verdict(node, "maybe", f"{_waits(waits)}: runs if "
                                     f"{'its' if len(waits) == 1 else 'their'} outputs change")
            return self._verdict(node, "up-to-date", known=True)
        doit_why = own if own == [NO_RECORD] else \
            own + [f"changed file: {self._shown(f)}" for f in changed_inputs]
        return self._runner_verdict(node, doit_why, waits)

    def _verdict(self, node: Node, action: str, why: str = "", known: bool = False,
                 digests: dict | None = None, files: dict | None = None) -> Verdict:
        if files is None:   # its files in build/ now
            out_dir, data = self.plan.layout.node_dir(node), self.plan.graph.nodes[node]
            files = {rel: out_dir / rel for rel in data["stage"].outputs(data["model"])}
        return Verdict(node.task_name, action, why, known, digests or {}, files)

    def _own_reasons(self, task, reasons, from_up) -> list[str]:
        """doit's reasons that do not hang on what upstream stages do, in words."""
        if self.dep._get(task.name, "deps:") is None:
            return [NO_RECORD]   # (then every file counts as changed: saying so adds nothing)
        words = []
        for utd, _, _ in reasons.get("uptodate_false", []):
            values = self.dep.get_values(task.name)
            if utd is not _check_read_only:
                words.append(f"{utd!r} says it is not up to date")
            elif "watched" not in values:
                words.append("no record of its params (its last run failed, or an older kiln "
                             "ran it)")
            elif values["watched"] != task.meta["kiln"]["watched"]:
                words.append("changed params or tool versions")
            else:   # (inputs a variant leaves are judged with their stage: _input_changes)
                out_dir = Path(task.meta["kiln"]["out_dir"])
                recorded = (values.get("entry") or {}).get("outputs") or {}
                words += [f"output {self._shown(out_dir / rel)} no longer matches what kiln wrote"
                          for rel in changed_outputs(out_dir, recorded)[0]
                          if (out_dir / rel).exists()]
        words += [f"output {self._shown(t)} is missing" for t in reasons.get("missing_target", [])]
        if reasons.get("checker_changed"):
            words.append("doit's file checker changed")
        if reasons.get("added_file_dep") or reasons.get("removed_file_dep"):
            words.append("its list of input files changed")
        words += [f"changed file: {self._shown(f)}" for f in reasons.get("changed_file_dep", [])
                  if f not in from_up]
        return words

    def _input_changes(self, task, dep: str, up: Node, reasons) -> bool:
        """Whether doit will see file dep (an output of up, whose bytes are known) changed
        once up is done, as MD5Checker.check_modified would judge it then; for an input a
        variant among several leaves (soft), as the session's check will: by digest."""
        verdict = self.verdicts[up]
        if dep in (task.meta["kiln"].get("soft_deps") or ()):
            recorded = (self.dep.get_values(task.name).get("soft_inputs") or {}).get(dep)
            rel = str(Path(dep).relative_to(self.plan.layout.node_dir(up)))
            try:
                now = self._digest(up, rel) if verdict.action != "up-to-date" or \
                    Path(dep).exists() else None
            except OSError:
                now = None
            return (recorded or [None])[0] != now
        if verdict.action == "up-to-date":
            return dep in reasons.get("changed_file_dep", [])
        rel = str(Path(dep).relative_to(self.plan.layout.node_dir(up)))
        state = self.dep._get(task.name, dep)
        if state is None or not isinstance(self.dep.checker, MD5Checker):
            return True   # (a restored file has a new mtime: a timestamp checker sees a change)
        blob = verdict.files.get(rel)
        if blob is not None and blob.is_file():   # a restored file's mtime is new: size, then md5
            return blob.stat().st_size != state[1] or get_file_md5(blob) != state[2]
        # the blob is on the remote only: the same bytes as the file doit already accepts
        with contextlib.suppress(OSError):
            if dep not in reasons.get("changed_file_dep", []):
                return digest_file(dep) != verdict.digests[rel]
        return True

    def _digest(self, up: Node, rel: str) -> str:
        """sha256 of what up's output rel will hold; for an upstream that runs first, what
        it holds now. FileNotFoundError when there is nothing to go on."""
        verdict = self.verdicts[up]
        return verdict.digests.get(rel) or digest_file(verdict.files[rel])

    def key(self, node: Node) -> tuple[str, dict]:
        """runner.compute_key, with each upstream output's digest as it will be when node's
        turn comes (a restored upstream's from its cache entry: no bytes are fetched)."""
        data = self.plan.graph.nodes[node]
        stage, model, target = data["stage"], data["model"], data["target"]
        _, parts = compute_key(stage, model, target, {}, kiln_tasks.is_entry(self.plan, node))
        by_dir = {self.plan.layout.node_dir(up): up for up in self.plan.graph.predecessors(node)}
        for name, (up_stage, up_dir) in kiln_tasks.upstream_of(self.plan, node).items():
            for rel in read_files(stage, model, target, name, up_stage):
                parts["inputs"][f"{name}/{rel}"] = self._digest(by_dir[up_dir], rel)
        return stage_key(stage.name, **parts), parts

    def _runner_verdict(self, node: Node, doit_why: list[str], waits: list[str]) -> Verdict:
        """doit runs the action: would the runner restore (key in the cache) or run?"""
        stage = self.plan.graph.nodes[node]["stage"]
        model = self.plan.graph.nodes[node]["model"]
        previous = _previous_entry(self.plan.layout.entry_file(node))
        try:
            key, parts = self.key(node)
        except FileNotFoundError as err:
            # an input not there yet: it comes from a stage that runs first. Never built
            # here, it runs (unless another checkout stored this very key meanwhile)
            soft = [w for w in waits if self.plan.graph.nodes[self.plan.nodes_by_task[w]]["soft"]]
            if soft:   # a variant's stage that may fail again, leaving nothing to read
                return self._verdict(node, "maybe", f"{_waits(waits)}: runs if "
                                     f"{'it makes' if len(waits) == 1 else 'they make'} its inputs")
            if waits and not previous.get("fingerprint"):
                return self._verdict(node, "run", f"{why_ran(None, {})} (after {', '.join(waits)})")
            return self._verdict(node, "maybe", f"{_waits(waits)}: runs unless the cache has "
                                 f"what it then reads" if waits else f"cannot read {err.filename}")
        where, entry = lookup(self.plan.layout, key, stage.outputs(model), self.notes)
        if where == "miss":
            why = why_ran(previous.get("fingerprint"), parts, previous.get("status"))
            if waits:
                its = "its" if len(waits) == 1 else "their"
                why += f" (and inputs, if {', '.join(waits)} change{'s' * (len(waits) == 1)} {its} outputs)"
            return self._verdict(node, "run", why)
        if waits:
            return self._verdict(node, "maybe", f"{_waits(waits)}: restored from the cache if "
                                 f"{'its' if len(waits) == 1 else 'their'} outputs stay the "
                                 "same, else runs")
        found = "key in the cache" if where == "local" else "key in the remote cache"
        # which part of the key differs from the last build here (a reverted flag), in the
        # record's words; else doit's reason (no recorded run, a damaged output)
        changed = why_ran(previous.get("fingerprint"), parts) if previous.get("fingerprint") else ""
        why = changed if changed.startswith("changed ") else "; ".join(doit_why)
        store = Store(self.plan.layout.cache)
        return self._verdict(node, "restore", f"{found} ({why})", known=True,
                             digests=dict(entry["outputs"]),
                             files={rel: store._blob(d) for rel, d in entry["outputs"].items()})


def _waits(waits: list[str]) -> str:
    return f"waits on {', '.join(waits)}"


# --- the command --------------------------------------------------------------------------

def selected_nodes(plan, tasks: dict, names: list[str]) -> set[Node]:
    """The stage nodes `doit <names>` would reach: the named tasks, the subtasks of groups
    (validate, compile), and every stage they read from."""
    by_name = {n.task_name: n for n in plan.graph}
    nodes, seen, todo = set(), set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in by_name:
            nodes.add(by_name[name])
        todo += tasks[name].task_dep
    for node in list(nodes):
        nodes |= nx.ancestors(plan.graph, node)
    return nodes


def _write_nothing() -> None:
    """What loading dodo.py writes, skipped in this process: remembered tool answers
    (build/.kiln/tool-probes.json: without it tools are asked again, never wrongly), the plan
    memo (the plan is made again next run) and the failed-run record a bad command line
    leaves (the error still stops explain)."""
    probes._write_probes = lambda path, entries: None
    record.write_failed_run = lambda run_file, error: None
    memo.save = lambda *args, **kwargs: None


class _NotOpened:
    """Stands in for doit's dependency manager while the tasks load: DoitCmdBase would open
    .doit.db for writing (creating it when absent)."""


class Explain(DoitCmdBase):
    doc_purpose = "say what the next run would do to each stage and why, running nothing"
    doc_usage = "[TASK ...] [model=...] [target=...] [matrix=...]"
    doc_description = ("For each stage task: run (with the record's 'why'), restore (key in the "
                       "cache), or maybe (waits on a stage that runs first). Writes nothing.")
    cmd_options = ()

    def execute(self, params, args):
        self.dep_manager = _NotOpened()
        _write_nothing()
        return super().execute(params, args)

    def _execute(self, pos_args, dep_file, backend, check_file_uptodate, codec_cls):
        session = self.loader.namespace.get("SESSION")
        if session is None:
            raise InvalidCommand("doit explain needs kiln's dodo.py (it reads its SESSION)")
        plan = session.plan()
        dep = read_only_dependency(dep_file, backend, self.get_checker_cls(check_file_uptodate),
                                   self.get_codec_cls(codec_cls))
        try:
            tasks = {t.name: t for t in self.task_list}
            check_tasks_exist(tasks, self.sel_tasks)
            nodes = selected_nodes(plan, tasks, list(self.sel_tasks or []))
            explanation = Judge(plan, tasks, dep).explain(nodes)
        finally:
            with contextlib.suppress(sqlite3.Error):
                dep.close()
        self.outstream.write("\n".join(explanation.lines()) + "\n")
        return 0
