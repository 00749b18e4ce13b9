"""What the console says at the end of a run, whether it holds four cases or four hundred.

A run of at most KILN_CONSOLE_CASES model x target cases (default 30) shows the summary
table; a larger one says where the table is (report.md, report.html) instead, since
hundreds of rows bury what went wrong. Either way there follows one line per unexpected
failure (the case or task, the stage, the error in one line, its log), each unexpected
pass, and a summary line of counts. The exit code is pipeline.report.verdict's: this only
words it.

The reporter reads case_limit on every run, a no-op included: the rest is imported where used.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..vocab import Kind, Status

if TYPE_CHECKING:   # (a no-op run after a no-op run reads only case_limit here)
    from .verdict import Verdict

CASES_ENV = "KILN_CONSOLE_CASES"
DEFAULT_CASES = 30
# a failure line's outcome beyond this many characters is cut (the whole is in the record)
LINE_WIDTH = 240


def case_limit(env=os.environ) -> tuple[int, str | None]:
    """(the most cases a run may have and still list its tasks and print its table, a
    warning where the environment's value is unreadable and the default stands)."""
    text = env.get(CASES_ENV)
    if text is None:
        return DEFAULT_CASES, None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        return DEFAULT_CASES, (f"{CASES_ENV}={text!r}: expected a whole number of cases, 0 or "
                               f"more; {DEFAULT_CASES} it is")
    return value, None


def lines(record: dict, found: Verdict, limit: int, report_file: str) -> tuple[list[str], str]:
    """(the table, or where it is past `limit` cases, then the unexpected failures and
    passes; the summary line)."""
    from . import table, verdict  # (tabulate: not needed when the summary is the last run's)
    tasks = record["tasks"]
    table_rows = table.rows(tasks)
    if len(table_rows) <= limit:
        shown = table.table(tasks, table_rows=table_rows)
    else:
        shown = (f"{len(table_rows)} cases, more than {CASES_ENV}={limit}: the table of every "
                 f"case is in {report_file} (and report.html)")
    said = [f"{r['model']}@{r['target']} {line}" for r in table_rows for line in r["said"]]
    return (["", shown, *said, *failure_lines(tasks, table_rows, found), *verdict.lines(found)],
            summary_line(tasks, table_rows, found))


def failure_lines(tasks: list[dict], table_rows: list[dict], found: Verdict) -> list[str]:
    """One line per unexpected failure: each failed case, then each failed task no case
    holds (a model's front end where no target was selected)."""
    from .table import short_error
    said = []
    for r in table_rows:
        if r["kind"] == Kind.FAILED:
            said.append(_line(f"{r['model']}@{r['target']}", r["outcome"], r["failed"]))
            said += [_diagnosis_line(r["diagnosis"])] if r["diagnosis"] else []
    stray = set(found.failed)
    for task in tasks:
        if task["task"] in stray:
            said.append(_line(task["task"], f"FAILED at {task['stage']}{_cached(task)}: "
                              f"{short_error(task.get('error'))}", task))
    return said


def _line(what: str, outcome: str, failed: dict | None) -> str:
    said = outcome.removeprefix("FAILED").strip()
    if len(said) > LINE_WIDTH:
        said = said[:LINE_WIDTH - 1] + "…"
    log = f"  (log: {failed['log']})" if failed and failed.get("log") else ""
    return f"FAILED {what}" + (f" {said}" if said else "") + log


def _diagnosis_line(found: dict) -> str:
    """The line under a failure that says what its diagnosis found (bisect's first bad
    dispatch), and where its files are."""
    files = f" ({', '.join(found['files'])})" if found["files"] else ""
    return f"  {found['stage']}: {found['summary']}{files}"


def _cached(entry: dict) -> str:
    return " (cached)" if _remembered(entry) else ""


def _remembered(entry: dict) -> bool:
    """A failure from the cache (its status 'failed (cached)')."""
    return entry["status"] == Status.CACHED_FAILURE


def summary_line(tasks: list[dict], table_rows: list[dict], found: Verdict) -> str:
    """'kiln: 412 cases: 380 passed, 12 failed, 15 xfail, 2 xpass, 3 skipped; 4 of the
    failures cached (retry=failed runs them again)'. Failed counts what fails the run: the
    unexpected failures, a failed task no case holds among them. A stopped run's begins
    'kiln: interrupted (SIGINT):' and counts the cases it left unfinished."""
    # (in the order the kinds are counted)
    counts = {kind: sum(r["kind"] == kind for r in table_rows) for kind in Kind}
    counts[Kind.FAILED] = len(found.failed)
    what = f"{len(table_rows)} case{'s' * (len(table_rows) != 1)}" if table_rows \
        else "no model x target case"
    always = (Kind.FAILED,) if counts[Kind.COMPILED] else (Kind.PASSED, Kind.FAILED)
    said = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n or kind in always)
    cached = sum(1 for r in table_rows if r["kind"] in (Kind.FAILED, Kind.XFAIL) and r["failed"]
                 and _remembered(r["failed"]))
    cached += sum(1 for t in tasks if t["task"] in found.failed and _remembered(t))
    again = "" if not cached else (f"; {cached} of the failures cached (retry=failed runs "
                                   f"{'them' if cached > 1 else 'it'} again)")
    if found.known:   # (iree=A,B: pipeline.report.upgrade)
        said += (f" ({len(found.known)} more failed, none of them newly: only a case the "
                 "newer release fails and the older passed fails the run)")
    stopped = f"interrupted ({found.interrupted}): " if found.interrupted else ""
    rest = "; run the same command again to finish them" if found.unfinished else ""
    return f"kiln: {stopped}{what}: {said}{again}{rest}"
