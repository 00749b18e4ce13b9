"""A stopped run's record on hand-made entries, no compiler: every selected case listed, the
unfinished ones (a stage interrupted, or not started) as such in the table, the summary line,
report.md, report.html and junit.xml, and a verdict that fails the run even when every case
that finished passed. The reporter writing it on a real Ctrl-C is in tests/test_process.py
and tests/test_reporter.py."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from pipeline.report import console, html, junit, table, verdict
from pipeline.vocab import Status


def task(stage, model, target, status="ran", role=None, **extra) -> dict:
    name = f"{stage}:{model}" + (f"@{target}" if target else "")
    return {"task": name, "stage": stage, "model": model, "target": target, "role": role,
            "status": status, "seconds": 1.0, **extra}


def stopped_record() -> dict:
    """a@cpu compiled before the stop, b@cpu's codegen was running, c@cpu never started."""
    return {"interrupted": "SIGINT", "tasks": [
        task("legalize", "a", None), task("codegen", "a", "cpu", role="module"),
        task("legalize", "b", None),
        task("codegen", "b", "cpu", Status.INTERRUPTED, role="module",
             error="the run was stopped (SIGINT) while it ran"),
        task("legalize", "c", None, Status.NOT_STARTED, reason="the run was stopped (SIGINT) first"),
        task("codegen", "c", "cpu", Status.NOT_STARTED, role="module",
             reason="the run was stopped (SIGINT) first")]}


def test_unfinished_cases_are_rows_of_their_own_kind_saying_where():
    kinds = {r["model"]: (r["kind"], r["outcome"]) for r in table.rows(stopped_record()["tasks"])}
    assert kinds["a"] == ("compiled", "compiled")
    assert kinds["b"][0] == Status.INTERRUPTED and kinds["b"][1].startswith("interrupted at codegen")
    assert kinds["c"][0] == Status.NOT_STARTED and kinds["c"][1].startswith("not started")


def test_a_stopped_run_fails_even_when_every_finished_case_passed():
    found = verdict.verdict(stopped_record())
    assert found.failed == () and found.unfinished == ("b@cpu", "c@cpu")
    assert found.exit_code != 0
    finished = {**stopped_record(), "tasks": stopped_record()["tasks"][:2]}
    assert verdict.verdict(finished).exit_code != 0   # (the record still says it was stopped)
    lines, summary = console.lines(stopped_record(), found, 30, "report.md")
    assert summary.startswith("kiln: interrupted (SIGINT): 3 cases: ")
    assert "1 compiled, 1 interrupted, 1 not started" in summary
    assert "run the same command again to finish" in summary


def test_junit_lists_every_case_with_the_unfinished_ones_in_error():
    suite = ET.fromstring(junit.xml(stopped_record())).find("testsuite")
    found = {c.get("classname"): c for c in suite.iter("testcase")}
    assert sorted(found) == ["a", "b", "c"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "0", "2")
    assert list(found["a"]) == []
    for model in ("b", "c"):
        error = found[model].find("error")
        assert error.get("type") == "interrupted" and "SIGINT" in error.get("message")
    assert found["b"].find("error").get("message").startswith("interrupted at codegen")


def test_junit_of_a_run_stopped_after_its_last_case_still_fails():
    """Nothing but a model's front end was left (no case holds it): the run itself errs."""
    late = {"interrupted": "SIGTERM", "tasks": [
        task("codegen", "a", "cpu", role="module"),
        task("legalize", "z", None, Status.NOT_STARTED, reason="the run was stopped first")]}
    suite = ET.fromstring(junit.xml(late)).find("testsuite")
    assert suite.get("errors") == "1" and suite.get("tests") == "2"
    assert "interrupted (SIGTERM)" in suite.find("testcase[@name='run']/error").get("message")


def test_report_md_and_html_say_the_run_was_interrupted():
    text = table.markdown(stopped_record())
    assert "**The run was interrupted (SIGINT)**" in text
    assert "2 of 3 cases did not finish" in text
    assert "| b       | cpu      | interrupted at codegen" in text
    page = html.page(stopped_record(), draw_charts=False)
    assert "The run was interrupted (SIGINT)" in page
    assert "class='cell interrupted'" in page and "class='cell not-started'" in page
    assert "1 interrupted</span>" in page and "1 not started</span>" in page
