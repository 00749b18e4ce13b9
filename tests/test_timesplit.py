"""Where a run's time went (pipeline/report/timesplit.py) on hand-made records: per stage,
the tasks that ran or were restored, their seconds, the tools' share and kiln's own rest;
in run.json's "stage_times", report.md, report.html and the console. A real run's figures
are checked in tests/test_pipeline.py (mlp_built) and a doit run's in tests/test_reporter.py."""
from __future__ import annotations

from pipeline.report import html, table, timesplit


def _task(stage, target, status="ran", seconds=1.0, tools=None, model="m") -> dict:
    at = f"@{target}" if target else ""
    task = {"task": f"{stage}:{model}{at}", "stage": stage, "model": model, "target": target,
            "role": None, "key": "k", "status": status, "seconds": seconds}
    if tools is not None:
        task["tool_seconds"] = tools
    return task


def _tasks() -> list[dict]:
    """capture ran (no tool), lower ran on two targets and was restored on a third, codegen
    ran twice, one failed, and what this run did not do: an up-to-date codegen (its tool
    time is its last run's), a task not run for an upstream failure, a settled failure."""
    return [_task("capture", None, seconds=2.0),
            _task("lower", "a", seconds=3.0, tools=2.5), _task("lower", "b", seconds=1.0, tools=0.75),
            _task("lower", "c", status="cached", seconds=0.25),
            _task("codegen", "a", seconds=4.0, tools=3.5),
            _task("codegen", "b", status="failed", seconds=0.5, tools=0.25),
            _task("codegen", "c", status="up-to-date", seconds=0.0, tools=9.0),
            _task("validate", "b", status="skipped", seconds=0.0),
            _task("validate", "a", status="failed (cached)", seconds=0.0, tools=1.0)]


def test_each_stage_sums_what_this_run_did_and_what_its_tools_took():
    found = timesplit.split(_tasks())
    assert [s["stage"] for s in found["stages"]] == ["capture", "lower", "codegen"]
    by_stage = {s["stage"]: s for s in found["stages"]}
    assert by_stage["capture"] == {"stage": "capture", "ran": 1, "restored": 0, "seconds": 2.0,
                                   "tool_seconds": 0.0, "kiln_seconds": 2.0}
    assert by_stage["lower"] == {"stage": "lower", "ran": 2, "restored": 1, "seconds": 4.25,
                                 "tool_seconds": 3.25, "kiln_seconds": 1.0}
    # a failed run ran (its tools too); an up-to-date task did nothing in this run
    assert by_stage["codegen"] == {"stage": "codegen", "ran": 2, "restored": 0, "seconds": 4.5,
                                   "tool_seconds": 3.75, "kiln_seconds": 0.75}
    assert (found["seconds"], found["tool_seconds"], found["kiln_seconds"]) == (10.75, 7.0, 3.75)


def test_a_run_that_did_nothing_has_no_split():
    nothing = [_task("lower", "a", status="up-to-date", seconds=0.0, tools=2.0),
               _task("validate", "a", status="failed (cached)", seconds=0.0)]
    assert timesplit.split(nothing) is None
    assert timesplit.console_lines(None) == [] and timesplit.markdown(None) == []


def test_a_skipped_task_that_took_a_millisecond_lists_no_stage():
    """A bisect of a case that passed is skipped; deciding so now and then takes a measurable
    millisecond (seen in a clean-clone CI run): that is no stage run."""
    tasks = [_task("validate", "a", seconds=1.0),
             _task("bisect", "a", status="skipped", seconds=0.001)]
    assert [s["stage"] for s in timesplit.split(tasks)["stages"]] == ["validate"]


def test_tools_running_side_by_side_never_make_kilns_share_negative():
    """A stage that runs two tools at once (parallel ones add up) may count more tool time
    than wall time: kiln's own is then 0, not below."""
    found = timesplit.split([_task("validate", "a", seconds=1.0, tools=1.5)])
    assert found["stages"][0]["kiln_seconds"] == 0.0 and found["kiln_seconds"] == 0.0


def test_the_console_says_the_total_and_the_costliest_stages():
    lines = timesplit.console_lines(timesplit.split(_tasks()))
    assert len(lines) == 2, lines
    assert lines[0] == ("time in stages: 10.8 s over 6 tasks (summed over parallel jobs), "
                        "7 s of it in tools (65%), 3.75 s kiln's own")
    # the costliest first, each with its tools' share
    assert lines[1].startswith("  codegen 4.5 s (tools 83%), lower 4.25 s (tools 76%), "
                               "capture 2 s (tools 0%)"), lines[1]


def test_report_md_has_the_table_of_stages():
    record = {"tasks": _tasks()}
    text = table.markdown(record)
    assert "## Where the time went" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert any(line.split("|")[1].strip() == "lower" and "4.25 s" in line and "3.25 s" in line
               for line in rows), rows
    assert any(line.split("|")[1].strip() == "all stages" and "10.8 s" in line for line in rows)
    nothing = {"tasks": [_task("lower", "a", status="up-to-date", seconds=0.0)]}
    assert "Where the time went" not in table.markdown(nothing)


def test_report_html_has_the_table_of_stages():
    text = html.page({"tasks": _tasks()}, draw_charts=False)
    assert "<table class='stage-times'>" in text
    assert "<td>codegen</td>" in text and "3.75 s" in text
    nothing = html.page({"tasks": [_task("lower", "a", status="up-to-date", seconds=0.0)]},
                        draw_charts=False)
    assert "stage-times" not in nothing
