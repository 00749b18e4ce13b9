"""kiln's doit reporter (pipeline/driver/reporter.py) in real doit runs of a tiny project whose
stages are pure Python: what the record says of each task, in which order, on a first run, an
up-to-date one, an ignored task and a run of no stage. tests/test_progress.py runs the same
project for the progress display."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.driver.reporter import Cases
from pipeline.vocab import Status

REPO = Path(__file__).resolve().parent.parent

DODO = '''"""A tiny project: prepare:toy, then validate:toy@<target> stages that sleep, pass
or fail, reported by kiln's reporter; toy.json says which targets there are and what each
does."""
import atexit, json, os, signal, sys, time
from pathlib import Path
SETTINGS = json.loads(Path("toy.json").read_text())
sys.path.insert(0, SETTINGS["repo"])
from pipeline import process
from pipeline.driver.reporter import make_reporter
from pipeline.report.record import RunLog
from pipeline.run.entry import StageEntry

RUN = RunLog()
# the last thing the reporter does: what it finds then
AFTER = lambda: Path("after").write_text(str(Path("build/run.json").exists()))
DOIT_CONFIG = {"reporter": make_reporter(Path("build/run.json"), RUN, after=AFTER,
                                         strict=SETTINGS.get("strict", False)),
               "backend": "sqlite3", "dep_file": ".doit.db", "continue": True,
               "default_tasks": ["prepare", "validate"]}
# what this run loaded: a piped run never loads rich, a no-op run not even pipeline.report.progress
atexit.register(lambda: Path("loaded").write_text(
    " ".join(m for m in ("rich", "pipeline.report.progress") if m in sys.modules)))
AFTER_TASK = {"later": "quick", "doomed": "broken"}   # the target whose task must pass first
process.stop_on_signals()   # as kiln's dodo.py: a Ctrl-C ends the run with its record


def stage(model, target, does):
    """As the runner does: the entry in memory for the reporter and in a file for later runs."""
    name = f"validate:{model}@{target}"
    if does == "raises":   # before the entry is written: the reporter has doit's message only
        raise RuntimeError("the driver crashed")
    if does == "stops":   # a Ctrl-C while it runs
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(10)
    entry = StageEntry(name, "validate", model, target)
    if does in ("fails", "failed before"):   # (before: its failure remembered in the cache)
        entry.status = "failed" if does == "fails" else "failed (cached)"
        entry.error, entry.seconds = "the device said no", 0.1
        entry.log = f"build/logs/{target}.log"
    else:
        time.sleep(does)
        Path(f"out-{target}").write_text("done")
        entry.status, entry.seconds, entry.key = "ran", does, f"key-{target}"
        entry.tool_seconds = does / 2   # as if a tool ran for half of it
        entry.result = {"passed": True, "max_abs_error": 0.0, "max_rel_error": 0.0}
        entry.warnings = ["a warning of this run"] if target == "quick" else []
    RUN.entries[name] = entry
    Path(f"entry-{target}.json").write_bytes(entry.to_json())
    return entry.status != "failed"


def prepare():
    Path("out-prepare").write_text("done")
    RUN.entries["prepare:toy"] = StageEntry("prepare:toy", "prepare", "toy", None, status="ran",
                                            seconds=0.0)


def task_prepare():
    """A stage run once per model that declares no role."""
    yield {"name": "toy", "actions": [prepare], "targets": ["out-prepare"], "uptodate": [True],
           "meta": {"kiln": {"stage": "prepare", "model": "toy", "target": None,
                             "entry": "entry-prepare.json"}}}


def task_validate():
    for target, does in SETTINGS["stages"].items():
        yield {"name": f"toy@{target}", "actions": [(stage, ["toy", target, does])],
               "targets": [f"out-{target}"], "uptodate": [True],
               "task_dep": [f"validate:toy@{AFTER_TASK[target]}"] if target in AFTER_TASK else [],
               "meta": {"kiln": {"stage": "validate", "model": "toy", "target": target,
                                 "role": "verdict", "entry": f"entry-{target}.json",
                                 **({"xfail": SETTINGS["xfail"][target]}
                                    if target in SETTINGS.get("xfail", {}) else {})}}}


def task_hello():
    """A task that is no stage: a run of it alone keeps the last record."""
    return {"actions": ["echo hello"], "verbosity": 2}
'''


def make_project(tmp_path: Path, slow: float, broken: bool = False, **settings) -> Path:
    """A project of validate:toy@slow (sleeps `slow` s), @quick, @later (after quick) and,
    when broken, @broken (fails, saying why), @known (its failure from an earlier run),
    @crash (raises before it says anything) and @doomed (after broken). settings: toy.json's
    others (stages, xfail, strict)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    stages = {"slow": slow, "quick": 0.0, "later": 0.0}
    if broken:
        stages.update(broken="fails", known="failed before", crash="raises", doomed=0.0)
    (tmp_path / "toy.json").write_text(json.dumps({"repo": str(REPO), "stages": stages,
                                                   **settings}))
    (tmp_path / "dodo.py").write_text(DODO)
    return tmp_path


def doit_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(extra)
    return env


DOIT = [sys.executable, "-m", "doit", "-n", "2", "-P", "thread"]


def doit(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(DOIT + list(args), cwd=root, env=doit_env(**{"KILN_PROGRESS": "0", **env}),
                          capture_output=True, text=True, timeout=60, check=False)


def run_record(root: Path) -> list[dict]:
    return json.loads((root / "build" / "run.json").read_text())["tasks"]


def test_the_record_says_what_each_task_did_in_plan_order(tmp_path):
    root = make_project(tmp_path, slow=0.2, broken=True)
    proc = doit(root)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    prepare, *validate = run_record(root)
    assert prepare["task"] == "prepare:toy" and prepare["status"] == "ran"
    # the roles the plan put in each task's meta; a stage that declares none, null
    assert prepare["role"] is None and {t["role"] for t in validate} == {"verdict"}
    record = {t["task"].split("@")[1]: t for t in validate}
    assert list(record) == ["slow", "quick", "later", "broken", "known", "crash", "doomed"]
    assert {t: e["status"] for t, e in record.items()} == {
        "slow": "ran", "quick": "ran", "later": "ran", "broken": "failed",
        "known": "failed (cached)", "crash": "failed", "doomed": "skipped"}
    assert record["broken"]["error"] == "the device said no"      # the stage's own words
    assert "RuntimeError: the driver crashed" in record["crash"]["error"]   # doit's, at least
    assert record["doomed"]["reason"] == "an upstream stage failed"
    assert record["doomed"]["seconds"] == 0.0 and record["doomed"]["key"] is None
    # the fields a task left empty are left out, but for the ones a reader always finds
    assert "error" not in record["slow"] and record["broken"]["key"] is None
    assert record["slow"]["key"] == "key-slow"
    assert "warning: validate:toy@quick: a warning of this run" in proc.stdout
    assert "run record: build/run.json" in proc.stdout
    assert (root / "after").read_text() == "True"   # after the record was written
    _check_console(proc.stdout)


# the console's end of the broken project's run: a line per failed case, then the counts
FAILURE_LINES = [
    "FAILED toy@broken at validate: the device said no  (log: build/logs/broken.log)",
    "FAILED toy@crash at validate: RuntimeError: the driver crashed",
    "FAILED toy@known at validate (cached): the device said no  (log: build/logs/known.log)"]
SUMMARY = ("kiln: 7 cases: 3 passed, 3 failed, 1 skipped; 1 of the failures cached "
           "(retry=failed runs it again)")


def _check_console(out: str) -> None:
    """None of doit's own failure reports but for the task that raised (a bug: its
    traceback); the failures, each in a line, and the summary line last."""
    lines = out.splitlines()
    assert "TaskFailed" not in out and "UnmetDependency" not in out, out
    assert not any(line.startswith("####") for line in lines), out
    assert "<stdout>" not in out and "<stderr>" not in out
    assert "TaskError - taskid:validate:toy@crash" in lines    # what raised still says so
    assert [line for line in lines if line.startswith("FAILED")] == FAILURE_LINES
    assert lines[-1] == SUMMARY


def test_a_run_of_many_cases_shows_counts_failures_and_the_summary_only(tmp_path):
    """Past KILN_CONSOLE_CASES cases: no line per task and no table (it is in report.md),
    the cases done of the total while stages run, and the same failures and summary. A no-op
    run after it says the same, in as few lines."""
    root = make_project(tmp_path, slow=0.3, broken=True)
    many = {"KILN_CONSOLE_CASES": "6", "KILN_PROGRESS": "1", "KILN_PROGRESS_AFTER": "0",
            "KILN_PROGRESS_EVERY": "0.1"}
    proc = subprocess.run(DOIT, cwd=root, env=doit_env(**many), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert not [line for line in lines if line.startswith((".  ", "-- "))], proc.stdout
    assert "model    target" not in proc.stdout   # no table
    assert ("7 cases, more than KILN_CONSOLE_CASES=6: the table of every case is in "
            "build/report.md (and report.html)") in lines
    counts = [line for line in lines if re.fullmatch(r"kiln: \d/7 cases done.*", line)]
    assert counts, proc.stdout                   # while the slow stage ran
    _check_console(proc.stdout)

    proc = doit(root, **many)                    # the failed tasks run again; others are up to date
    assert not [line for line in proc.stdout.splitlines() if line.startswith("-- ")]
    assert proc.stdout.splitlines()[-1] == SUMMARY
    assert "| toy     | slow     | passed" in (root / "build" / "report.md").read_text()


def test_cases_end_when_each_of_their_stages_has():
    """A case is a model x target with its variants' stages; the per-model ones count
    towards no case; a run without cases counts tasks."""
    class Task:
        def __init__(self, name, model, target, **meta):
            self.name, self.meta = name, {"kiln": {"model": model, "target": target, **meta}}

    tasks = [Task("capture:m", "m", None), Task("lower:m@cpu", "m", "cpu"),
             Task("lower:m@cpu~fast", "m", "cpu~fast", soft=True), Task("lower:m@gpu", "m", "gpu")]
    cases = Cases([(t.name, t.meta["kiln"]["model"], t.meta["kiln"]["target"]) for t in tasks])
    assert (cases.total, cases.text()) == (2, "0/2 cases done")
    cases.ended(tasks[0], failed=True)    # a front end's failure fails its cases
    cases.ended(tasks[2], failed=True)    # a variant's does not
    assert cases.text() == "0/2 cases done, 1 failed"
    cases.ended(tasks[1])
    assert cases.text() == "1/2 cases done, 1 failed"
    front = Cases([("capture:m", "m", None), ("capture:n", "n", None)])
    front.ended(tasks[0])
    assert front.text() == "1/2 tasks done"


def test_an_up_to_date_run_keeps_what_the_last_run_found_but_not_what_it_did(tmp_path):
    root = make_project(tmp_path, slow=0.0)
    assert doit(root).returncode == 0
    proc = doit(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = [t for t in run_record(root) if t["stage"] == "validate"]
    assert {t["status"] for t in record} == {"up-to-date"}
    assert all(t["seconds"] == 0.0 and t["result"]["passed"] for t in record)
    quick = next(t for t in record if t["task"] == "validate:toy@quick")
    assert "warnings" not in quick and "a warning of this run" not in proc.stdout


def test_the_record_and_the_console_say_where_the_time_went(tmp_path):
    """run.json's stage_times, and two lines above the record's: what this run's stages
    took and the tools' share. A run that runs nothing says nothing of it, as before."""
    root = make_project(tmp_path, slow=0.4)
    proc = doit(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    split = json.loads((root / "build" / "run.json").read_text())["stage_times"]
    prepare, validate = split["stages"]
    assert (prepare["stage"], prepare["ran"], prepare["seconds"]) == ("prepare", 1, 0.0)
    assert validate == {"stage": "validate", "ran": 3, "restored": 0, "seconds": 0.4,
                        "tool_seconds": 0.2, "kiln_seconds": 0.2}
    lines = proc.stdout.splitlines()
    at = lines.index("time in stages: 400 ms over 4 tasks (summed over parallel jobs), "
                     "200 ms of it in tools (50%), 200 ms kiln's own")
    assert lines[at + 1] == "  validate 400 ms (tools 50%)"   # (a stage that took no time: not)
    assert lines[at + 2] == "run record: build/run.json"

    again = doit(root)
    assert "time in stages" not in again.stdout
    assert "stage_times" not in json.loads((root / "build" / "run.json").read_text())


def test_an_ignored_task_is_recorded_as_skipped(tmp_path):
    root = make_project(tmp_path, slow=0.0)
    subprocess.run(DOIT[:3] + ["ignore", "validate:toy@quick"], cwd=root, env=doit_env(),
                   check=True, capture_output=True)
    assert doit(root, "validate:toy@quick").returncode == 0
    (quick,) = run_record(root)
    assert (quick["status"], quick["reason"], quick["seconds"]) == ("skipped", "ignored", 0.0)


def test_a_run_of_no_stage_keeps_the_last_record(tmp_path):
    root = make_project(tmp_path, slow=0.0)
    assert doit(root).returncode == 0
    run_json = root / "build" / "run.json"
    before = (run_json.read_bytes(), run_json.stat().st_mtime_ns)
    proc = doit(root, "hello")
    assert proc.returncode == 0 and "hello" in proc.stdout
    assert (run_json.read_bytes(), run_json.stat().st_mtime_ns) == before
    assert "run record" not in proc.stdout and (root / "after").read_text() == "True"


def test_the_exit_code_follows_unexpected_failures_only(tmp_path):
    """A failing case listed as expected (its tasks' meta "xfail") leaves doit's exit code 0
    and is xfail in the record's reports; an unexpected pass is named, and fails the run
    under strict. (An unlisted failure fails the run: the test above.)"""
    xfail = {"broken": "a known bug", "quick": "flaky"}
    stages = {"quick": 0.0, "broken": "fails", "doomed": 0.0}
    root = make_project(tmp_path / "lenient", slow=0.0, stages=stages, xfail=xfail)
    proc = doit(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "xpass: toy@quick passed, but is listed as expected to fail (flaky)" in proc.stdout
    # (doomed, whose task waits on broken's, is a case of its own here: skipped)
    assert "kiln: 3 cases: 0 passed, 0 failed, 1 xfail, 1 xpass, 1 skipped" in proc.stdout
    assert "xfail: FAILED at validate: the device said no" in proc.stdout
    assert {t["task"]: t.get("xfail") for t in run_record(root)}["validate:toy@broken"] == \
        "a known bug"
    assert "expected (xfail): a known bug" in (root / "build" / "report.md").read_text()

    strict = make_project(tmp_path / "strict", slow=0.0, stages={"quick": 0.0},
                          xfail={"quick": "flaky"}, strict=True)
    proc = doit(strict)   # every task passed: doit says 0, the verdict 1
    assert proc.returncode == 1 and "strict=1: this fails the run" in proc.stdout
    assert json.loads((strict / "build" / "run.json").read_text())["strict"] is True
    proc = doit(strict)   # a no-op run: the last summary, and its verdict
    assert proc.returncode == 1 and "strict=1: this fails the run" in proc.stdout


def test_a_stopped_run_records_every_task_finished_interrupted_or_not_started(tmp_path):
    """Ctrl-C while validate:toy@stop runs (one process: doit's order, so which task is
    where is known): it is interrupted, those after it never started; no traceback, and the
    exit code a shell gives a run a SIGINT ended."""
    stages = {"quick": 0.0, "stop": "stops", "slow": 0.0, "later": 0.0}
    root = make_project(tmp_path, slow=0.0, stages=stages)
    proc = subprocess.run(DOIT[:3], cwd=root, env=doit_env(KILN_PROGRESS="0"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 128 + signal.SIGINT, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    record = json.loads((root / "build" / "run.json").read_text())
    assert record["interrupted"] == "SIGINT"
    assert {t["task"]: t["status"] for t in record["tasks"]} == {
        "prepare:toy": "ran", "validate:toy@quick": "ran", "validate:toy@stop": Status.INTERRUPTED,
        "validate:toy@slow": Status.NOT_STARTED, "validate:toy@later": Status.NOT_STARTED}
    assert proc.stdout.splitlines()[-1] == ("kiln: interrupted (SIGINT): 4 cases: 1 passed, "
                                            "0 failed, 1 interrupted, 2 not started; run the "
                                            "same command again to finish them")
