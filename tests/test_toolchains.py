"""IREE releases as a matrix axis (pipeline/cache/toolchain.py, stages/toolchains.py,
stages/relegalize.py, pipeline/report/upgrade.py): a second real release (iree-base-compiler
and iree-base-runtime 3.12.0 from the registry) provisioned once for the whole suite, ONNX's
own node test cases built with it and with kiln's release, and the upgrade's answer; the
provisioning's checks (once, verified, a damaged or half-made one redone, a wrong release
refused with pip's words); the answer's counts and exit code on hand-made records."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, SHARED_TOOLCHAINS, Project, copy_project

from pipeline.cache import toolchain
from pipeline.report import upgrade, verdict
from pipeline.stage import ConfigError

OLD = "3.12.0"   # the release before kiln's (3.13.0): the smallest step a team upgrades by
# the node cases (onnx 1.20): IREE 3.12.0 gets the first one's numbers wrong (torch-mlir's
# ONNX AveragePool with ceil_mode and dilations, in iree-compile's input phase), 3.13.0
# right; 3.13.0's input phase no longer legalizes the second (DequantizeLinear on uint16),
# 3.12.0's did; the third fails to compile with both; the fourth passes with both
FIXED = "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True"
BROKEN = "test_dequantizelinear_uint16"
BROKEN_IN_BOTH = "test_averagepool_2d_ceil_last_window_starts_on_pad"
FINE = "test_relu"
SHARED = SHARED_TOOLCHAINS


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory) -> dict:
    """The four cases validated on cpu with 3.12.0 and 3.13.0, then again (a no-op)."""
    from onnx_node_cases import write_cases
    root = tmp_path_factory.mktemp("upgrade")
    cases = root / "cases"
    write_cases(cases, [FIXED, BROKEN, BROKEN_IN_BOTH, FINE])
    project = Project(copy_project(root / "proj"))
    shutil.copy2(REPO / "pyproject.toml", project.root / "pyproject.toml")   # doit upgrade's plugin
    env = {toolchain.ROOT_ENV: str(SHARED)}
    args = ("validate", f"model={cases}", "target=cpu", f"iree={OLD},3.13.0")
    first = project.doit(*args, env_extra=env, check=False)
    record = json.loads((project.root / "build" / "run.json").read_text())
    second = project.doit(*args, env_extra=env, check=False)
    return {"project": project, "first": first, "record": record, "second": second,
            "env": env, "args": args}


def _task(record: dict, stage: str, model: str, target: str | None) -> dict:
    return next(t for t in record["tasks"]
                if (t["stage"], t["model"], t["target"]) == (stage, model, target))


def test_each_target_is_built_with_each_release_and_the_answer_says_what_changed(upgraded):
    record, first = upgraded["record"], upgraded["first"]
    rows = {(t["model"], t["target"]): t["status"] for t in record["tasks"]
            if t["stage"] == "validate"}
    assert rows[(FIXED, f"cpu+{OLD}")] == "failed" and rows[(FIXED, "cpu+3.13.0")] == "ran"
    assert rows[(FINE, f"cpu+{OLD}")] == "ran" and rows[(FINE, "cpu+3.13.0")] == "ran"
    found = record["upgrade"]
    assert (found["from"], found["to"], found["compared"]) == (OLD, "3.13.0", 4)
    assert found["counts"]["newly passing"] == 1 and found["counts"]["newly failing"] == 1
    better, worse = ({c["case"]: c for c in found["changes"] if c["outcome"]
                      and c["verdict"] == v} for v in ("better", "worse"))
    assert list(better) == [f"{FIXED}@cpu"] and list(worse) == [f"{BROKEN}@cpu"]
    assert better[f"{FIXED}@cpu"]["outcome"]["text"] == "failed at validate → passed"
    assert worse[f"{BROKEN}@cpu"]["outcome"]["text"] == (
        "passed → failed at legalize (ops IREE cannot legalize: onnx.DequantizeLinear)")
    # the new failure fails the run; the old release's failures, and one with both, do not
    assert first.returncode != 0, first.stdout[-3000:]
    assert upgrade.summary_line(found) in first.stdout
    assert "kiln: 8 cases: 4 passed, 1 failed (3 more failed, none of them newly" \
        in first.stdout


def test_the_release_runs_its_own_tools_from_the_input_phase_on(upgraded):
    record, project = upgraded["record"], upgraded["project"]
    log = (project.root / _task(record, "relegalize", FINE, f"cpu+{OLD}")["log"]).read_text()
    assert f"{SHARED}/" in log and "--compile-to=input" in log   # its own input phase
    for stage in ("lower", "codegen"):
        old = (project.root / _task(record, stage, FINE, f"cpu+{OLD}")["log"]).read_text()
        new = (project.root / _task(record, stage, FINE, "cpu+3.13.0")["log"]).read_text()
        assert f"$ {SHARED}/" in old and f"$ {SHARED}/" not in new
    # kiln's release builds from the model's own emit; no relegalize of its own
    assert not any(t["stage"] == "relegalize" and t["target"] == "cpu+3.13.0"
                   for t in record["tasks"])


def test_keys_differ_per_release_and_a_second_run_is_a_no_op(upgraded):
    project = upgraded["project"]
    entries = project.root / "build" / ".kiln" / "tasks"
    for stage in ("lower", "codegen", "validate"):
        keys = {json.loads((entries / f"{stage}.{FINE}@cpu+{r}.json").read_text())["key"]
                for r in (OLD, "3.13.0")}
        assert len(keys) == 2, stage
    second = upgraded["second"]
    assert "provisioning" not in second.stderr
    # nothing ran (a bisect whose validate's failure is now the remembered one is restored)
    statuses = {t["status"] for t in project.record()}
    assert statuses <= {"up-to-date", "failed (cached)", "cached", "skipped"}, statuses


def test_doit_upgrade_says_it_again_and_the_page_shows_it(upgraded, browser):
    from selenium.webdriver.common.by import By
    project = upgraded["project"]
    again = project.doit("upgrade", env_extra=upgraded["env"], check=False)
    assert again.returncode == 1, again.stdout + again.stderr   # the new failure
    found = json.loads((project.root / "build" / "run.json").read_text())["upgrade"]
    assert again.stdout.startswith(upgrade.summary_line(found))
    assert "## Changes from release 3.12.0 to release 3.13.0" in \
        (project.root / "build" / "report.md").read_text()
    browser.get((project.root / "build" / "report.html").as_uri())
    section = browser.find_element(By.ID, "upgrade")
    assert section.text == "Changes from release 3.12.0 to release 3.13.0"
    summary = browser.find_element(By.CSS_SELECTOR, "p.upgrade-summary").text
    assert summary == upgrade.summary_line(found)
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.change")
    assert [(r.get_attribute("data-model"), r.get_attribute("data-verdict")) for r in rows] \
        == [(BROKEN, "worse"), (FIXED, "better")]


# --- provisioning ---------------------------------------------------------------------------

PACKAGES = {"iree-base-compiler": OLD, "iree-base-runtime": OLD}


def _provision(root: Path, said: list[str]) -> Path:
    toolchain.use_root(root)
    toolchain._provisioned.cache_clear()   # (a new process each time, as a run is)
    return toolchain.provisioned(f"IREE {OLD}", PACKAGES, say=said.append)


def test_provisioned_once_verified_and_redone_when_damaged_or_half_made(tmp_path, monkeypatch):
    monkeypatch.delenv(toolchain.ROOT_ENV, raising=False)
    said: list[str] = []
    site = _provision(tmp_path, said)
    compiler = site / "iree" / "compiler" / "_mlir_libs" / "iree-compile"
    assert compiler.is_file() and any("provisioning" in line for line in said)
    home = site.parent
    assert home.parent == tmp_path and (home / toolchain.MANIFEST).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []

    said.clear()
    assert _provision(tmp_path, said) == site and said == []   # found: pip never started

    # a file cut short: detected, redone
    with open(compiler, "r+b") as f:
        f.truncate(1000)
    assert not toolchain.verified(home)
    _provision(tmp_path, said)
    assert any("damaged" in line for line in said) and toolchain.verified(home)
    assert compiler.stat().st_size > 1000

    # no manifest (one that lost it), and what a killed provisioning left beside it: never
    # used, redone, the leftovers gone
    (home / toolchain.MANIFEST).unlink()
    killed = tmp_path / f"{home.name}.x1y2.tmp"
    (killed / "site").mkdir(parents=True)
    said.clear()
    _provision(tmp_path, said)
    assert any("provisioning" in line for line in said) and toolchain.verified(home)
    assert not killed.exists()


def test_a_release_the_registry_lacks_is_refused_with_what_pip_said(project):
    proc = project.doit("validate", "model=mlp", "target=cpu", "iree=3.12.0,0.0.1",
                        env_extra={toolchain.ROOT_ENV: str(SHARED)}, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    err = proc.stderr
    assert "IREE 0.0.1: could not provision iree-base-compiler==0.0.1 iree-base-runtime==0.0.1" \
        in err
    assert "from versions:" in err and "3.13.0" in err   # the registry's own list
    assert not list((SHARED).glob("*.tmp"))


def test_a_release_that_is_no_version_is_refused_before_pip(project):
    proc = project.doit("validate", "model=mlp", "iree=latest", check=False)
    assert proc.returncode == 1 and "iree=latest: 'latest' is not a release" in proc.stderr


# --- the answer, on hand-made records -------------------------------------------------------

def _rows(model: str, target: str, failed_at: str | None = None) -> list[dict]:
    entries = []
    for stage, role in (("lower", None), ("codegen", "module"), ("validate", "verdict")):
        entry = {"task": f"{stage}:{model}@{target}", "stage": stage, "model": model,
                 "target": target, "role": role, "status": "ran"}
        if stage == failed_at:
            entry.update(status="failed", error="iree-compile exited with 1: boom")
        elif failed_at and any(e["status"] != "ran" for e in entries):
            entry.update(status="skipped", reason="an upstream stage failed")
        if stage == "validate" and failed_at is None:
            entry["result"] = {"passed": True, "max_abs_error": 1e-7, "atol": 1e-4, "rtol": 1e-3}
        entries.append(entry)
    return entries


def test_only_a_new_failure_fails_the_run():
    record = {"tasks": [*_rows("a", "cpu+3.12.0"), *_rows("a", "cpu+3.13.0", "codegen"),
                        *_rows("b", "cpu+3.12.0", "lower"), *_rows("b", "cpu+3.13.0", "lower"),
                        *_rows("c", "cpu+3.12.0", "lower"), *_rows("c", "cpu+3.13.0")]}
    found = upgrade.compare(record)
    assert found["counts"]["newly failing"] == 1 and found["counts"]["newly passing"] == 1
    assert upgrade.newly_failing(found) == ["a@cpu"]
    record["upgrade"] = found
    judged = verdict.verdict(record)
    assert judged.failed == ("a@cpu+3.13.0",) and judged.exit_code == 1
    assert set(judged.known) == {"b@cpu+3.12.0", "b@cpu+3.13.0", "c@cpu+3.12.0"}
    # without a newly failing case the same failures fail nothing
    record = {"tasks": [t for t in record["tasks"] if t["model"] != "a"]}
    record["upgrade"] = upgrade.compare(record)
    assert verdict.verdict(record).exit_code == 0


def test_releases_are_ordered_by_number_and_one_release_is_no_upgrade():
    assert sorted(["3.13.0", "3.9.0", "3.13.0rc20260917", "3.12.0"], key=upgrade.version_key) \
        == ["3.9.0", "3.12.0", "3.13.0rc20260917", "3.13.0"]
    assert upgrade.compare({"tasks": _rows("a", "cpu+3.12.0")}) is None
    assert upgrade.compare({"tasks": _rows("a", "cpu")}) is None


def test_a_release_is_checked_where_it_is_given(tmp_path):
    from pipeline.plan.config import load_config
    from pipeline.plan.options import Options
    for given, said in (("latest", "not a release"), ("3.12.0+cpu", "not a release"),
                        ("", "an empty list")):
        with pytest.raises(ConfigError, match=said):
            Options.parse({"iree": given})
    with pytest.raises(ConfigError, match="named twice"):
        Options.parse({"iree": "3.12.0,3.12.0"})
    config = tmp_path / "targets.yaml"
    config.write_text("targets:\n  cpu: {backend: llvm-cpu, iree: 3.12}\n"
                      "matrices:\n  default: {models: [m], targets: [cpu]}\n")
    with pytest.raises(ConfigError, match=r"targets\.yaml:2: targets\.cpu\.iree: expected an"):
        load_config(config)
    config.write_text("targets:\n  cpu: {backend: llvm-cpu}\n"
                      "matrices:\n  default: {models: [m], targets: [cpu], iree: []}\n")
    with pytest.raises(ConfigError, match=r"matrices\.default\.iree: an empty list"):
        load_config(config)



def test_a_failure_of_kilns_legalize_is_no_failure_of_a_release_that_did_its_own():
    from pipeline.report import table
    legalize = {"task": "legalize:a", "stage": "legalize", "model": "a", "target": None,
                "role": None, "status": "failed", "error": "ops IREE cannot legalize: x"}
    relegalize = {"task": "relegalize:a@cpu+3.12.0", "stage": "relegalize", "model": "a",
                  "target": "cpu+3.12.0", "role": "emitted", "status": "ran",
                  "stands_for": ["legalize", "emit"]}
    newer = [{**t, "status": "skipped", "reason": "an upstream stage failed"}
             for t in _rows("a", "cpu+3.13.0")]
    record = {"tasks": [legalize, relegalize, *_rows("a", "cpu+3.12.0"), *newer]}
    rows = {r["target"]: r for r in table.rows(record["tasks"])}
    assert rows["cpu+3.12.0"]["kind"] == "passed"
    assert rows["cpu+3.13.0"]["kind"] == "failed"
    assert rows["cpu+3.13.0"]["failed"]["stage"] == "legalize"
    assert upgrade.newly_failing(upgrade.compare(record)) == ["a@cpu"]
