"""The run record (pipeline/report/record.py) on hand-made records: the summary printed at
the end of a run, the files publish writes (build/run.json, report.md, report.html: with
where the time went, pipeline/report/timesplit.py) and reuses for an unchanged record, and the record of a run stopped before any stage."""
from __future__ import annotations

import json

from pipeline.report import record as run_record
from pipeline.report.table import table


def _entry(stage: str, target: str | None, **extra) -> dict:
    at = f"@{target}" if target else ""
    return {"task": f"{stage}:m{at}", "stage": stage, "model": "m", "target": target,
            "role": "verdict" if stage == "validate" else None, "key": "k", "status": "ran",
            **extra}


def hand_made_record() -> dict:
    """m lowered and validated on a (passed) and b (failed); a read-only cache warned in three
    stages, once the run; the remote cache was asked by three."""
    read_only = ["the cache is read-only: nothing stored"]
    passed = {"passed": True, "max_abs_error": 1e-6, "max_rel_error": 1e-5}
    return {"tasks": [
        _entry("lower", "a", warnings=read_only, remote="hit"),
        _entry("validate", "a", warnings=read_only, remote="miss", result=passed),
        _entry("lower", "b", warnings=read_only, remote="stored"),
        _entry("validate", "b", status="failed", error="max abs error 3 > atol 1e-4")],
        "warnings": ["moved .doit.db aside: it was damaged"]}


def test_the_summary_is_the_table_each_warning_once_and_the_remote(tmp_path):
    record = hand_made_record()
    text = run_record.publish(tmp_path / "build" / "run.json", record).text
    lines = text.splitlines()
    assert "\n" + table(record["tasks"]) + "\n" in text
    assert [line for line in lines if line.startswith("warning:")] == [
        "warning: lower:m@a (and 2 more tasks): the cache is read-only: nothing stored",
        "warning: moved .doit.db aside: it was damaged"]
    assert "remote cache: 1 hits, 1 misses, 0 errors, 1 stored" in lines
    # the record's place, then the counts as the run's last line
    assert lines[-2:] == [f"run record: {tmp_path / 'build' / 'run.json'}",
                          "kiln: 2 cases: 1 passed, 1 failed"]
    assert text.endswith("\n")


def test_no_remote_line_when_no_stage_asked_one(tmp_path):
    record = {"tasks": [_entry("validate", "a", result={"passed": True})]}
    text = run_record.publish(tmp_path / "run.json", record).text
    assert "remote cache" not in text and "warning" not in text


def test_publish_writes_the_record_and_its_reports_then_reuses_them(tmp_path):
    run_file = tmp_path / "build" / "run.json"
    files = [run_file, run_file.with_name("report.md"), run_file.with_name("report.html")]
    text = run_record.publish(run_file, hand_made_record()).text
    assert _written(run_file) == hand_made_record()
    assert "# kiln run" in files[1].read_text() and "## Failures" in files[1].read_text()
    assert "<table class='matrix'>" in files[2].read_text()

    stamps = [f.stat().st_mtime_ns for f in files]
    assert run_record.publish(run_file, hand_made_record()).text == text   # the same record: as is
    assert [f.stat().st_mtime_ns for f in files] == stamps

    files[2].unlink()   # a report gone is written again
    assert run_record.publish(run_file, hand_made_record()).text == text
    assert files[2].is_file()

    changed = hand_made_record()
    changed["tasks"][3].update(status="ran", result={"passed": True}, error=None)
    run_record.publish(run_file, changed)
    assert json.loads(run_file.read_text())["tasks"][3]["status"] == "ran"
    assert "## Failures" not in files[1].read_text()


def test_a_record_that_cannot_be_written_says_so_and_is_written_next_time(tmp_path):
    (tmp_path / "build").write_text("a file where the build directory should be")
    run_file = tmp_path / "build" / "run.json"
    text = run_record.publish(run_file, hand_made_record()).text
    assert text.splitlines()[-2].startswith("kiln: the run record was not written: ")
    (tmp_path / "build").unlink()
    assert run_record.publish(run_file, hand_made_record()).text.splitlines()[-2] == \
        f"run record: {run_file}"
    assert _written(run_file) == hand_made_record()


def _written(run_file) -> dict:
    """run.json as written, less where the time went (its stages ran: it has the field)."""
    written = json.loads(run_file.read_text())
    assert [s["stage"] for s in written.pop("stage_times")["stages"]] == ["lower", "validate"]
    return written


def test_a_run_stopped_before_any_stage_replaces_the_last_record(tmp_path):
    run_file = tmp_path / "build" / "run.json"
    run_record.publish(run_file, hand_made_record())
    run_record.write_failed_run(run_file, "targets.yaml:3: unknown backend 'cpu2'")
    assert json.loads(run_file.read_text()) == {
        "tasks": [], "error": "targets.yaml:3: unknown backend 'cpu2'"}
    markdown = run_file.with_name("report.md").read_text()
    assert "stopped before building anything" in markdown and "cpu2" in markdown
    assert "unknown backend" in run_file.with_name("report.html").read_text()
