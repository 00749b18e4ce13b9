"""kiln's doit reporter: doit's console output, progress while stages run, and at the end the
run record (pipeline.report.record) with its summary table.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Callable

from doit.exceptions import DependencyError, TaskFailed, UnmetDependency
from doit.reporter import ConsoleReporter

from ..report.record import RunLog, Summary, entry_of, publish, reuse
from . import collector
from .database import identity

# what a task that never ran because an upstream one failed did not do (its entry may be
# the last run's, which did)
NOT_RUN = {"status": "skipped", "seconds": 0.0, "reason": "an upstream stage failed",
           "key": None, "error": None, "command": None, "result": None, "warnings": None,
           "why": None, "remote": None, "worker": None}
# what the last run of an up-to-date task did that this run did not
NOT_THIS_RUN = {"status": "up-to-date", "seconds": 0.0, "warnings": None, "why": None,
                "remote": None, "worker": None}
# fields the record keeps even when None (an entry with no role: its stage declares none;
# one without the field: a record written before stages declared roles)
KEPT_EMPTY = ("target", "key", "role")


def make_reporter(run_file: Path, run: RunLog, after: Callable[[], None] | None = None,
                  made_from: tuple[dict, Callable[[], dict]] | None = None,
                  strict: bool = False) -> type[KilnReporter]:
    """The reporter class for this run, for DOIT_CONFIG["reporter"]. doit makes the reporter
    itself, from a class and (outstream, options) only (doit/cmd_run.py: anything not a class
    it takes for a ready instance), so the run's own objects go in as class attributes of a
    subclass made for it. made_from: what a record of up-to-date tasks is made from besides
    the task list (doit's database, kiln's plan), as it was when the run started and a
    callable saying what it is once doit has closed its database (KilnReporter._publish).
    strict: an unexpected pass fails the run (strict=1; the record says so)."""
    return type("KilnReporter", (KilnReporter,),
                {"run_file": run_file, "run": run, "after": staticmethod(after),
                 "made_from": made_from, "strict": strict})


class KilnReporter(ConsoleReporter):
    """doit's console output, plus progress while stages run, the run record and the
    summary table. Bound to a run by make_reporter."""
    run_file: Path
    run: RunLog
    after: Callable[[], None] | None = None   # called last (the .doit.db seal)
    made_from: tuple[dict, Callable[[], dict]] | None = None
    strict: bool = False

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.progress = None   # set up when a task first runs: a no-op run never needs it
        self._progress_lock = threading.Lock()   # -P thread starts tasks from workers
        # (stage task, what this run says of it): made into record rows only when the record
        # is built, which a no-op run after a no-op run skips (_publish)
        self.added: list[tuple] = []
        self.order: dict[str, int] = {}
        # what doit's own exit code will say: a task failed; one raised (kiln's own error)
        self.failed = self.crashed = False

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

    def execute_task(self, task):
        super().execute_task(task)
        if not task.actions:   # a group task (validate, compile): nothing runs
            return
        collector.resume()   # work starts: real garbage from here on
        with self._progress_lock:
            if self.progress is None:
                self.progress = _progress(self.outstream)
        self.progress.started(task)

    def add_success(self, task):
        self._finished(task)
        super().add_success(task)
        self._add(task)

    def add_failure(self, task, fail):
        self._finished(task)
        super().add_failure(task, fail)
        self.failed = True
        self.crashed |= not isinstance(fail, (TaskFailed, DependencyError, UnmetDependency))
        if isinstance(fail, (DependencyError, UnmetDependency)):
            self._add(task, **NOT_RUN)
        else:  # the runner's entry says why; if it never got to write one, doit's message
            # (imported here: a no-op run defines no StageEntry)
            from ..run.entry import FAILURES
            entry = self._entry(task) or {}
            if entry.get("status") in FAILURES:   # (failed, or failed (cached))
                self._add(task)
            else:
                self._add(task, status="failed", error=fail.get_msg().strip())

    def skip_uptodate(self, task):
        # a group (the only up-to-date task that is no stage: GROUP_UPTODATE) stays silent,
        # as when doit "ran" it; asked by its meta, as task.actions would build its actions
        if (task.meta or {}).get("kiln") is None:
            return
        super().skip_uptodate(task)
        self._add(task, **NOT_THIS_RUN)

    def skip_ignore(self, task):
        super().skip_ignore(task)
        self._add(task, status="skipped", seconds=0.0, reason="ignored")

    def complete_run(self):
        if self.progress is not None:
            self.progress.stop()   # the live lines go before the table (also after Ctrl-C)
        summary = None
        if self.added:  # a run of no stage (doit prune) keeps the last build's record
            summary = self._publish()
            self.outstream.write(summary.text)
        super().complete_run()
        if self.after is not None:
            self.after()
        if summary is not None and not self.crashed and (summary.exit_code == 0) == self.failed:
            # doit's exit code counts every failed task, kiln's follows the cases' verdict
            # (pipeline.report.verdict): expected failures pass, strict unexpected passes
            # fail. doit returns its own right after this call: nothing is left to run.
            raise SystemExit(summary.exit_code)

    def _finished(self, task) -> None:
        if self.progress is not None:
            self.progress.finished(task)

    def _entry(self, task) -> dict | None:
        return entry_of(task, self.run.entries, self.run.previous)

    def _add(self, task, **override) -> None:
        if (task.meta or {}).get("kiln") is not None:   # a stage's task, not a group
            self.added.append((task, override))

    def _publish(self) -> Summary:
        """The summary: the last one as it is when the run ran nothing (every task up to
        date, or settled: _listed) over what the last record of such a run was made from
        (record.reuse), else the record's, built."""
        added = sorted(self.added, key=lambda pair: self.order.get(pair[0].name, 0))
        stamp = None
        listed = self._listed(added)
        if self.made_from is not None and listed is not None:
            before, after_run = self.made_from
            reused = reuse(self.run_file, {**before, "tasks": listed})
            if reused is not None:
                return reused
            stamp = {**after_run(), "tasks": listed}
        settings = {**({"warnings": self.run.warnings} if self.run.warnings else {}),
                    **({"strict": True} if self.strict else {})}
        return publish(self.run_file, {"tasks": self._record_tasks(added), **settings}, stamp)

    def _listed(self, added: list[tuple]) -> str | None:
        """What the record of a run that ran nothing is made of besides doit's database and
        the plan (their identities are the rest of the stamp record.reuse compares): each
        task's name, and for one not up to date what it was and its entry file's identity
        (its row comes from there): a settled outcome (pipeline.run.uptodate.settled), or a
        task not run after one; and the warnings. None when a task ran or was restored, or
        failed or was skipped anew: that record is built."""
        rows = []
        for task, override in added:
            if override.get("status") == "up-to-date":
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


def _progress(outstream):
    """The progress display for this run's output, as the environment sets it."""
    from ..report.progress import Progress, settings_from_env   # only once a task runs
    try:
        settings = settings_from_env()
    except ValueError as err:
        outstream.write(f"kiln: warning: {err}; progress is off\n")
        settings = None
    return Progress(outstream, settings)
