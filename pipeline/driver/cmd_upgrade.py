"""`doit upgrade [factor=F]`: what changed from one IREE release to another in the last run
here, per model x target (pipeline.report.upgrade): newly failing (with the stage and the new
error), newly passing, error grown or shrunk beyond factor=, time per call changed beyond both
builds' spread.

    doit validate model=all target=cpu iree=3.12.0,3.13.0   # build with both releases
    doit upgrade                                           # the answer again, exit 1 on new failures

The run itself says the same at its end (its record's "upgrade"); this command reads only
build/run.json, prints the answer, writes it into the record and its reports again (factor=
may differ from the run's), and exits 1 where the newer release fails a case the older
passed, else 0 (3 for bad input): the line a CI job gates an upgrade on. Like `doit diff`,
a doit command plugin (pyproject.toml), not a task.
"""
from __future__ import annotations

import sys
from pathlib import Path

from doit import get_var
from doit.cmd_base import Command
from doit.exceptions import InvalidCommand

from ..plan.variables import given_variables, refuse_unknown
from ..report import diff, upgrade
from ..report.record import rewrite
from ..stage import ConfigError
from .cmd_diff import last_run

USAGE = "[factor=F]"


class Upgrade(Command):
    name = "upgrade"
    doc_purpose = ("say what changed from one IREE release to another in the last run "
                   "(iree=A,B): newly failing, newly passing, error, speed")
    doc_usage = USAGE
    doc_description = (
        "Reads build/run.json, the last run here, which built each target with two or more "
        "IREE releases (iree=3.12.0,3.13.0), and compares the oldest release's builds with "
        "the newest's per model x target: outcome, error against the tolerance beyond factor= "
        f"times (default {diff.ERROR_FACTOR:g}), time per call beyond both builds' spread. "
        "Prints a summary line and the changed cases, writes them into build/run.json, "
        "report.md and report.html, and exits 1 when the newer release fails a case the older "
        "passed. Runs no stage.")
    cmd_options = ()

    def execute(self, opt_values, pos_args):
        if pos_args:
            raise InvalidCommand(f"doit upgrade takes {USAGE}, not {' '.join(pos_args)}")
        run_file = Path.cwd() / "build" / "run.json"
        try:
            refuse_unknown(given_variables(), ("factor",), f"doit upgrade takes {USAGE}")
            factor = diff.parse_factor(get_var("factor"))
            record = {k: v for k, v in last_run(run_file).items() if k != "upgrade"}
            found = upgrade.compare(record, factor)
            if found is None:
                built = upgrade.releases(record)
                raise ConfigError(
                    f"the last run ({run_file}) built with "
                    + (f"one release only ({built[0]})" if built else "no iree= release axis")
                    + ": run e.g. doit validate iree=3.12.0,3.13.0 first")
        except ConfigError as err:
            raise InvalidCommand(f"kiln: {err}") from None
        record["upgrade"] = found
        said = rewrite(run_file, record)
        sys.stdout.write("\n".join([*upgrade.lines(found), said]) + "\n")
        return 1 if upgrade.newly_failing(found) else 0
