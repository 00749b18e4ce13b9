"""Expected failures on hand-made inputs, no compiler: the xfail file and its errors
(pipeline/plan/xfail.py), the verdict and exit code over a run record
(pipeline/report/verdict.py), and build/junit.xml (pipeline/report/junit.py), read back with
the stdlib's ElementTree. The reporter acting on the verdict is in tests/test_reporter.py; a
real run in tests/test_pipeline.py."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from pipeline.plan import xfail
from pipeline.report import console, junit, verdict
from pipeline.stage import ConfigError

TARGETS = ("cpu", "vulkan")


def write(tmp_path, text: str):
    path = tmp_path / "xfail.yaml"
    path.write_text(text)
    return path


def test_the_file_maps_targets_to_cases_and_reasons_with_star_for_any(tmp_path):
    path = write(tmp_path, "cpu:\n  bessel: no lowering\n'*':\n  boom: its factory raises\n"
                           "  bessel: never used for cpu\n")
    expected = xfail.load(path, "xfail=x", TARGETS)
    assert xfail.reason(expected, "bessel", "cpu") == "no lowering"   # the target's own wins
    assert xfail.reason(expected, "bessel", "vulkan") == "never used for cpu"
    assert xfail.reason(expected, "boom", "cpu") == "its factory raises"
    assert xfail.reason(expected, "mlp", "cpu") is None
    # a target built with another release (iree=3.12.0) is listed under its own name
    assert xfail.reason(expected, "bessel", "cpu+3.12.0") == "no lowering"
    assert xfail.load(write(tmp_path, ""), "xfail=x", TARGETS) == {}


@pytest.mark.parametrize("text, words", [
    ("cpu: [bessel]\n", ["cpu: expected a mapping of model name to the reason", "['bessel']"]),
    ("cpu:\n  bessel:\n", [":2: cpu.bessel: expected the reason it is expected to fail", "None"]),
    ("cpu:\n  bessel: 3\n", [":2: cpu.bessel: expected the reason it is expected to fail", "3"]),
    ("cpu:\n  0001: x\n", [":2: cpu: expected a model name (text; quote a name", "got 1"]),
    ("- cpu\n", ["expected a YAML mapping {target: {model: reason}}", "got list"]),
    ("gpu:\n  bessel: x\n", ["unknown target 'gpu'", "valid: cpu, vulkan, or '*'"]),
    ("cpu: {bessel: x\n", ["not valid YAML"]),
])
def test_a_bad_file_is_named_with_what_is_valid(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        xfail.load(path, "xfail=known.yaml", TARGETS)
    message = str(err.value)
    assert message.startswith("xfail=known.yaml: ") and str(path) in message, message
    for word in words:
        assert word in message, message


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"xfail=nope.yaml: cannot read .*nope.yaml: No such file"):
        xfail.load(tmp_path / "nope.yaml", "xfail=nope.yaml", TARGETS)


# --- a run record: model m on a (passes), b (fails at lower), c (fails at validate), d (no
# device); model front (fails at capture) on a; each case's tasks carry the plan's "xfail"

def task(stage, model, target, status="ran", role=None, **extra) -> dict:
    name = f"{stage}:{model}" + (f"@{target}" if target else "")
    return {"task": name, "stage": stage, "model": model, "target": target, "role": role,
            "status": status, "seconds": 1.5, **extra}


def record(expected: dict[str, str] | None = None, strict: bool = False) -> dict:
    """expected: case ('m@b') -> reason, put on that case's tasks as the plan does."""
    expected = expected or {}
    passed = {"passed": True, "max_abs_error": 0.0, "max_rel_error": 0.0}

    def case(model, target, *tasks):
        reason = expected.get(f"{model}@{target}")
        return [{**t, **({"xfail": reason} if reason else {})} for t in tasks]

    tasks = [task("capture", "m", None), task("capture", "front", None, "failed", error="no torch"),
             *case("m", "a", task("lower", "m", "a"),
                   task("validate", "m", "a", role="verdict", result=passed)),
             *case("m", "b", task("lower", "m", "b", "failed", error="bad flag <x> & \x1b[1m",
                                  command="iree-compile --bad", log="build/logs/lower.m@b.log"),
                   task("validate", "m", "b", "skipped", role="verdict")),
             *case("m", "c", task("lower", "m", "c"),
                   task("validate", "m", "c", "failed", role="verdict", error="max abs error 3",
                        result={"passed": False})),
             *case("m", "d", task("validate", "m", "d", "skipped", role="verdict",
                                  reason="skipped: no cuda device")),
             *case("front", "a", task("lower", "front", "a", "skipped"),
                   task("validate", "front", "a", "skipped", role="verdict"))]
    return {"tasks": tasks, **({"strict": True} if strict else {})}


FAILING = {"m@b": "flag removed", "m@c": "tolerance", "front@a": "needs torch"}


def test_unexpected_failures_alone_fail_the_run():
    found = verdict.verdict(record())
    assert found.failed == ("front@a", "m@b", "m@c") and found.exit_code == 1
    found = verdict.verdict(record(FAILING))
    assert found.failed == () and found.xfail == ("front@a", "m@b", "m@c")
    assert found.exit_code == 0 and verdict.lines(found) == []   # (no xpass to name)
    assert console.lines(record(FAILING), found, 30, "report.md")[1] == \
        "kiln: 5 cases: 1 passed, 0 failed, 3 xfail, 1 skipped"
    partly = verdict.verdict(record({"m@b": "flag removed"}))
    assert partly.failed == ("front@a", "m@c") and partly.exit_code == 1


def test_an_unexpected_pass_is_named_and_fails_only_under_strict():
    listed = {**FAILING, "m@a": "flaky", "m@d": "no device either"}   # skipped: neither
    found = verdict.verdict(record(listed))
    assert found.xpass == (("m@a", "flaky"),) and found.exit_code == 0
    assert verdict.lines(found)[0] == "xpass: m@a passed, but is listed as expected to fail (flaky)"
    strict = verdict.verdict(record(listed, strict=True))
    assert strict.exit_code == 1 and "strict=1: this fails the run" in verdict.lines(strict)[0]
    # nothing passed unexpectedly
    assert verdict.verdict(record(FAILING, strict=True)).exit_code == 0


def test_a_failure_no_case_holds_and_a_stopped_run_are_unexpected():
    lonely = {"tasks": [task("capture", "solo", None, "failed", error="x")]}
    assert verdict.verdict(lonely).failed == ("capture:solo",)
    stopped = verdict.verdict({"tasks": [], "error": "targets.yaml:3: unknown backend"})
    assert stopped.exit_code == 1
    assert verdict.verdict({"tasks": []}).exit_code == 0


def cases(xml: bytes) -> dict[str, ET.Element]:
    suite = ET.fromstring(xml).find("testsuite")
    return {f"{c.get('classname')}@{c.get('name')}": c for c in suite.iter("testcase")}


def test_junit_holds_every_case_with_its_failure_skip_and_time():
    document = junit.xml(record({"m@c": "tolerance", "m@a": "flaky"}))
    suite = ET.fromstring(document).find("testsuite")
    found = cases(document)
    assert sorted(found) == ["front@a", "m@a", "m@b", "m@c", "m@d"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) \
        == ("5", "2", "2", "0")
    failure = found["m@b"].find("failure")
    assert failure.get("type") == "lower"
    assert failure.get("message") == "failed at lower: bad flag <x> & ?[1m"   # no raw escape
    assert "command: iree-compile --bad" in failure.text
    assert "log: build/logs/lower.m@b.log" in failure.text
    assert found["front@a"].find("failure").get("message") == "failed at capture: no torch"
    assert found["m@c"].find("skipped").get("message") == \
        "xfail: tolerance (failed at validate: max abs error 3)"
    assert found["m@d"].find("skipped").get("message") == "skipped: no cuda device"
    assert list(found["m@a"]) and found["m@a"].find("system-out").text.startswith("xpass")
    # a case's time: its stages' seconds, the model's front end included
    assert float(found["m@a"].get("time")) == pytest.approx(4.5)
    total = sum(float(c.get("time")) for c in found.values())
    assert float(suite.get("time")) == pytest.approx(total)


def test_junit_fails_an_unexpected_pass_under_strict_and_says_why_a_run_stopped():
    strict = cases(junit.xml(record({"m@a": "flaky"}, strict=True)))
    assert strict["m@a"].find("failure").get("type") == "xpass"
    stopped = cases(junit.xml({"tasks": [], "error": "targets.yaml:3: unknown backend"}))
    assert stopped["kiln@configuration"].find("failure").get("message") == \
        "targets.yaml:3: unknown backend"


def test_the_page_colours_xfail_and_xpass_and_says_why():
    from pipeline.report import html
    page = html.page(record({"m@c": "tolerance", "m@a": "flaky"}), draw_charts=False)
    assert "class='cell xfail'" in page and "class='cell xpass'" in page
    assert "expected to fail: tolerance" in page and "listed as expected to fail: flaky" in page
    assert "1 xfail</span>" in page and "1 xpass</span>" in page


# --- what a hand-written file of hundreds of entries gets wrong --------------------------

@pytest.mark.parametrize("text, line, first", [
    ("cpu:\n  bessel: a\n'*':\n  boom: b\ncpu:\n  other: c\n", 5, 1),   # a second cpu:
    ("cpu:\n  bessel: a\n  boom: b\n  bessel: c\n", 4, 2),                 # a case twice
])
def test_a_duplicate_key_is_refused_naming_both_lines(tmp_path, text, line, first):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        xfail.load(path, "xfail=known.yaml", TARGETS)
    assert f"{path}:{line}:" in str(err.value) and f"first at line {first}" in str(err.value)


def test_a_reason_that_is_no_text_names_its_entry_and_line_not_the_whole_file(tmp_path):
    cases = "".join(f"  case{i}: reason number {i} of many\n" for i in range(300))
    path = write(tmp_path, f"cpu:\n{cases}  broken: [1, 2]\n")
    with pytest.raises(ConfigError) as err:
        xfail.load(path, "xfail=known.yaml", TARGETS)
    message = str(err.value)
    assert f"{path}:302: cpu.broken:" in message and "[1, 2]" in message, message
    assert "case7" not in message and len(message) < 400, message
