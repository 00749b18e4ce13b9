"""kiln's doit reporter: doit's console output, progress while stages run, and at the end the
run record (pipeline.report.record) with its summary table.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Callable

from doit.exceptions import DependencyError, UnmetDependency
from doit.reporter import ConsoleReporter

from ..report.record import RunLog, entry_of, publish, reuse
from . import collector


def make_reporter(run_file: Path, run: RunLog, after: Callable[[], None] | None = None,
                  made_from: tuple[dict, Callable[[], dict]] | None = None):
    """made_from: what a record of up-to-date tasks is made from besides the task list (doit's
    database, kiln's plan), as it was when the run started and a callable saying what it is
    once doit has closed its database; with it, a no-op run after a no-op run reuses the last
    summary without building its record (record.reuse)."""
    fresh = run.entries

    class KilnReporter(ConsoleReporter):
        """doit's console output, plus progress while stages run, the run record and the
        summary table."""

        def __init__(self, outstream, options):
            super().__init__(outstream, options)
            self.progress = None   # set up when a task first runs: a no-op run never needs it
            self._progress_lock = threading.Lock()   # -P thread starts tasks from workers

        def write(self, text):
            if self.progress is None:
                self.outstream.write(text)
            else:
                self.progress.write(text)   # above the live progress lines while they show

        def execute_task(self, task):
            super().execute_task(task)
            if not task.actions:   # a group task (validate, compile): nothing runs
                return
            collector.resume()   # work starts: real garbage from here on
            with self._progress_lock:
                if self.progress is None:
                    self.progress = _progress(self.outstream)
            self.progress.started(task)

        def initialize(self, tasks, selected_tasks):
            super().initialize(tasks, selected_tasks)
            self.added = []   # (stage task, what this run says of it), made entries at the end
            # the record lists tasks in the plan's order, not doit's (which varies between
            # runs): an unchanged run gives the same bytes
            self.order = {name: i for i, name in enumerate(tasks)}

        def _add(self, task, **override):
            if (task.meta or {}).get("kiln") is not None:   # a stage's task, not a group
                self.added.append((task, override))

        def add_success(self, task):
            if self.progress is not None:
                self.progress.finished(task)
            super().add_success(task)
            self._add(task)

        def add_failure(self, task, fail):
            if self.progress is not None:
                self.progress.finished(task)
            super().add_failure(task, fail)
            if isinstance(fail, (DependencyError, UnmetDependency)):
                self._add(task, status="skipped", seconds=0.0, reason="an upstream stage failed",
                          key=None, error=None, command=None, result=None, warnings=None,
                          why=None, remote=None, worker=None)
            else:  # the runner's entry says why; if it never got to write one, doit's message
                entry = entry_of(task, fresh, run.previous) or {}
                extra = {} if entry.get("status") == "failed" else {"error": fail.get_msg().strip()}
                self._add(task, status="failed", **extra)

        def skip_uptodate(self, task):
            if not task.actions:   # a group: silent, as when doit "ran" it (GROUP_UPTODATE)
                return
            super().skip_uptodate(task)
            # what the last run did (its warnings, the remote, the worker) is not this run's
            self._add(task, status="up-to-date", seconds=0.0, warnings=None, why=None,
                      remote=None, worker=None)

        def skip_ignore(self, task):
            super().skip_ignore(task)
            self._add(task, status="skipped", seconds=0.0, reason="ignored")

        def complete_run(self):
            if self.progress is not None:
                self.progress.stop()   # the live lines go before the table (also after Ctrl-C)
            if self.added:  # a run of no stage (doit prune) keeps the last build's record
                self.outstream.write(self._publish())
            super().complete_run()
            if after is not None:
                after()

        def _publish(self) -> str:
            added = sorted(self.added, key=lambda pair: self.order.get(pair[0].name, 0))
            stamp = None
            if made_from is not None and all(o.get("status") == "up-to-date" for _, o in added):
                # every task up to date: the record is the last one's if the database its
                # entries come from, the plan and the task list are
                listed = hashlib.sha256(json.dumps([[task.name for task, _ in added],
                                                    run.warnings]).encode()).hexdigest()
                before, after_run = made_from
                text = reuse(run_file, {**before, "tasks": listed})
                if text is not None:
                    return text
                stamp = {**after_run(), "tasks": listed}
            tasks = []
            for task, override in added:
                entry = entry_of(task, fresh, run.previous)
                entry.update(override)
                tasks.append({k: v for k, v in entry.items() if v is not None or k in ("target", "key")})
            record = {"tasks": tasks, **({"warnings": run.warnings} if run.warnings else {})}
            return publish(run_file, record, stamp)

    return KilnReporter



def _progress(outstream):
    """The progress display for this run's output, as the environment sets it."""
    from ..report.progress import Progress, settings_from_env   # only once a task runs
    try:
        settings = settings_from_env()
    except ValueError as err:
        outstream.write(f"kiln: warning: {err}; progress is off\n")
        settings = None
    return Progress(outstream, settings)

