"""`doit diff baseline=PATH [factor=F]`: what changed between the last run here (build/run.json)
and an earlier one (the baseline: its run.json, or its build directory), per model x target:
outcome, error against the tolerance, speed (pipeline.report.diff says what counts).

    doit validate model=all target=cpu        # the build to judge
    doit diff baseline=../main-build          # its changes since main's build

It prints the changed cases and writes them into the last run's record and reports (run.json's
"diff", a section of report.md and report.html; a diff they held is replaced). It runs no
stage and reads neither dodo.py nor the plan: only the two records. Its exit code is 0 (3 for
bad input): the run's own verdict is what gates CI (pipeline.report.verdict).

`doit validate ... baseline=PATH` does the same at the end of the run (pipeline.driver.
session, reporter), so a CI job needs one command.

Like `doit explain` it is a doit command plugin (pyproject.toml, [tool.doit.plugins.command]),
not a task: a task would be run by `doit run` (and so by plain `doit`), saved in .doit.db and
listed among the tasks.
"""
from __future__ import annotations

import sys
from pathlib import Path

from doit import get_var
from doit.cmd_base import Command
from doit.exceptions import InvalidCommand

from ..plan.variables import given_variables, refuse_unknown
from ..report import diff
from ..report.record import rewrite
from ..stage import ConfigError

USAGE = "baseline=PATH [factor=F]"


class Diff(Command):
    name = "diff"
    doc_purpose = ("say what changed since a baseline build: outcome, error against the "
                   "tolerance, speed")
    doc_usage = USAGE
    doc_description = (
        "Compares build/run.json (the last run here) with baseline=PATH (an earlier run's "
        "run.json, or its build directory) per model x target, prints the cases whose outcome "
        "changed, whose error against the tolerance grew or shrank more than factor= times "
        f"(default {diff.ERROR_FACTOR:g}), or whose time per call moved beyond both runs' "
        "spread, and writes them into build/run.json, report.md and report.html. Runs in the "
        "project directory; runs no stage.")
    cmd_options = ()

    def execute(self, opt_values, pos_args):
        if pos_args:
            raise InvalidCommand(f"doit diff takes {USAGE}, not {' '.join(pos_args)}")
        given = get_var("baseline")
        if not given:
            raise InvalidCommand(f"doit diff needs {USAGE}: the baseline is an earlier run's "
                                 "run.json or its build directory")
        root = Path.cwd()
        run_file = root / "build" / "run.json"
        try:
            refuse_unknown(given_variables(), ("baseline", "factor"), f"doit diff takes {USAGE}")
            baseline = diff.load(given, get_var("factor"), root)
            current = last_run(run_file)
        except ConfigError as err:
            raise InvalidCommand(f"kiln: {err}") from None
        record = {k: v for k, v in current.items() if k != "diff"}
        record["diff"] = baseline.compare(record)
        said = rewrite(run_file, record)
        sys.stdout.write("\n".join([*diff.lines(record["diff"]), said]) + "\n")
        return 0


def last_run(run_file: Path) -> dict:
    if not run_file.is_file():
        raise ConfigError(f"no run record {run_file}: doit diff compares the last run here "
                          "with the baseline; run doit validate (or doit compile) first")
    try:
        return diff.read_record(run_file)
    except ValueError as err:
        raise ConfigError(str(err)) from None

