"""The run record: build/run.json (and build/report.md), written at the end of every doit run.

The runner leaves one entry per executed stage under build/.kiln/tasks/; this reporter adds
what only doit knows (which tasks it skipped as up-to-date, which never ran because an
upstream task failed), writes the record atomically and prints the summary table.
"""
from __future__ import annotations

import json
from pathlib import Path

from doit.exceptions import DependencyError, UnmetDependency
from doit.reporter import ConsoleReporter

from . import report
from .store import atomic_write


def _entry(task) -> dict | None:
    info = (task.meta or {}).get("kiln")
    if info is None:
        return None
    entry = {"task": task.name, "stage": info["stage"], "model": info["model"],
             "target": info["target"], "key": None}
    try:
        entry.update(json.loads(Path(info["entry"]).read_text()))
    except (OSError, ValueError):
        pass
    entry.pop("fingerprint", None)   # the key's parts, kept for the next 'why'; not for the record
    return entry


def make_reporter(run_file: Path):
    class KilnReporter(ConsoleReporter):
        """doit's console output, plus the run record and the summary table."""

        def initialize(self, tasks, selected_tasks):
            super().initialize(tasks, selected_tasks)
            self.entries = []

        def _add(self, task, **override):
            entry = _entry(task)
            if entry is not None:
                entry.update(override)
                self.entries.append(entry)

        def add_success(self, task):
            super().add_success(task)
            self._add(task)

        def add_failure(self, task, fail):
            super().add_failure(task, fail)
            if isinstance(fail, (DependencyError, UnmetDependency)):
                self._add(task, status="skipped", seconds=0.0, reason="an upstream stage failed",
                          key=None, error=None, command=None, result=None, warnings=None,
                          why=None)
            else:  # the runner's entry says why; if it never got to write one, doit's message
                entry = _entry(task) or {}
                extra = {} if entry.get("status") == "failed" else {"error": fail.get_msg().strip()}
                self._add(task, status="failed", **extra)

        def skip_uptodate(self, task):
            super().skip_uptodate(task)
            self._add(task, status="up-to-date", seconds=0.0, warnings=None, why=None)

        def skip_ignore(self, task):
            super().skip_ignore(task)
            self._add(task, status="skipped", seconds=0.0, reason="ignored")

        def complete_run(self):
            tasks = [{k: v for k, v in e.items() if v is not None or k in ("target", "key")}
                     for e in self.entries]
            if tasks:  # a run of no stage (doit prune) keeps the last build's record
                atomic_write(run_file, json.dumps({"tasks": tasks}, indent=1).encode())
                atomic_write(run_file.with_name("report.md"), report.markdown(tasks).encode())
                self.outstream.write("\n" + report.table(tasks) + "\n")
                for task in tasks:
                    for warning in task.get("warnings", []):
                        self.outstream.write(f"warning: {task['task']}: {warning}\n")
                self.outstream.write(f"run record: {run_file}\n")
            super().complete_run()

    return KilnReporter
