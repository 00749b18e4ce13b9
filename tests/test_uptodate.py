"""A settled outcome (pipeline/run/uptodate.py: settled): a failure the cache remembers, or a
skip for an absent input, is reported again by the next run without a plan while nothing it
was a verdict on changed; anything in its key changed, retry=failed, or a failure that was
no verdict, runs the stage again. The end-to-end test runs kiln's engine over pure-Python
stages (tests/toy_kiln.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from toy_kiln import doit, make_project

from pipeline.cache.store import Store
from pipeline.run.entry import StageEntry
from pipeline.run.uptodate import KeySources, settled, verdict_on
from pipeline.vocab import Status


def statuses(root: Path) -> dict[str, str]:
    return {t["task"]: t["status"] for t in
            json.loads((root / "build" / "run.json").read_text())["tasks"]}


def made_a_plan(proc) -> bool:
    """Whether the run imported what only making the plan imports (tests/test_memo.py)."""
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    return bool(imported & {"networkx", "toy_stages", "yaml"})


def explained(root: Path) -> dict[str, str]:
    """task -> what `doit explain` says the next run does to it (up-to-date ones: none)."""
    out = doit(root, "explain").stdout
    return {line.split()[1]: line.split()[0] for line in out.splitlines()
            if line.split()[:1] in (["run"], ["restore"], ["skip"], ["maybe"], ["fail"])}


def test_remembered_failures_make_no_plan_until_their_key_changes(tmp_path):
    root = make_project(tmp_path / "toy", cases=3, failing=2)
    first = doit(root)
    assert first.returncode != 0, first.stdout[-2000:]   # (cases failed: verdict.py)
    assert statuses(root)["prepare:c0000"] == "failed" and \
        statuses(root)["check:c0000@cpu"] == "skipped"
    # the next run (its stages in doit's child processes) says so from the entries alone
    assert explained(root) == {"prepare:c0000": "fail", "prepare:c0001": "fail",
                               "check:c0000@cpu": "skip", "check:c0001@cpu": "skip"}
    second = doit(root, "-n", "2")
    was = statuses(root)
    assert {t: s for t, s in was.items() if s != "up-to-date"} == {
        "prepare:c0000": Status.CACHED_FAILURE, "prepare:c0001": Status.CACHED_FAILURE,
        "check:c0000@cpu": "skipped", "check:c0001@cpu": "skipped"}
    assert second.returncode == first.returncode
    third = doit(root, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert not made_a_plan(third), "a run over remembered failures made the plan"
    assert statuses(root) == was and third.returncode == first.returncode
    record = (root / "build" / "run.json").stat().st_mtime_ns
    assert third.stdout == doit(root).stdout   # the same summary, reused: no record built
    assert json.loads((root / "build" / ".kiln" / "summary.json").read_text())["stamp"]
    assert (root / "build" / "run.json").stat().st_mtime_ns == record
    row = next(t for t in json.loads((root / "build" / "run.json").read_text())["tasks"]
               if t["task"] == "prepare:c0000")
    assert row["why"].startswith("failed with this same key before") and row["seconds"] == 0.0
    assert row["error"] == "prepare: this case holds FAIL" and "verdict_on" not in row

    # an input edited (still failing): that case runs again; its stage's code edited: all do
    (root / "cases" / "c0001.txt").write_text("FAIL, edited")
    doit(root)
    assert statuses(root)["prepare:c0001"] == "failed"
    assert statuses(root)["prepare:c0000"] == Status.CACHED_FAILURE
    with open(root / "toy_stages.py", "a") as f:
        f.write("# a comment: the code's digest, and so every key, changes\n")
    doit(root)
    assert statuses(root)["prepare:c0000"] == statuses(root)["prepare:c0001"] == "failed"
    # retry=failed runs them again, and only them
    doit(root, "retry=failed")
    assert {t for t, s in statuses(root).items() if s not in ("up-to-date", "skipped")} == \
        {"prepare:c0000", "prepare:c0001"}
    assert statuses(root)["prepare:c0000"] == "failed"


def test_a_failure_that_is_no_verdict_runs_again(tmp_path):
    root = make_project(tmp_path / "toy", cases=1)
    (root / "cases" / "c0000.txt").write_text("FLAKY")
    doit(root)
    doit(root)
    assert statuses(root)["prepare:c0000"] == "failed"   # ran again, not "failed (cached)"
    entry = json.loads((root / "build" / ".kiln" / "tasks" / "prepare.c0000.json").read_text())
    assert "verdict_on" not in entry


# --- settled() itself, on a hand-made entry -------------------------------------------------

@pytest.fixture
def failed(tmp_path):
    """(entry file, sources, cache root) of a failure remembered in a real store under its key."""
    cache = tmp_path / "cache"
    Store(cache).remember_failure("k" * 64, {"error": "no", "command": None, "result": None,
                                             "log": "the tool said no"})
    source = tmp_path / "model.txt"
    source.write_text("FAIL")
    sources = KeySources("watched-1", (str(source), str(tmp_path / "absent")))
    entry = StageEntry("prepare:m", "prepare", "m", None, key="k" * 64, status="failed",
                       error="no", seconds=3.2, warnings=["a warning of that run"])
    entry.verdict_on = verdict_on(sources, sources.stats(), Store(cache).failure_files("k" * 64))
    entry_file = tmp_path / "entry.json"
    entry_file.write_bytes(entry.to_json())
    return entry_file, sources, cache


def test_a_remembered_failure_is_settled_as_a_cached_one(failed):
    entry_file, sources, cache = failed
    known = settled(entry_file, sources, cache)
    assert known.entry.status == Status.CACHED_FAILURE
    assert (known.entry.seconds, known.entry.warnings, known.entry.error) == (0.0, [], "no")
    assert known.log[-1] == "the tool said no"   # its log, as the runner writes it
    entry_file.write_bytes(known.entry.to_json())   # as the run leaves it: nothing to write
    assert settled(entry_file, sources, cache) == (known.entry, None)


@pytest.mark.parametrize("change", ["watched", "input", "input appears", "cache entry replaced",
                                    "cache entry gone", "another cache", "log damaged",
                                    "entry file damaged"])
def test_anything_it_was_a_verdict_on_changed_unsettles_it(failed, change):
    entry_file, sources, cache = failed
    source, absent = (Path(f) for f in sources.files)
    remembered = Path(Store(cache).failure_files("k" * 64)["entry"][0])
    if change == "watched":
        sources = sources._replace(watched="watched-2")   # a param, a tool version, the code
    elif change == "input":
        source.write_text("FAIL, edited")
        os.utime(source, ns=(1, 1))
    elif change == "input appears":
        absent.write_text("")
    elif change == "cache entry replaced":   # (a later success under the key; a last-use
        remembered.unlink()                  # mark, utime, is no change)
        remembered.write_text('{"outputs": {}}')
    elif change == "cache entry gone":
        remembered.unlink()
    elif change == "entry file damaged":   # (not what this kiln writes: no outcome, no error)
        data = json.loads(entry_file.read_text())
        data["verdict_on"]["cache"] = {"entry": "garbage", "meta": 3}
        entry_file.write_text(json.dumps(data))
    elif change == "log damaged":   # (the runner would discard the entry, and run)
        blob = Path(Store(cache).failure_files("k" * 64)["meta"][0])
        os.chmod(blob, 0o644)
        blob.write_bytes(blob.read_bytes().replace(b"said no", b"said ok"))
        os.utime(blob, ns=(1, 1))
    else:
        cache = cache.parent / "other-cache"
    assert settled(entry_file, sources, cache) is None


def test_a_skip_for_an_absent_input_is_settled_and_other_outcomes_are_not(failed):
    entry_file, sources, cache = failed
    entry = StageEntry.load(entry_file)
    skipped = StageEntry(entry.task, entry.stage, entry.model, None, status="skipped",
                         reason="skipped: lower has no module.mlir (it failed or was skipped)",
                         verdict_on=verdict_on(sources, sources.stats()))
    entry_file.write_bytes(skipped.to_json())
    assert settled(entry_file, sources, cache).entry.reason == skipped.reason
    ran = StageEntry(entry.task, entry.stage, entry.model, None, status="ran", key="k",
                     verdict_on=entry.verdict_on)
    entry_file.write_bytes(ran.to_json())
    assert settled(entry_file, sources, cache) is None
