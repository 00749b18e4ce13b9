"""Bad input a user gives kiln, each stopped (or warned of) with a message naming the file,
line or option at fault and what would be valid; a run stopped on it leaves a failed-run
record, never the previous run's looking current. Run on kiln's engine over pure-Python
stages (tests/toy_kiln.py): no framework, no compiler, each run a second or two."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from toy_kiln import doit, make_project


def record(root: Path) -> dict:
    return json.loads((root / "build" / "run.json").read_text())


def test_an_xfail_entry_naming_no_known_model_is_a_warning_naming_its_line(tmp_path):
    root = make_project(tmp_path / "toy", cases=3)
    (root / "known.yaml").write_text("cpu:\n  c0001: its reason\n  c0001x: a typo of c0001\n"
                                     "'*':\n  gone: a case removed long ago\n")
    proc = doit(root, "xfail=known.yaml")
    known = root / "known.yaml"
    assert f"kiln: warning: {known}:3: xfail entry cpu: c0001x names no model kiln knows here " \
           "(did you mean c0001?)" in proc.stderr, proc.stderr
    assert f"{known}:5: xfail entry *: gone names no model" in proc.stderr, proc.stderr
    assert "c0001 names" not in proc.stderr and record(root)["tasks"]
    # a narrower selection leaves known cases out: no reason to warn of their entries
    narrow = doit(root, "xfail=known.yaml", "model=c0000")
    assert "c0001 names" not in narrow.stderr and "c0001x names no model" in narrow.stderr


def test_a_misspelt_option_stops_the_run_naming_the_nearest_and_every_known_one(tmp_path):
    root = make_project(tmp_path / "toy", cases=2)
    assert doit(root).returncode == 0 and record(root)["tasks"]
    proc = doit(root, "tragets=cpu")
    assert proc.returncode != 0
    assert "kiln: unknown option tragets=cpu (did you mean target=?)" in proc.stderr, proc.stderr
    assert "model, target, variants" in proc.stderr   # the options kiln knows, in its order
    assert "prepare" not in proc.stdout                 # nothing built
    assert record(root) == {"tasks": [], "error": proc.stderr.strip().removeprefix("kiln: ")}
    unrelated = doit(root, "compiler=3.12.0")
    assert unrelated.returncode != 0 and "unknown option compiler=3.12.0" in unrelated.stderr
    # doit's own options and a task name still work beside kiln's key=value options
    assert doit(root, "-n", "2", "--verbosity", "2", "check", "target=cpu").returncode == 0


def test_doit_diff_takes_only_its_own_options(tmp_path):
    root = make_project(tmp_path / "toy", cases=1)
    with (root / "pyproject.toml").open("a") as pyproject:
        pyproject.write('diff = "pipeline.driver.cmd_diff:Diff"\n')
    assert doit(root).returncode == 0
    proc = doit(root, "diff", "baseline=build", "facter=3")
    assert proc.returncode != 0, proc.stdout
    assert "unknown option facter=3 (did you mean factor=?)" in proc.stderr, proc.stderr
    assert "doit diff takes baseline=PATH [factor=F]" in proc.stderr
    assert doit(root, "diff", "baseline=build", "factor=3").returncode == 0


def test_a_link_in_a_suite_folder_that_loops_stops_the_plan_naming_it(tmp_path):
    root = make_project(tmp_path / "toy", cases=2)
    assert doit(root).returncode == 0 and record(root)["tasks"]
    report = (root / "build" / "report.md").read_text()
    loop = root / "cases" / "deeper"
    loop.symlink_to("deeper")                 # a link to itself
    proc = doit(root)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{loop}: a symbolic link kiln cannot follow" in proc.stderr, proc.stderr
    assert "loops" in proc.stderr
    assert record(root)["tasks"] == [] and str(loop) in record(root)["error"]
    assert (root / "build" / "report.md").read_text() != report   # no stale report either


@pytest.mark.parametrize("tasks, words", [
    ([{"garbage": 1}], ["task 1", "\"task\""]),
    ([1, "x", None], ["task 1", "expected an object", "got 1"]),
    ([{"task": "check:c0000@cpu", "stage": "check", "model": "c0000", "target": "cpu",
       "status": "ran", "result": "oops"}], ["task 1 (check:c0000@cpu)", "\"result\"", "'oops'"]),
])
def test_a_malformed_baseline_stops_the_run_before_it_builds(tmp_path, tasks, words):
    root = make_project(tmp_path / "toy", cases=2)
    bad = root / "old.json"
    bad.write_text(json.dumps({"tasks": tasks}))
    proc = doit(root, "baseline=old.json")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"baseline=old.json: {bad} is not a kiln run record" in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert "prepare" not in proc.stdout and not (root / "build" / "c0000").exists()
    assert record(root)["tasks"] == [] and "old.json" in record(root)["error"]
    with (root / "pyproject.toml").open("a") as pyproject:
        pyproject.write('diff = "pipeline.driver.cmd_diff:Diff"\n')
    said = doit(root, "diff", "baseline=old.json")
    assert said.returncode == 3 and "Traceback" not in said.stderr, said.stderr
    assert f"{bad} is not a kiln run record" in said.stderr


def test_a_read_only_cache_is_one_warning_for_the_whole_run(tmp_path, small_disk):
    cache = small_disk.mount("1m")
    small_disk.read_only(cache)
    root = make_project(tmp_path / "toy", cases=5)
    proc = doit(root, env={"KILN_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = (proc.stdout + proc.stderr).splitlines()
    warned = [line for line in said if f"cache {cache} is not writable" in line]
    assert len(warned) == 1 and "EROFS" in warned[0], "\n".join(said)


def test_a_model_name_too_long_for_a_file_name_is_refused_at_planning(tmp_path):
    root = make_project(tmp_path / "toy", cases=1)
    long = root / "cases" / f"{'x' * 240}.txt"
    long.write_text("a case")
    proc = doit(root)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"kiln: {long}: model name {'x' * 20}" in proc.stderr, proc.stderr
    assert "(240 characters) is too long" in proc.stderr and "at most 226" in proc.stderr
    assert "prepare" not in proc.stdout and record(root)["tasks"] == []
    long.rename(root / "cases" / f"{'x' * 226}.txt")   # the longest that fits
    assert doit(root).returncode == 0
