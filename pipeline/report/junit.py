"""build/junit.xml: the run record as JUnit XML, for CI systems that show per-case results.

One <testcase> per model x target (classname the model, name the target, time the seconds
of its stages, a model's front end counted in each of its rows as report.html does): a
failure holds the stage it failed at and the error in <failure message=...>, with the
command and log in its text; an expected failure (xfail) and a target skipped here (no
device) are <skipped>; an unexpected pass (xpass) passes, saying so, and fails under strict=1
as the exit code does (pipeline.report.verdict). A stopped run's unfinished cases are each an
<error type="interrupted"> saying where and why (a CI reading the file shows the run red,
never green for what did not run); stopped after its last case, the run itself is one.
Written with the stdlib's ElementTree.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from ..vocab import Kind
from . import table
from .table import UNFINISHED_KINDS

# characters XML 1.0 cannot hold (a compiler's colour codes): shown as '?', not a broken file
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _text(value) -> str:
    return _NOT_XML.sub("?", str(value))


def xml(record: dict) -> bytes:
    """The record as one <testsuites> with one <testsuite name="kiln">."""
    suite = ET.Element("testsuite", name="kiln")
    counts = {"failures": 0, "skipped": 0, "errors": 0}
    if record.get("error"):   # a run stopped before any stage: one failing case says why
        case = ET.SubElement(suite, "testcase", classname="kiln", name="configuration", time="0")
        ET.SubElement(case, "failure", message=_text(record["error"]), type="configuration")
        counts["failures"] += 1
    for row in table.rows(record.get("tasks", [])):
        said = _case(suite, row, bool(record.get("strict")))
        if said:
            counts[said] += 1
    if record.get("interrupted") and not counts["errors"]:   # no case says the run stopped
        case = ET.SubElement(suite, "testcase", classname="kiln", name="run", time="0")
        ET.SubElement(case, "error", type=Kind.INTERRUPTED, message=_text(
            f"the run was interrupted ({record['interrupted']}) before it ended"))
        counts["errors"] += 1
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(counts["failures"]))
    suite.set("errors", str(counts["errors"]))
    suite.set("skipped", str(counts["skipped"]))
    suite.set("time", f"{sum(float(case.get('time')) for case in suite):.3f}")
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def _case(suite: ET.Element, row: dict, strict: bool) -> str | None:
    """Add row's <testcase>; return what it counts as: 'failures', 'errors', 'skipped' or
    None."""
    seconds = sum(e.get("seconds") or 0.0 for e in row["chain"])
    case = ET.SubElement(suite, "testcase", classname=row["model"], name=row["target"],
                         time=f"{seconds:.3f}")
    failed, kind = row["failed"], row["kind"]
    where = f"failed at {failed['stage']}: {failed.get('error') or 'no error recorded'}" \
        if failed else row["outcome"]
    if kind == Kind.FAILED:
        element = ET.SubElement(case, "failure", message=_text(where),
                                type=failed["stage"] if failed else Kind.FAILED)
        element.text = _text(_details(failed)) if failed else None
        return "failures"
    if kind in UNFINISHED_KINDS:   # no verdict: the run was stopped first
        ET.SubElement(case, "error", message=_text(row["outcome"]), type=Kind.INTERRUPTED)
        return "errors"
    if kind in (Kind.XFAIL, Kind.SKIPPED):
        message = f"xfail: {row['expected']} ({where})" if kind == Kind.XFAIL else row["outcome"]
        ET.SubElement(case, "skipped", message=_text(message))
        return "skipped"
    if kind == Kind.XPASS:
        said = f"xpass: passed, but listed as expected to fail ({row['expected']})"
        if strict:
            ET.SubElement(case, "failure", message=_text(said), type=Kind.XPASS)
            return "failures"
        ET.SubElement(case, "system-out").text = _text(said)
    return None


def _details(failed: dict) -> str:
    """A failure's text: the error, the command that failed and its log."""
    return "\n".join([failed.get("error") or "no error recorded",
                      *([f"command: {failed['command']}"] if failed.get("command") else []),
                      *([f"log: {failed['log']}"] if failed.get("log") else [])])
