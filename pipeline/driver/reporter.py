"""kiln's doit reporter: the console while stages run and at the end, and the run record
(pipeline.report.record).

Sized for hundreds of cases: doit's line per task (".  lower:mlp@cpu", "-- capture:mlp") only
in a run of at most KILN_CONSOLE_CASES model x target cases (pipeline.report.console), the
cases done of the total while stages run (pipeline.report.progress), and at the end the table
(or where it is), one line per unexpected failure and a summary line, never doit's own
failure reports (TaskFailed, UnmetDependency, the "####" dumps of a failed task's output):
a stage's failure is in the record, its log and its line. A task that raised (a bug, not
a verdict) still gets doit's report, traceback and all.
"""
from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from doit.exceptions import DependencyError, TaskFailed, UnmetDependency
from doit.reporter import ConsoleReporter

from .. import process
from ..names import base_target, release_of
from ..report.console import case_limit
from ..report.record import RunLog, Summary, entry_of, publish, reuse
from ..run.entry import FAILURES
from ..vocab import Status
from . import collector
from .database import identity

if TYPE_CHECKING:   # (loaded only when baseline= is given)
    from ..report.diff import Baseline

# what a task that never ran because an upstream one failed did not do (its entry may be
# the last run's, which did)
NOT_RUN = {"status": Status.SKIPPED, "seconds": 0.0, "tool_seconds": None,
           "reason": "an upstream stage failed", "key": None, "error": None, "command": None,
           "result": None, "warnings": None, "why": None, "remote": None, "worker": None}
# what the last run of an up-to-date task did that this run did not
NOT_THIS_RUN = {"status": Status.UP_TO_DATE, "seconds": 0.0, "tool_seconds": None,
                "warnings": None, "why": None, "remote": None, "worker": None}
# what a task the run was stopped in, or before, did not do (its entry may be the last run's)
UNFINISHED_RUN = {"seconds": 0.0, "reason": None, "key": None, "error": None, "command": None,
                  "result": None, "warnings": None, "why": None, "remote": None, "worker": None,
                  "tool_seconds": None, "log": None}
# fields the record keeps even when None (an entry with no role: its stage declares none;
# one without the field: a record written before stages declared roles)
KEPT_EMPTY = ("target", "key", "role")


def make_reporter(run_file: Path, run: RunLog, after: Callable[[], None] | None = None,
                  made_from: tuple[dict, Callable[[], dict]] | None = None,
                  strict: bool = False, baseline: Baseline | None = None) -> type[KilnReporter]:
    """The reporter class for this run, for DOIT_CONFIG["reporter"]. doit makes the reporter
    itself, from a class and (outstream, options) only (doit/cmd_run.py: anything not a class
    it takes for a ready instance), so the run's own objects go in as class attributes of a
    subclass made for it. made_from: what a record of up-to-date tasks is made from besides
    the task list (doit's database, kiln's plan), as it was when the run started and a
    callable saying what it is once doit has closed its database (KilnReporter._publish).
    strict: an unexpected pass fails the run (strict=1; the record says so). baseline: the
    earlier run the record says what changed since (baseline=; its "diff")."""
    return type("KilnReporter", (KilnReporter,),
                {"run_file": run_file, "run": run, "after": staticmethod(after),
                 "made_from": made_from, "strict": strict, "baseline": baseline})


class KilnReporter(ConsoleReporter):
    """doit's console output, plus progress while stages run, the run record and the
    summary table. Bound to a run by make_reporter."""
    run_file: Path
    run: RunLog
    after: Callable[[], None] | None = None   # called last (the .doit.db seal)
    made_from: tuple[dict, Callable[[], dict]] | None = None
    strict: bool = False
    baseline: Baseline | None = None

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.progress = None   # set up when a task first runs: a no-op run never needs it
        self._progress_lock = threading.Lock()   # -P thread starts tasks from workers
        # (stage task, what this run says of it): made into record rows only when the record
        # is built, which a no-op run after a no-op run skips (_publish)
        self.added: list[tuple] = []
        self.order: dict[str, int] = {}
        # a stopped run lists every stage task it was to end: those it did not (initialize)
        self.tasks: dict = {}
        self.selected: list[str] = []
        self.started: dict[str, float] = {}   # stage task -> when doit started it
        # what doit's own exit code will say: a task failed; one raised (kiln's own error)
        self.failed = self.crashed = False
        self.cases = Cases([])
        self.limit = 0
        self.quiet = False   # more cases than the limit: no line per task

    def _say(self, text: str) -> None:
        """doit's line about one task, in a run small enough for one."""
        if not self.quiet:
            self.write(text)

    def write(self, text):
        if self.progress is None:
            self.outstream.write(text)
        else:
            self.progress.write(text)   # above the live progress lines while they show

    def initialize(self, tasks, selected_tasks):
        super().initialize(tasks, selected_tasks)
        # the record lists tasks in the plan's order, not doit's (which varies between runs):
        # an unchanged run gives the same bytes
        self.order = {name: i for i, name in enumerate(tasks)}
        stages = _stages_to_run(tasks, selected_tasks)
        self.tasks, self.selected = tasks, [name for name, _, _ in stages]
        self.cases = Cases(stages)
        self.limit, warning = case_limit()
        if warning:
            self.outstream.write(f"kiln: warning: {warning}\n")
        self.quiet = self.cases.total > self.limit and self.cases.unit == "cases"

    def execute_task(self, task):
        if process.stop_reason() is not None:
            return   # (a worker thread taking its next task as the run stops: it starts no tool)
        if (task.meta or {}).get("kiln") is not None:
            self.started[task.name] = time.monotonic()
        if task.actions and task.name[0] != "_":
            self._say(f".  {task.title()}\n")
        if not task.actions:   # a group task (validate, compile): nothing runs
            return
        collector.resume()   # work starts: real garbage from here on
        with self._progress_lock:
            if self.progress is None:
                self.progress = _progress(self.outstream, self.cases.text)
        self.progress.started(task)

    def add_success(self, task):
        # a failure another stage diagnoses is no failure to doit (plan.graph: "followed")
        followed = ((task.meta or {}).get("kiln") or {}).get("followed")
        self._finished(task, failed=bool(followed) and
                       (self._entry(task) or {}).get("status") in FAILURES)
        self._add(task)

    def add_failure(self, task, fail):
        self._finished(task, failed=not isinstance(fail, (DependencyError, UnmetDependency)))
        self.failed = True
        if not isinstance(fail, (TaskFailed, DependencyError, UnmetDependency)):
            self.crashed = True   # kiln's own error: doit's report, with its traceback
            self._write_failure({"task": task, "exception": fail})
        if isinstance(fail, (DependencyError, UnmetDependency)):
            self._add(task, **NOT_RUN)
        else:  # the runner's entry says why; if it never got to write one, doit's message
            # (imported here: a no-op run defines no StageEntry)
            from ..run.entry import FAILURES
            entry = self._entry(task) or {}
            if entry.get("status") in FAILURES:   # (failed, or failed (cached))
                self._add(task)
            else:
                self._add(task, status=Status.FAILED, error=fail.get_msg().strip())

    def skip_uptodate(self, task):
        # a group (the only up-to-date task that is no stage: GROUP_UPTODATE) stays silent,
        # as when doit "ran" it; asked by its meta, as task.actions would build its actions
        if (task.meta or {}).get("kiln") is None:
            return
        self._say(f"-- {task.title()}\n")
        self.cases.ended(task)
        self._add(task, **NOT_THIS_RUN)

    def skip_ignore(self, task):
        self._say(f"!! {task.title()}\n")
        self.cases.ended(task)
        self._add(task, status=Status.SKIPPED, seconds=0.0, reason="ignored")

    def complete_run(self):
        if self.progress is not None:
            self.progress.stop()   # the live lines go before the table (also after Ctrl-C)
        stopped = process.stop_reason()
        if stopped is not None:   # every case the run was to end is in its record
            self._add_unfinished(stopped)
        summary = None
        if self.added:  # a run of no stage (doit prune) keeps the last build's record
            summary = self._publish(stopped)
            self.outstream.write(summary.text)
        if self.runtime_errors:   # doit's own (a task it could not run at all), as doit says them
            self.write("#" * 40 + "\nExecution aborted.\n" + "\n".join(self.runtime_errors) + "\n")
        if self.after is not None:
            self.after()
        if stopped is not None:   # (doit is unwinding a KeyboardInterrupt: end it here, quietly)
            if summary is None:   # (else its summary line says so)
                self.outstream.write(f"kiln: the run was stopped ({stopped})\n")
            _end_workers()
            # a shell's code for a run a signal ended: never 0, whatever finished
            raise SystemExit(128 + signal.Signals[stopped].value)
        if summary is not None and not self.crashed and (summary.exit_code == 0) == self.failed:
            # doit's exit code counts every failed task, kiln's follows the cases' verdict
            # (pipeline.report.verdict): expected failures pass, strict unexpected passes
            # fail. doit returns its own right after this call: nothing is left to run.
            raise SystemExit(summary.exit_code)

    def _finished(self, task, failed: bool = False) -> None:
        self.cases.ended(task, failed)
        if self.progress is not None:
            self.progress.finished(task)

    def _entry(self, task) -> dict | None:
        return entry_of(task, self.run.entries, self.run.previous)

    def _add(self, task, **override) -> None:
        if (task.meta or {}).get("kiln") is not None:   # a stage's task, not a group
            self.added.append((task, override))

    def _add_unfinished(self, stopped: str) -> None:
        """Each stage task this run was to end and did not, as the stop left it: interrupted
        where doit had started it, not started where not."""
        ended = {task.name for task, _ in self.added}
        for name in self.selected:
            if name not in ended:
                self._add(self.tasks[name], **self._unfinished(name, stopped))

    def _unfinished(self, name: str, stopped: str) -> dict:
        """What the record says of a task the stop left unfinished (an entry's fields)."""
        began = self.started.get(name)
        if began is None:
            return {**UNFINISHED_RUN, "status": Status.NOT_STARTED,
                    "reason": f"the run was stopped ({stopped}) before it started"}
        fresh = self.run.entries.get(name)   # the runner's, where its tool was killed (-P thread)
        error = fresh.error if fresh is not None and fresh.unfinished else \
            f"the run was stopped ({stopped}) while it ran"
        return {**UNFINISHED_RUN, "status": Status.INTERRUPTED, "error": error,
                "seconds": round(time.monotonic() - began, 3)}

    def _publish(self, stopped: str | None = None) -> Summary:
        """The summary: the last one as it is when the run ran nothing (every task up to
        date, or settled: _listed) over what the last record of such a run was made from
        (record.reuse), else the record's, built. stopped: the signal that stopped the run
        (the record says so: "interrupted")."""
        added = sorted(self.added, key=lambda pair: self.order.get(pair[0].name, 0))
        stamp = None
        listed = None if stopped else self._listed(added)
        if self.made_from is not None and listed is not None:
            before, after_run = self.made_from
            reused = reuse(self.run_file, {**before, "tasks": listed, "limit": self.limit})
            if reused is not None:
                return reused
            stamp = {**after_run(), "tasks": listed, "limit": self.limit}
        settings = {**({"warnings": self.run.warnings} if self.run.warnings else {}),
                    **({"strict": True} if self.strict else {}),
                    **({"interrupted": stopped} if stopped else {})}
        record = {"tasks": self._record_tasks(added), **settings}
        if self.baseline is not None:
            record["diff"] = self.baseline.compare(record)
        if any(release_of(t["target"] or "") for t in record["tasks"]):
            from ..report import upgrade  # (iree=A,B: what changed from one to the other)
            found = upgrade.compare(record)
            if found is not None:
                record["upgrade"] = found
        return publish(self.run_file, record, stamp, self.limit)

    def _listed(self, added: list[tuple]) -> str | None:
        """What the record of a run that ran nothing is made of besides doit's database and
        the plan (their identities are the rest of the stamp record.reuse compares): each
        task's name, and for one not up to date what it was and its entry file's identity
        (its row comes from there): a settled outcome (pipeline.run.uptodate.settled), or a
        task not run after one; and the warnings. None when a task ran or was restored, or
        failed or was skipped anew: that record is built."""
        rows = []
        for task, override in added:
            if override.get("status") == Status.UP_TO_DATE:
                rows.append(task.name)
                continue
            kind = "settled" if not override and task.name in self.run.settled else \
                "not run" if override == NOT_RUN else None
            if kind is None:
                return None
            rows.append([task.name, kind, identity(Path(task.meta["kiln"]["entry"]))])
        return hashlib.sha256(json.dumps([rows, self.run.warnings]).encode()).hexdigest()

    def _record_tasks(self, added: list[tuple]) -> list[dict]:
        """The entries in plan order, without the fields this run left empty."""
        rows = []
        for task, override in added:
            entry = self._entry(task)
            entry.update(override)
            rows.append({k: v for k, v in entry.items() if v is not None or k in KEPT_EMPTY})
        return rows


# seconds a doit worker process (-n, -P process) has to end once the run is stopped
WORKER_GRACE_S = 5.0


def _end_workers() -> None:
    """doit's worker processes, once the run is stopped: each got the signal and ends by
    itself; one that missed it (its main thread blocked while the signal went to another of
    its threads) would keep doit waiting for it at exit forever, and is killed."""
    import multiprocessing  # (-n only; a stop is rare)
    for child in multiprocessing.active_children():
        if not child.daemon:   # (the daemonic ones Python ends at exit without waiting)
            child.join(WORKER_GRACE_S)
            if child.is_alive():
                child.kill()


def _progress(outstream, done: Callable[[], str]):
    """The progress display for this run's output, as the environment sets it."""
    from ..report.progress import Progress, settings_from_env  # only once a task runs
    try:
        settings = settings_from_env()
    except ValueError as err:
        outstream.write(f"kiln: warning: {err}; progress is off\n")
        settings = None
    return Progress(outstream, settings, done=done)


def _stages_to_run(tasks: dict, selected: list[str]) -> list[tuple[str, str, str | None]]:
    """(task, model, target) of each stage task this run will end, one way or another: the
    selected tasks and what they depend on (doit's task_dep, which holds its implicit ones:
    a file another task makes)."""
    seen, stack = set(), list(selected or ())
    while stack:
        name = stack.pop()
        if name in seen or name not in tasks:
            continue
        seen.add(name)
        stack += tasks[name].task_dep
        stack += tasks[name].setup_tasks
    return [(name, info["model"], info["target"]) for name in seen
            if (info := (tasks[name].meta or {}).get("kiln")) is not None]


class Cases:
    """How much of the run has ended, for its progress: a case (model x target, its variants'
    stages included) ends when each of its stage tasks in this run has; a run that holds no
    case (per-model stages only) counts its tasks. Thread-safe (-P thread)."""

    def __init__(self, stages: list[tuple[str, str, str | None]]):
        cased = [(name, (model, base_target(target))) for name, model, target in stages
                 if target is not None]
        self.unit = "cases" if cased else "tasks"
        self._case_of = dict(cased) if cased else {name: name for name, _, _ in stages}
        self._open: dict = {}
        for name, case in self._case_of.items():
            self._open.setdefault(case, set()).add(name)
        self.total, self.done, self.failed = len(self._open), 0, 0
        self._lock = threading.Lock()

    def ended(self, task, failed: bool = False) -> None:
        """task ended (ran, failed, up to date, skipped); failed: it failed itself (not for
        want of an upstream one), where that fails its case (not a variant's own stage, nor
        one listed as expected to fail)."""
        info = (task.meta or {}).get("kiln") or {}
        with self._lock:
            self.failed += failed and not info.get("soft") and not info.get("xfail")
            case = self._case_of.pop(task.name, None)
            still = self._open.get(case)
            if still is None:
                return
            still.discard(task.name)
            if not still:
                del self._open[case]
                self.done += 1

    def text(self) -> str:
        """'37/412 cases done, 2 failed'."""
        return f"{self.done}/{self.total} {self.unit} done" + \
            (f", {self.failed} failed" if self.failed else "")
