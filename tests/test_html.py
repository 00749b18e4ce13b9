"""build/report.html: pipeline/report/html.py on hand-made records (fast, no browser), and the page of
a real run — the `frameworks` matrix plus one model that fails at legalize — opened in a real
headless chromium (Debian's chromium + chromium-driver, driven by Selenium)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import stages
from pipeline.report import html

# the roles kiln's stages declare, which the plan records in each entry
ROLES = {stage.name: stage.role for stage in stages.pipeline()}
FRONT_END = ("capture", "serialize", "import", "legalize", "emit")   # once per model


# --- pipeline/report/html.py on hand-made records -------------------------------------------

def _entry(stage, model, target, status="ran", seconds=1.0, **extra) -> dict:
    at = f"@{target}" if target else ""
    return {"task": f"{stage}:{model}{at}", "stage": stage, "model": model, "target": target,
            "role": ROLES[stage], "key": "k", "status": status, "seconds": seconds,
            "log": f"build/logs/{stage}.{model}{at}.log", **extra}


def _result(passed=True, abs_err=1e-6, timing=True) -> dict:
    result = {"passed": passed, "max_abs_error": abs_err, "max_rel_error": abs_err * 10,
              "atol": 1e-4, "rtol": 1e-3, "latency_ms": 0.3, "timing": "iree-benchmark-module"}
    if timing:   # the timing schema's fields; older records lack them
        result.update({"latency": {"median_ms": 0.3, "min_ms": 0.25, "max_ms": 0.4, "runs": 9,
                                   "how": "iree-benchmark-module"},
                       "framework_latency": {"median_ms": 0.2, "min_ms": 0.19, "max_ms": 0.3,
                                             "runs": 9, "how": "torch eager"},
                       "speed_ratio": 1.5})
    return result


def hand_made_record() -> dict:
    """m on a (passed, timed), b (failed at lower, with markup in its error), c (no device),
    d (passed, not timed); n compiled only, on a."""
    tasks = [_entry(s, "m", None, status="cached", why=None) for s in FRONT_END]
    tasks += [_entry(s, "n", None, status="up-to-date", seconds=0.0) for s in FRONT_END]
    for target in ("a", "c", "d"):
        tasks += [_entry("lower", "m", target, why="changed params: flags"),
                  _entry("codegen", "m", target)]
    tasks += [_entry("validate", "m", "a", result=_result()),
              _entry("validate", "m", "c", status="skipped", seconds=0.0,
                     reason="skipped: no cuda device"),
              _entry("validate", "m", "d", result=_result(timing=False)),
              _entry("lower", "m", "b", status="failed", error="bad <script>alert(1)</script> & co",
                     command="iree-compile --iree-no-such-flag x.mlirbc"),
              _entry("codegen", "m", "b", status="skipped", seconds=0.0,
                     reason="an upstream stage failed"),
              _entry("validate", "m", "b", status="skipped", seconds=0.0,
                     reason="an upstream stage failed"),
              _entry("lower", "n", "a"), _entry("codegen", "n", "a")]
    for task in tasks:
        if task["status"] == "skipped":
            del task["log"]
    return {"tasks": tasks, "warnings": ["moved .doit.db aside <damaged>"]}


class Cells(HTMLParser):
    """The matrix's cells: (model, target) -> the outcome class."""

    def __init__(self, text: str):
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self.links: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "td" and "cell" in classes:
            key = (attrs["data-model"], attrs["data-target"])
            assert key not in self.cells, key
            self.cells[key] = next(c for c in classes if c in html.KINDS)
        if tag == "a" and "log" in classes:
            self.links.append(attrs["href"])


def test_a_run_stopped_before_building_says_so_escaped():
    text = html.page({"tasks": [], "error": "targets.yaml:3: <bad> & 'worse'"})
    assert "The run stopped before building anything" in text
    assert "targets.yaml:3: &lt;bad&gt; &amp; &#39;worse&#39;" in text   # (MarkupSafe's entities)
    assert "<bad>" not in text and "<svg" not in text


def test_the_page_of_a_hand_made_record(tmp_path):
    memo = tmp_path / "charts"
    text = html.page(hand_made_record(), memo=memo)
    parsed = Cells(text)
    assert parsed.cells == {("m", "a"): "passed", ("m", "b"): "failed", ("m", "c"): "skipped",
                            ("m", "d"): "passed", ("n", "a"): "compiled"}
    # every text from the record is escaped: the error's markup never becomes markup
    assert "<script" not in text and "bad &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text
    assert "warning: moved .doit.db aside &lt;damaged&gt;" in text
    assert "failed at lower" in text and "iree-compile --iree-no-such-flag x.mlirbc" in text
    # logs are linked relative to build/report.html
    assert "logs/lower.m%40b.log" in parsed.links and "logs/validate.m%40a.log" in parsed.links
    # latency against the framework, with the ratio where timed, and "not timed" where not
    assert "1.5×" in text and "0.3 ms (0.25 ms – 0.4 ms)" in text
    assert "not timed" in text
    # what ran and why, what was reused
    assert "changed params: flags" in text and "restored from the cache" in text
    # three charts, each inline SVG with its marks named; drawn once, then from the memo
    assert text.count("<figure class='chart'><svg") == 3
    for chart in ("times", "latency", "errors"):
        assert f'id="{chart}-mark-' in text, chart
    assert len(list(memo.glob("*.svg"))) == 3
    assert html.page(hand_made_record(), memo=memo) == text == html.page(hand_made_record())


def test_an_up_to_date_run_draws_no_time_chart_and_the_memo_keeps_only_used_charts(tmp_path):
    memo = tmp_path / "charts"
    html.page(hand_made_record(), memo=memo)
    record = hand_made_record()
    for task in record["tasks"]:
        task.update(status="up-to-date", seconds=0.0)
    text = html.page(record, memo=memo)
    assert "No stage ran or was restored in this run" in text
    assert text.count("<figure class='chart'><svg") == 2
    assert sorted(p.name.split("-")[0] for p in memo.glob("*.svg")) == ["errors", "latency"]


def test_a_record_written_before_roles_gives_the_same_page():
    old = hand_made_record()
    for task in old["tasks"]:
        del task["role"]
    assert html.page(old) == html.page(hand_made_record())


def test_the_time_chart_stacks_stages_in_the_order_they_run():
    """A model that enters at legalize comes first in the record (as the plan's order may
    list it beside the others' capture) and in the matrix: the chart still stacks capture
    first."""
    record = hand_made_record()
    record["tasks"][:0] = [_entry(s, "l", None) for s in ("legalize", "emit")] + \
        [_entry(s, "l", "a") for s in ("lower", "codegen")]
    text = html.page(record)
    marks = [text.index(f'id="times-mark-{stage}-0"') for stage in
             ("capture", "serialize", "import", "legalize", "emit", "lower", "codegen")]
    assert marks == sorted(marks)
    assert "The stages that run once per model (capture … emit)" in text


def test_an_old_record_without_timing_fields_says_not_timed():
    record = hand_made_record()
    for task in record["tasks"]:
        for key in ("latency", "framework_latency", "speed_ratio"):
            (task.get("result") or {}).pop(key, None)
    text = html.page(record)
    assert "1.5×" not in text and "framework: not timed" in text and "0.3 ms" in text


PUBLISH = """import sys; from pathlib import Path; from pipeline.report import record
record.publish(Path(sys.argv[1]) / "build" / "run.json", __import__("json").loads(sys.argv[2]))
print(" ".join(m for m in ("jinja2", "markupsafe", "matplotlib") if m in sys.modules))"""


def test_jinja2_loads_only_when_a_page_is_written(tmp_path):
    """The engine's start-up stays small: a run whose record is the last one's (a no-op run)
    reuses the page, as pipeline/report/record.py publishes it, and never loads Jinja2; each run is a
    fresh interpreter, as each doit invocation is."""
    def publish() -> list[str]:
        proc = subprocess.run([sys.executable, "-c", PUBLISH, str(tmp_path),
                               json.dumps(hand_made_record())], cwd=Path(__file__).parent.parent,
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "KILN_REPORT_CHARTS": "on"})
        return proc.stdout.split()

    assert publish() == ["jinja2", "markupsafe", "matplotlib"]
    assert "<table class='matrix'>" in (tmp_path / "build" / "report.html").read_text()
    assert publish() == []


# --- the real run's page in a real browser --------------------------------------------------

CELLS_JS = """return Array.from(document.querySelectorAll('table.matrix td.cell'), td => (
    {model: td.dataset.model, target: td.dataset.target, classes: td.className.split(' '),
     text: td.innerText, log: (td.querySelector('a.log') || {}).href || null}))"""
# per chart: how many drawn marks (paths and marker uses inside the ids named *-mark-*)
CHARTS_JS = """return Array.from(document.querySelectorAll('figure.chart'), f => {
    const svg = f.querySelector('svg');
    if (!svg) return null;
    const marks = svg.querySelectorAll('[id*="-mark-"] path, [id*="-mark-"] use, path[id*="-mark-"]');
    return {id: (svg.querySelector('[id*="-mark-"]') || {id: ''}).id.split('-')[0],
            marks: marks.length, width: svg.getBoundingClientRect().width};
})"""


def test_the_frameworks_run_page_in_a_real_browser(frameworks_run, browser):
    from selenium.webdriver.common.by import By

    record, failing = frameworks_run["record"], frameworks_run["failing"]
    browser.get(frameworks_run["page"].as_uri())
    assert browser.title == "kiln run"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    # exactly one cell per model x target, with the record's outcome
    cells = browser.execute_script(CELLS_JS)
    pairs = sorted((c["model"], c["target"]) for c in cells)
    assert pairs == sorted((m, t) for m in frameworks_run["models"] for t in frameworks_run["targets"])
    validates = {(t["model"], t["target"]): t for t in record if t["stage"] == "validate"}
    for cell in cells:
        pair = (cell["model"], cell["target"])
        if cell["model"] == failing:
            assert "failed" in cell["classes"] and cell["text"].startswith("failed at "), cell
        elif validates[pair]["status"] == "ran":
            assert validates[pair]["result"]["passed"]
            assert "passed" in cell["classes"] and cell["text"].startswith("passed"), cell
        # every cell links its log, and the link leads to the file
        assert cell["log"] and Path(url2pathname(urlparse(cell["log"]).path)).is_file(), cell
    passed = sum("passed" in c["classes"] for c in cells)
    assert passed == sum(t["status"] == "ran" and t["result"]["passed"] for t in validates.values())

    # the failing stage's error is one click away
    legalize = next(t for t in record if t["model"] == failing and t["status"] == "failed")
    cell = browser.find_element(By.CSS_SELECTOR, f"td.cell[data-model='{failing}']")
    error = cell.find_element(By.CSS_SELECTOR, "pre.error")
    assert not error.is_displayed()
    cell.find_element(By.TAG_NAME, "summary").click()
    assert error.is_displayed() and error.text.strip() == legalize["error"].strip()
    assert f"failed at {legalize['stage']}" in cell.text

    # every chart drew its marks: a bar or dot per model x target that has a number
    charts = browser.execute_script(CHARTS_JS)
    assert [c and c["id"] for c in charts] == ["times", "latency", "errors"], charts
    for chart in charts:
        assert chart["marks"] >= passed and chart["width"] > 200, charts
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_charts_off_leaves_each_chart_out_and_says_so(tmp_path):
    """KILN_REPORT_CHARTS=off (what the test suite runs with): the page is whole, each chart's
    place says why it is empty, and matplotlib draws nothing."""
    text = html.page(hand_made_record(), memo=tmp_path / "charts", draw_charts=False)
    assert "<svg" not in text and text.count("chart not drawn (KILN_REPORT_CHARTS=off)") == 3
    assert "<table class='matrix'>" in text and not (tmp_path / "charts").exists()
    assert html.charts_wanted({}) and not html.charts_wanted({"KILN_REPORT_CHARTS": "off"})


def test_the_error_table_says_what_judged_each_row():
    record = hand_made_record()
    judged = next(t for t in record["tasks"] if t["task"] == "validate:m@a")["result"]
    judged.update(rule="f64-noise", factor=0.081, factor_allowed=8.0, target_error=7e-8,
                  framework_error=4.9e-8)
    fixed = next(t for t in record["tasks"] if t["task"] == "validate:m@d")["result"]
    fixed.update(rule="atol/rtol", rule_why="the model's own atol/rtol")
    text = html.page(record)
    assert "float64 noise: 0.081× of 8× allowed (error vs float64 7.00e-08, framework&#39;s " \
        "f32 4.90e-08)" in text
    assert "atol/rtol (the model&#39;s own atol/rtol)" in text
