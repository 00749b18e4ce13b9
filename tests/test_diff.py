"""What changed between two builds (pipeline/report/diff.py): the comparison on hand-made
records (fast, no IREE), the baseline= and factor= checks, and `doit diff` / `doit validate
baseline=` between two real builds of the mlp whose cpu flags differ (tests/conftest.py's
flags_diff: the second build demotes matmul inputs to bf16, which fails validation)."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import REPO, Project, copy_project

from pipeline.report import diff, html, table
from pipeline.stage import ConfigError

# --- hand-made records ----------------------------------------------------------------------


def _latency(median, low=None, high=None) -> dict:
    return {"median_ms": median, "min_ms": median * 0.98 if low is None else low,
            "max_ms": median * 1.02 if high is None else high, "how": "iree-benchmark-module"}


def _case(model="m", target="cpu", failed_at=None, abs_err=1e-6, latency=None, xfail=None,
          error="outputs differ from the reference") -> list[dict]:
    """The per-target entries of one model x target: lower, codegen, validate; failed_at a
    stage: that stage failed (and those after it were skipped)."""
    result = {"passed": failed_at is None, "max_abs_error": abs_err, "atol": 1e-4, "rtol": 1e-3,
              "latency": latency or _latency(1.0)}
    entries = []
    for stage, role in (("lower", None), ("codegen", "module"), ("validate", "verdict")):
        entry = {"task": f"{stage}:{model}@{target}", "stage": stage, "model": model,
                 "target": target, "role": role, "status": "ran", "seconds": 1.0}
        if stage == failed_at:
            entry.update(status="failed", error=error)
        elif failed_at and any(e["status"] != "ran" for e in entries):
            entry.update(status="skipped", reason="an upstream stage failed")
        if stage == "validate" and failed_at in (None, "validate"):
            entry["result"] = result
        if xfail:
            entry["xfail"] = xfail
        entries.append(entry)
    return entries


def _record(*cases: list[dict]) -> dict:
    return {"tasks": [entry for case in cases for entry in case]}


def _changes(before: dict, after: dict, **kw) -> dict[str, dict]:
    return {c["case"]: c for c in diff.compare(before, after, **kw)["changes"]}


def test_the_same_record_changes_nothing():
    record = _record(_case("m"), _case("n", failed_at="lower"))
    found = diff.compare(record, record)
    assert found["compared"] == 2 and found["changes"] == []
    assert diff.lines(found) == ["since the baseline baseline: 0 of 2 cases changed"]


def test_outcomes_that_changed_and_at_which_stage():
    before = _record(_case("a"), _case("b", failed_at="codegen"), _case("c", failed_at="lower"),
                     _case("d"), _case("e", failed_at="validate"))
    after = _record(_case("a", failed_at="validate", abs_err=0.002, error="max abs error 0.002"),
                    _case("b"), _case("c", failed_at="validate"),
                    _case("d", failed_at="validate", xfail="known bf16 loss"),
                    _case("e", failed_at="validate", xfail="known"))
    found = _changes(before, after)
    assert found["a@cpu"]["verdict"] == "worse"
    assert found["a@cpu"]["outcome"]["text"] == \
        "passed → failed at validate (max abs error 0.002)"
    assert found["b@cpu"]["verdict"] == "better"
    assert found["b@cpu"]["outcome"]["text"] == "failed at codegen → passed"
    assert found["c@cpu"]["verdict"] == "changed"   # failed still, at another stage
    assert found["c@cpu"]["outcome"]["after"] == "failed at validate"
    assert found["d@cpu"]["outcome"]["text"].startswith("passed → xfail (failed at validate)")
    assert found["d@cpu"]["verdict"] == "worse"
    assert found["e@cpu"]["verdict"] == "changed"   # the same failure, now listed
    # worse first, then better, then changed
    assert [c["verdict"] for c in diff.compare(before, after)["changes"]] == \
        ["worse", "worse", "better", "changed", "changed"]


def test_a_failure_taken_from_the_cache_is_the_same_outcome():
    before = _record(_case("a", failed_at="lower"))
    after = _record(_case("a", failed_at="lower"))
    after["tasks"][0]["status"] = "failed (cached)"
    assert _changes(before, after) == {}


def test_error_against_tolerance_beyond_the_factor_and_the_floor():
    before = _record(_case("grew", abs_err=1e-5), _case("little", abs_err=1e-5),
                     _case("tiny", abs_err=1e-9), _case("zero", abs_err=0.0),
                     _case("shrank", abs_err=5e-5))
    after = _record(_case("grew", abs_err=3e-5), _case("little", abs_err=1.9e-5),
                    _case("tiny", abs_err=1e-7), _case("zero", abs_err=5e-6),
                    _case("shrank", abs_err=1e-5))
    found = _changes(before, after)
    # 0.1 -> 0.3 of atol: 3x; 1.9x is within the factor; 1e-5 -> 1e-3 of atol stays
    # below the floor (1% of atol) however many times it grew
    assert set(found) == {"grew@cpu", "zero@cpu", "shrank@cpu"}
    grew = found["grew@cpu"]["error"]
    assert grew["verdict"] == "worse" and grew["before"] == pytest.approx(0.1)
    assert grew["text"].startswith("error 3× larger against the tolerance: max abs 3e-05 = "
                                   "0.3× atol 0.0001, was 1e-05 = 0.1×")
    assert found["zero@cpu"]["error"]["text"].startswith("error from exactly 0")
    assert found["shrank@cpu"]["verdict"] == "better"
    # factor=: 1.5x counts with factor 1.5
    assert "little@cpu" in _changes(before, after, factor=1.5)


def test_an_outputs_own_tolerance_is_what_its_error_is_against():
    before, after = _record(_case("q", abs_err=0.01)), _record(_case("q", abs_err=0.01))
    for record, err in ((before, 0.001), (after, 0.004)):
        result = record["tasks"][2]["result"]
        result["outputs"] = [{"max_abs_error": err, "atol": 0.01},      # a quantized output
                             {"max_abs_error": 1e-7}]                    # the case's atol
    change = _changes(before, after)["q@cpu"]["error"]
    assert (change["before"], change["after"], change["atol"]) == (
        pytest.approx(0.1), pytest.approx(0.4), 0.01)


def test_latency_beyond_the_spread_of_both_and_the_noise():
    before = _record(_case("slower", latency=_latency(1.0)), _case("faster", latency=_latency(1.0)),
                     _case("overlap", latency=_latency(1.0, 0.8, 1.3)),
                     _case("close", latency=_latency(1.0, 0.99, 1.01)),
                     _case("off", latency=_latency(1.0)))
    after = _record(_case("slower", latency=_latency(1.5)), _case("faster", latency=_latency(0.5)),
                    _case("overlap", latency=_latency(1.5, 1.25, 1.6)),
                    _case("close", latency=_latency(1.03, 1.02, 1.04)),
                    _case("off"))
    after["tasks"][-1]["result"].update(latency=None, timing="off")
    found = _changes(before, after)
    # overlapping ranges, and a 3% move (below the 5% noise floor), are the same speed
    assert set(found) == {"slower@cpu", "faster@cpu"}
    assert found["slower@cpu"]["latency"]["text"] == \
        "1.5× slower: 1.5 ms (1.47 ms – 1.53 ms), was 1 ms (0.98 ms – 1.02 ms)"
    assert found["faster@cpu"]["verdict"] == "better"
    assert found["faster@cpu"]["latency"]["text"].startswith("2× faster: 0.5 ms")


def test_cases_one_side_lacks_and_a_baseline_that_built_nothing():
    found = diff.compare(_record(_case("a"), _case("gone")), _record(_case("a"), _case("new")),
                         name="base/run.json")
    assert (found["only_in_baseline"], found["only_here"]) == (["gone@cpu"], ["new@cpu"])
    assert diff.lines(found) == ["since the baseline base/run.json: 0 of 1 cases changed",
                                 "  only in the baseline (not in this run): gone@cpu",
                                 "  new since the baseline: new@cpu"]
    stopped = diff.compare({"tasks": [], "error": "bad targets.yaml"}, _record(_case("a")))
    assert diff.notes(stopped)[0] == \
        "the baseline run stopped before building anything: bad targets.yaml"


def _flag_change() -> dict:
    before = _record(_case("mlp", latency=_latency(1.0)), _case("mlp", "vulkan"))
    after = _record(_case("mlp", failed_at="validate", abs_err=0.002, latency=_latency(2.0),
                          error="max abs error 0.002 <b>"), _case("mlp", "vulkan"))
    return {**after, "diff": diff.compare(before, after, name="base/run.json")}


def test_console_markdown_and_page_say_the_same():
    record = _flag_change()
    said = diff.lines(record["diff"])
    assert said[0] == "since the baseline base/run.json: 1 of 2 cases changed (1 worse)"
    assert said[1].startswith("  worse   mlp@cpu  passed → failed at validate (max abs error "
                              "0.002 <b>); error 2000× larger against the tolerance: max abs 0.002 = 20× atol "
                              "0.0001, was 1e-06 = 0.01×")
    assert "; 2× slower: 2 ms" in said[1]
    md = table.markdown(record, after_table=diff.markdown(record["diff"]))
    assert md.index("## Changes since the baseline") < md.index("## Failures")
    assert "| mlp@cpu | **worse** | passed → failed at validate" in md
    page = html.page(record, draw_charts=False)
    assert "<h2 id='changes'>Changes since the baseline</h2>" in page
    assert "data-verdict='worse' data-model='mlp' data-target='cpu'" in page
    assert "0.002 &lt;b&gt;" in page and "0.002 <b>" not in page   # escaped
    assert "Changes since the baseline" not in html.page(_record(_case("mlp")), draw_charts=False)


# --- baseline= and factor= ------------------------------------------------------------------

def test_a_baseline_is_a_run_json_or_a_build_directory(tmp_path):
    build = tmp_path / "proj" / "build"
    build.mkdir(parents=True)
    (build / "run.json").write_text(json.dumps(_record(_case("a"))))
    for given in ("proj/build/run.json", "proj/build", "proj", str(build)):
        path, record = diff.read_baseline(given, tmp_path)
        assert path == build / "run.json" and record["tasks"][0]["model"] == "a"
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "empty").mkdir()
    for given, says in (("nowhere.json", "no such file or directory"),
                        ("bad.json", "is not a kiln run record (Expecting"),
                        ("list.json", "is not a kiln run record (no \"tasks\" list)"),
                        ("empty", "the directory holds no run.json")):
        with pytest.raises(ConfigError) as err:
            diff.read_baseline(given, tmp_path)
        assert str(err.value).startswith(f"baseline={given}: ") and says in str(err.value)
        assert "give an earlier run's run.json or its build directory" in str(err.value)


def test_factor_is_a_number_above_one():
    assert diff.parse_factor(None) == 2.0 and diff.parse_factor("3.5") == 3.5
    for bad in ("1", "0.5", "x", "nan", "inf"):
        with pytest.raises(ConfigError, match=rf"^factor={bad}: expected a number above 1"):
            diff.parse_factor(bad)


# --- two real builds whose iree-compile flags differ ----------------------------------------

def test_doit_validate_with_a_baseline_names_what_changed(flags_diff):
    """The second build's own run (doit validate ... baseline=): the console, run.json and
    report.md name mlp@cpu, which now fails at validate with a larger error; mlp@vulkan,
    restored from the cache, did not change."""
    out, record = flags_diff["validate"].stdout, flags_diff["record"]
    found = record["diff"]
    assert found["compared"] == 2 and [c["case"] for c in found["changes"]] == ["mlp@cpu"]
    change = found["changes"][0]
    assert change["verdict"] == "worse"
    assert change["outcome"]["text"].startswith("passed → failed at validate (outputs differ")
    assert change["error"]["verdict"] == "worse" and change["error"]["after"] > 1
    if change["latency"]:   # bf16 may well change the speed: then beyond both spreads
        before, after = change["latency"]["before"], change["latency"]["after"]
        assert after["min_ms"] > before["max_ms"] or after["max_ms"] < before["min_ms"]
    assert "since the baseline " in out and "1 of 2 cases changed (1 worse)" in out
    assert "  worse   mlp@cpu  passed → failed at validate" in out
    assert flags_diff["validate"].returncode != 0   # a case failed: the verdict gates, as ever
    md = flags_diff["markdown"]
    assert "| mlp@cpu | **worse** | passed → failed at validate" in md


def test_doit_diff_compares_the_last_run_with_a_baseline(flags_diff):
    """`doit diff` alone: the same changes, from the two records only (no dodo.py, no stage),
    into the console, run.json, report.md and report.html (a diff the record held is
    replaced)."""
    project = flags_diff["project"]
    build = project.root / "build"
    out = project.doit("diff", f"baseline={flags_diff['baseline']}", "factor=3").stdout
    assert out.splitlines()[0].endswith("1 of 2 cases changed (1 worse)")
    assert out.splitlines()[1].startswith("  worse   mlp@cpu  passed → failed at validate")
    record = json.loads((build / "run.json").read_text())
    assert record["diff"]["factor"] == 3 and record["tasks"] == flags_diff["record"]["tasks"]
    assert "<h2 id='changes'>" in (build / "report.html").read_text()
    assert "## Changes since the baseline" in (build / "report.md").read_text()


def test_doit_diff_says_what_is_wrong_with_its_input(flags_diff, tmp_path):
    project = flags_diff["project"]
    missing = project.doit("diff", "baseline=nowhere/run.json", check=False)
    assert missing.returncode == 3 and "baseline=nowhere/run.json: no such file or directory" \
        in missing.stderr
    assert "baseline=PATH" in project.doit("diff", check=False).stderr
    bad = project.doit("diff", f"baseline={flags_diff['baseline']}", "factor=1", check=False)
    assert bad.returncode == 3 and "factor=1: expected a number above 1" in bad.stderr
    never_built = Project(copy_project(tmp_path / "proj"))
    shutil.copy2(REPO / "pyproject.toml", never_built.root / "pyproject.toml")
    proc = never_built.doit("diff", f"baseline={flags_diff['baseline']}", check=False)
    assert proc.returncode == 3 and \
        f"no run record {never_built.root / 'build' / 'run.json'}" in proc.stderr
    # a run given a wrong baseline stops before it builds anything, and its record says why
    proc = never_built.doit("validate", "model=mlp", "target=cpu", "baseline=main/build",
                            check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == \
        "kiln: baseline=main/build: no such file or directory; give an earlier run's run.json " \
        "or its build directory"
    record = json.loads((never_built.root / "build" / "run.json").read_text())
    assert record["tasks"] == [] and record["error"].startswith("baseline=main/build: ")


def test_a_no_op_run_says_what_changed_since_the_baseline_as_it_is_now(flags_diff, tmp_path):
    """Runs whose every stage is up to date reuse the last summary unless the baseline
    changed: an edited baseline is compared again. (Last here: it rewrites the build's
    record.)"""
    project = flags_diff["project"]
    baseline = tmp_path / "run.json"
    shutil.copyfile(flags_diff["baseline"], baseline)
    args = ("validate", "model=mlp", "target=vulkan", f"baseline={baseline}")
    first, again = project.doit(*args).stdout, project.doit(*args).stdout
    summary = lambda out: out.split("\n\n", 1)[1]   # noqa: E731 (doit's task lines vary: docs/DESIGN.md §10.4)
    assert "0 of 1 cases changed" in first and "only in the baseline (not in this run): " \
        "mlp@cpu" in first and summary(again) == summary(first)
    record = json.loads(baseline.read_text())
    pick = next(t for t in record["tasks"] if t["task"] == "pick:mlp@vulkan")
    # the baseline ran 100x faster: beyond even a min-max spread of 10x, which lavapipe's
    # timings reach beside the busy suite (then 10x faster ranges overlapped: no change)
    pick["result"]["latency"] = {k: v / 100 for k, v in pick["result"]["latency"].items()
                                 if k.endswith("_ms")}
    baseline.write_text(json.dumps(record))
    out = project.doit(*args).stdout
    assert "1 of 1 cases changed (1 worse)" in out and "  worse   mlp@vulkan  100× slower" in out
    assert json.loads((project.root / "build" / "run.json").read_text())["diff"]["changes"]


# --- the diff's page in a real browser (conftest's browser) ---------------------------------

CHANGES_JS = """return Array.from(document.querySelectorAll('table.changes tr.change'), tr => (
    {model: tr.dataset.model, target: tr.dataset.target, verdict: tr.dataset.verdict,
     cells: Array.from(tr.querySelectorAll('td'), td => td.innerText),
     colour: getComputedStyle(tr.querySelector('td.kind')).backgroundColor}))"""


def test_what_changed_since_the_baseline_in_a_real_browser(flags_diff, browser):
    """The page of the mlp built again with cpu's matmul inputs demoted to bf16 (doit validate
    ... baseline=, tests/conftest.py's flags_diff): its first section names mlp@cpu, worse,
    with the stage it now fails at and its error against the tolerance; mlp@vulkan, which did
    not change, has no row."""
    from selenium.webdriver.common.by import By

    browser.get(flags_diff["page"].as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert headings[:2] == ["Changes since the baseline", "Outcome per model × target"]
    headline = browser.find_element(By.CSS_SELECTOR, "p.headline").text
    assert headline.endswith("1 of 2 cases changed (1 worse)")
    (row,) = browser.execute_script(CHANGES_JS)
    assert (row["model"], row["target"], row["verdict"]) == ("mlp", "cpu", "worse")
    case, verdict, outcome, error, latency = row["cells"]
    assert (case, verdict) == ("mlp@cpu", "worse")
    assert outcome.startswith("passed → failed at validate (outputs differ from the reference")
    assert error.startswith("error ") and "larger against the tolerance" in error
    assert latency == (flags_diff["record"]["diff"]["changes"][0]["latency"] or {}).get("text", "")
    assert row["colour"] == "rgb(248, 211, 211)"   # .worse
    cell = browser.find_element(By.CSS_SELECTOR, "td.cell[data-model='mlp'][data-target='cpu']")
    assert "failed" in cell.get_attribute("class").split()
    # the failing cell says what bisect found and links to its section (stages/bisect.py)
    first = next(t for t in flags_diff["record"]["tasks"]
                 if t["task"] == "bisect:mlp@cpu")["result"]["first_bad_dispatch"]
    link = cell.find_element(By.CSS_SELECTOR, "div.diagnosis a")
    assert first["symbol"] in cell.find_element(By.CSS_SELECTOR, "div.diagnosis").text
    link.click()
    section = browser.find_element(By.ID, "diagnosis-mlp-cpu")
    assert browser.execute_script("return location.hash") == "#diagnosis-mlp-cpu"
    cells = [td.text for td in section.find_elements(By.CSS_SELECTOR, "table tr:nth-child(2) td")]
    assert cells[:3] == ["first bad", str(first["ordinal"]), first["symbol"]]
    files = [a.get_attribute("href") for a in section.find_elements(By.CSS_SELECTOR, "a.file")]
    assert any(f.endswith("/build/mlp/cpu/bisect/dispatch.failing.mlir") for f in files), files
    assert (flags_diff["page"].parent / "mlp/cpu/bisect/dispatch.failing.mlir").is_file()
