"""`doit explain`: what the next run would do to every selected stage, and why, without
running, restoring or writing anything (not build/, not the cache, not .doit.db).

    doit explain model=mlp target=cpu      # the usual model= / target= / matrix= / shard=
    doit explain compile                   # what `doit compile` would do

A task does something in two layers, and explain asks both the way the run would:
1. doit decides whether the task's action runs at all (file_dep content, params and tool
   versions, outputs intact, targets present, a recorded run): explain asks doit's own
   Dependency.get_status, on .doit.db opened read-only, as `doit info` does.
2. the action (runner.execute) does what pipeline.run.decide decides: skip (no device for
   it here, an input a failed stage left absent), restore (its key is in the cache), fail
   (its failure with this key is remembered in the cache, or its key cannot be computed)
   or run.
   explain calls that same decide, with a lookup that only reads and the input digests it
   predicts, and never acts; its "why" is the record's own words.
   Before the runner, the session reports a settled outcome as it stands (a failure the
   cache remembers, a skip for an absent input, with nothing they were a verdict on
   changed: pipeline.run.uptodate.settled); explain asks the session that same question.

Stages are judged in graph order. An upstream stage that stays up to date, is skipped, or
fails (again: its last run failed with this same key) leaves its files as they are; one that
would be restored leaves the bytes its cache entry names (known now); one that would run
leaves bytes nobody knows yet: a stage downstream of it that has no reason of its own is a
"maybe" ("waits on lower:mlp@cpu: runs if its outputs change"), kept apart from the definite
list. A stage whose file_dep a failing or skipped stage leaves absent is never run by doit:
"skip" (the record says "an upstream stage failed").

It is a doit command plugin (pyproject.toml, [tool.doit.plugins.command]) rather than a task:
a task would be run by `doit run`, which saves its success in .doit.db and lists it among the
tasks; a command reads the same dodo.py and command-line variables and writes nothing.
"""
from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
from doit.cmd_base import DoitCmdBase, check_tasks_exist
from doit.dependency import Dependency, JsonDB, MD5Checker, get_file_md5
from doit.exceptions import InvalidCommand

from ..cache import remote
from ..cache.digest import digest_file
from ..cache.files import set_read_only
from ..cache.store import Found, Store
from ..plan.tasks import input_files
from ..run.decide import NOT_NEEDED, Decision, decide, why_run
from ..run.entry import StageEntry
from ..run.intact import changed_outputs
from ..run.uptodate import Settled
from ..stage import Node
from ..vocab import Status
from . import database
from .session import StageCheck

ACTIONS = ("run", "restore", "skip", "maybe", "fail")   # what explain lists; not "up-to-date"
NO_RECORD = "no earlier run recorded"


@dataclass
class Forecast:
    """What the next run does to one stage task, and what its outputs will then hold."""
    task: str
    action: str                          # run | restore | skip | maybe | fail | up-to-date
    why: str = ""
    known: bool = False     # the bytes its outputs will hold after the run are known now
    digests: dict[str, str] = field(default_factory=dict)   # rel -> sha256 a cache entry names
    files: dict[str, Path] = field(default_factory=dict)    # rel -> a file with those bytes
    # (for a stage that runs: its files now, which is what "if its outputs stay the same" means)
    fails: bool = False     # it ends failed (doit then stops the stages that need its files)


@dataclass
class Explanation:
    forecasts: list[Forecast]
    notes: list[str] = field(default_factory=list)   # e.g. a remote cache that did not answer

    def lines(self) -> list[str]:
        shown = [v for v in self.forecasts if v.action in ACTIONS]
        if not shown:
            return ["nothing to do: every task is up to date"] + [f"note: {n}" for n in self.notes]
        width = max(len(v.task) for v in shown)
        order = {a: i for i, a in enumerate(ACTIONS)}
        out = [f"{v.action:<8}{v.task:<{width}}  {v.why}"
               for v in sorted(shown, key=lambda v: order[v.action])]
        counts = {a: sum(v.action == a for v in self.forecasts)
                  for a in (*ACTIONS, Status.UP_TO_DATE)}
        words = {"run": "run", "restore": "restored from the cache", "skip": Status.SKIPPED,
                 "maybe": "may run", "fail": "fail before running", "up-to-date": "up to date"}
        out.append(", ".join(f"{counts[a]} {words[a]}" for a in words if counts[a])
                   + " (\"may run\": if what they wait on changes its outputs)"
                   * bool(counts["maybe"]))
        return out + [f"note: {n}" for n in self.notes]


# --- doit's layer, read-only ------------------------------------------------------------

class ReadOnlySqliteDB:
    """doit's sqlite3 backend, read-only: the table doit keeps (task_id -> the task's state as
    JSON), opened with mode=ro. A missing file, one without that table, or a damaged one (as
    pipeline.driver.database judges it: the run then moves it aside) reads as empty, every
    task with no recorded run. Nothing is ever written or created."""

    def __init__(self, name, codec, *, module_name=None):
        self.name, self.codec = name, codec
        self._tasks: dict[str, dict] = {}   # task -> its state, read on first use
        self._conn = None
        path = Path(name)
        if path.exists() and database.damage(path) is None:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'doit'").fetchone():
                self._conn = conn
            else:
                conn.close()

    def _task(self, task_id: str) -> dict:
        if task_id not in self._tasks:
            row = None if self._conn is None else self._conn.execute(
                "SELECT task_data FROM doit WHERE task_id = ?", (task_id,)).fetchone()
            self._tasks[task_id] = self.codec.decode(row[0]) if row else {}
        return self._tasks[task_id]

    def get(self, task_id, dependency):
        return self._task(task_id).get(dependency)

    def in_(self, task_id) -> bool:
        return bool(self._task(task_id))

    def set(self, task_id, dependency, value):   # get_status never saves; be sure of it
        pass

    def remove(self, task_id):
        # get_status forgets a task whose file checker changed: in memory only
        self._tasks[task_id] = {}

    def remove_all(self):
        self._tasks = {}
        self.dump()

    def dump(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ReadOnlyJsonDB(JsonDB):
    def dump(self):
        pass


READ_ONLY_BACKENDS = {"sqlite3": ReadOnlySqliteDB, "json": ReadOnlyJsonDB}


def read_only_dependency(dep_file: str, backend: str, checker_cls, codec_cls) -> Dependency:
    if backend not in READ_ONLY_BACKENDS:
        raise InvalidCommand(f"doit explain reads the sqlite3 or json backend, not {backend!r}")
    return Dependency(READ_ONLY_BACKENDS[backend], dep_file, checker_cls=checker_cls,
                      codec_cls=codec_cls)


# --- judging one stage ------------------------------------------------------------------

class NotKnown(Exception):
    """An input a stage reads is not there yet: a stage that runs first makes it."""


class Judge:
    """Forecasts for a plan's stage tasks, in graph order (each needs its upstream's).
    settled: the session's own question, asked before the runner's (Session.settled)."""

    def __init__(self, plan, tasks: dict, dep_manager: Dependency,
                 settled: Callable[[object], Settled | None] = lambda task: None):
        self.plan, self.tasks, self.dep = plan, tasks, dep_manager
        self.settled = settled
        self.forecasts: dict[Node, Forecast] = {}
        layout = plan.layout
        # the run's store, in read-only mode: no last-use mark, no discarding, no download
        self.store = Store(layout.cache, remote.connect(layout.remote) if layout.remote else None)

    def explain(self, nodes) -> Explanation:
        for node in nx.topological_sort(self.plan.graph.subgraph(nodes)):
            self.forecasts[node] = self.forecast(node)
        # e.g. a remote cache that did not answer (said once, however many stages asked)
        return Explanation(list(self.forecasts.values()), list(dict.fromkeys(self.store.warnings)))

    def lookup(self, key: str, expected) -> Found | None:
        """Where the run would find key: a local entry counts only if its blobs verify (the
        run's restore would rebuild on a bad one)."""
        return self.store.find(key, expected, verify=True)

    def _shown(self, path) -> str:
        path = Path(path)
        root = self.plan.layout.root
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def forecast(self, node: Node) -> Forecast:
        task = self.tasks[node.task_name]
        followed = self._followed(node)
        if followed is not None and self.forecasts[followed].action in ("run", "restore", "maybe"):
            return self._forecast(node, "maybe", f"waits on {followed.task_name}: runs if it "
                                 "fails in a way this stage diagnoses")
        reasons = self.dep.get_status(task, self.tasks, get_log=True).reasons
        from_up = {str(f): up for up in self.plan.graph.predecessors(node)
                   for f in input_files(self.plan, node, up)}
        waits = sorted({up.task_name for up in from_up.values() if not self.forecasts[up].known})
        missing = [f for f in reasons.get("missing_file_dep", []) if f not in from_up]
        if missing:
            return self._forecast(node, "fail", "missing file: " + ", ".join(
                self._shown(f) for f in missing) + " (doit stops it)")
        stopped = self._stopped(task, from_up)
        if stopped:
            return self._forecast(node, "skip", f"an upstream stage failed: {stopped}", known=True)
        own = self._own_reasons(task, reasons, from_up)
        changed_inputs = [f for f, up in from_up.items() if self.forecasts[up].known
                          and self._input_changes(task, f, up, reasons)]
        if not own and not changed_inputs:
            if waits:
                return self._forecast(node, "maybe", f"{_waits(waits)}: runs if "
                                     f"{'its' if len(waits) == 1 else 'their'} outputs change")
            return self._forecast(node, Status.UP_TO_DATE, known=True)
        doit_why = own if own == [NO_RECORD] else \
            own + [f"changed file: {self._shown(f)}" for f in changed_inputs]
        return self._settled_forecast(node, task) or self._runner_forecast(node, doit_why, waits)

    def _forecast(self, node: Node, action: str, why: str = "", known: bool = False,
                 digests: dict | None = None, files: dict | None = None,
                 fails: bool = False) -> Forecast:
        if files is None:   # its files in build/ now
            out_dir, data = self.plan.layout.node_dir(node), self.plan.graph.nodes[node]
            files = {rel: out_dir / rel for rel in data["stage"].outputs(data["model"])}
        return Forecast(node.task_name, action, why, known, digests or {}, files, fails)

    def _settled_forecast(self, node: Node, task) -> Forecast | None:
        """doit runs the action, and the session reports a settled outcome as it stands
        (pipeline.run.uptodate.settled), without the runner: when build/ will be as it is now
        at the task's turn (no stage upstream of it is restored or runs first), as the run's
        session will find it."""
        if any(self.forecasts[up].action not in (Status.UP_TO_DATE, "skip", "fail")
               for up in self.plan.graph.predecessors(node)):
            return None
        known = self.settled(task)
        if known is None:
            return None
        entry = known.entry
        if entry.failed:
            return self._forecast(node, "fail", entry.why or "", known=True, fails=True)
        if (entry.reason or "").startswith(NOT_NEEDED):   # nothing to diagnose: nothing to do
            return self._forecast(node, Status.UP_TO_DATE, known=True)
        return self._forecast(node, "skip", entry.reason or "", known=True)

    def _followed(self, node: Node) -> Node | None:
        """The upstream node whose failure node's stage diagnoses (Stage.follows), if any."""
        follows = self.plan.graph.nodes[node]["stage"].follows
        return next((up for up in self.plan.graph.predecessors(node) if up.stage == follows),
                    None)

    def _stopped(self, task, from_up: dict[str, Node]) -> str | None:
        """Why doit will not run the task at all: an upstream stage it depends on (by
        file_dep, not a variant's) fails, or is skipped leaving no file the task reads. The
        record then says "skipped" (an upstream stage failed)."""
        soft = set(task.meta["kiln"].get("soft_deps") or ())
        for dep, up in sorted(from_up.items()):
            forecast = self.forecasts[up]
            if dep in soft or not forecast.known:
                continue
            if forecast.fails:
                return f"{up.task_name} fails ({forecast.why})"
            rel = str(Path(dep).relative_to(self.plan.layout.node_dir(up)))
            if self._holds(up, rel) is None:
                return f"{up.task_name} leaves no {self._shown(dep)}"
        return None

    def _own_reasons(self, task, reasons, from_up) -> list[str]:
        """doit's reasons that do not hang on what upstream stages do, in words."""
        if self.dep.backend.get(task.name, "deps:") is None:
            return [NO_RECORD]   # (then every file counts as changed: saying so adds nothing)
        words = []
        for utd, _, _ in reasons.get("uptodate_false", []):
            values = self.dep.get_values(task.name)
            if not isinstance(utd, StageCheck):
                words.append(f"{utd!r} says it is not up to date")
            elif "watched" not in values:
                words.append("no record of its params (its last run failed or was skipped, "
                             "or an older kiln ran it)")
            elif values["watched"] != task.meta["kiln"]["watched"]:
                words.append("changed params or tool versions")
            else:   # (inputs a variant leaves are judged with their stage: _input_changes)
                out_dir = Path(task.meta["kiln"]["out_dir"])
                entry = StageEntry.from_dict(values.get("entry"),
                                             self.plan.nodes_by_task[task.name])
                recorded = entry.outputs or {}
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
        forecast = self.forecasts[up]
        rel = str(Path(dep).relative_to(self.plan.layout.node_dir(up)))
        if dep in (task.meta["kiln"].get("soft_deps") or ()):
            recorded = (self.dep.get_values(task.name).get("soft_inputs") or {}).get(dep)
            return (recorded or [None])[0] != self._holds(up, rel)
        if forecast.action != "restore":   # (up to date, skipped, failing: build/ as it is)
            return dep in reasons.get("changed_file_dep", [])
        state = self.dep.backend.get(task.name, dep)
        if state is None or not isinstance(self.dep.checker, MD5Checker):
            return True   # (a restored file has a new mtime: a timestamp checker sees a change)
        blob = forecast.files.get(rel)
        if blob is not None and blob.is_file():   # a restored file's mtime is new: size, then md5
            return blob.stat().st_size != state[1] or get_file_md5(blob) != state[2]
        # the blob is on the remote only: the same bytes as the file doit already accepts
        with contextlib.suppress(OSError):
            if dep not in reasons.get("changed_file_dep", []):
                return digest_file(dep) != forecast.digests[rel]
        return True

    def _holds(self, up: Node, rel: str) -> str | None:
        """The digest up's output rel will hold when a stage downstream reads it (None:
        absent): a restored upstream's from its cache entry (no bytes fetched), else what
        build/ holds now; NotKnown for an upstream that runs first and has left none yet."""
        forecast = self.forecasts[up]
        if rel in forecast.digests:
            return forecast.digests[rel]
        if forecast.files[rel].is_file():
            return digest_file(forecast.files[rel])
        if forecast.known:
            return None
        raise NotKnown(up.task_name)

    def _digest_of(self, node: Node):
        """decide's digest_of for node's inputs: each as it will be when node's turn comes."""
        owners = {}   # an input's path -> (the upstream node, its output's name)
        for up in self.plan.graph.predecessors(node):
            up_dir = self.plan.layout.node_dir(up)
            for path in input_files(self.plan, node, up):
                owners[path] = (up, str(path.relative_to(up_dir)))
        return lambda path: self._holds(*owners[path])

    def _runner_forecast(self, node: Node, doit_why: list[str], waits: list[str]) -> Forecast:
        """doit runs the action: what pipeline.run.decide says the runner then does."""
        try:
            decision = decide(self.plan.job(node), self.plan.layout, self.lookup,
                              self._digest_of(node))
        except NotKnown:
            return self._before_inputs(node, waits)
        if decision.unneeded:
            return self._forecast(node, Status.UP_TO_DATE, known=True)
        if decision.action in ("skip", "fail"):
            return self._forecast(node, decision.action, decision.why, known=True,
                                 fails=decision.action == "fail")
        if decision.action == "run":
            return self._run_forecast(node, decision, waits)
        if waits:
            return self._forecast(node, "maybe", f"{_waits(waits)}: restored from the cache if "
                                 f"{'its' if len(waits) == 1 else 'their'} outputs stay the "
                                 "same, else runs")
        # which part of the key differs from the last build here (a reverted flag), in the
        # record's words; else doit's reason (no recorded run, a damaged output)
        changed = decision.why_it_runs()
        why = changed if changed.startswith("changed ") else "; ".join(doit_why)
        outputs = decision.found.entry["outputs"]
        return self._forecast(node, "restore", f"{decision.why} ({why})", known=True,
                             digests=dict(outputs),
                             files={rel: self.store.blob_path(d) for rel, d in outputs.items()})

    def _run_forecast(self, node: Node, decision: Decision, waits: list[str]) -> Forecast:
        """The stage runs. One whose last run here failed with this same key fails again
        (a stage is a function of its key), leaving build/ as it is: that much is known."""
        if waits:
            its = "its" if len(waits) == 1 else "their"
            return self._forecast(node, "run", f"{decision.why} (and inputs, if "
                                 f"{', '.join(waits)} change{'s' * (len(waits) == 1)} {its} "
                                 "outputs)")
        fails = decision.fails_again()
        return self._forecast(node, "run", decision.why, known=fails, fails=fails)

    def _before_inputs(self, node: Node, waits: list[str]) -> Forecast:
        """An input is not there yet: a stage that runs first makes it."""
        graph, by_task = self.plan.graph, self.plan.nodes_by_task
        if any(graph.nodes[by_task[w]]["soft"] for w in waits):
            # a variant's stage that may fail again, leaving nothing to read
            return self._forecast(node, "maybe", f"{_waits(waits)}: runs if "
                                 f"{'it makes' if len(waits) == 1 else 'they make'} its inputs")
        previous = StageEntry.load(self.plan.layout.entry_file(node))
        if previous is None or not previous.fingerprint:
            # never built here, it runs (unless another checkout stored this very key)
            return self._forecast(node, "run", f"{why_run(None, {})} (after {', '.join(waits)})")
        return self._forecast(node, "maybe", f"{_waits(waits)}: runs unless the cache has "
                             "what it then reads")


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


class _NotOpened:
    """Stands in for doit's dependency manager while the tasks load: DoitCmdBase would open
    .doit.db for writing (creating it when absent)."""


class Explain(DoitCmdBase):
    doc_purpose = "say what the next run would do to each stage and why, running nothing"
    doc_usage = "[TASK ...] [model=...] [target=...] [matrix=...]"
    doc_description = ("For each stage task: run (with the record's 'why'), restore (key in the "
                       "cache), skip (cannot run here, or nothing to read), fail (its failure "
                       "with this key is in the cache: 'failed (cached)'), or maybe (waits on "
                       "a stage that runs first). Writes nothing.")
    cmd_options = ()

    def execute(self, params, args):
        # before dodo.py loads: the probe cache, the plan memo, a failed-run record, the
        # .doit.db repair and the store then write nothing (pipeline.cache.files.read_only)
        set_read_only()
        self.dep_manager = _NotOpened()
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
            explanation = Judge(plan, tasks, dep, session.settled).explain(nodes)
        finally:
            with contextlib.suppress(sqlite3.Error):
                dep.close()
        self.outstream.write("\n".join(explanation.lines()) + "\n")
        return 0
