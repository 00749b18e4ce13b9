"""How speed is measured (stages/timing.py), on real runs: the mlp example (torch) and, when
onnxruntime is installed, onnx_cnn, validated on cpu by ONE doit invocation shared by the
tests below; a hand-written MLIR file, which has no framework to time; the repetition and
median helpers; and the machine lock that keeps a timing apart from every other stage."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Project, copy_project, needs_torch

from pipeline.report import table, units
from stages import timing

REPO = Path(__file__).resolve().parent.parent
ADD_MLIR = """
func.func @main(%a: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %out = arith.addf %a, %a : tensor<4x8xf32>
  return %out : tensor<4x8xf32>
}
"""


def has_onnx() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@pytest.fixture
def project(project):
    """conftest's project, timed: every test here is about the figures."""
    project.timing = "on"
    return project


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """mlp (and onnx_cnn) validated on cpu, once for the module."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("needs kiln[torch]")
    project = Project(copy_project(tmp_path_factory.mktemp("timing") / "proj"), timing="on")
    models = "mlp,onnx_cnn" if has_onnx() else "mlp"
    project.doit("validate", f"model={models}", "target=cpu")
    # the target's default variant: it times the framework too
    return project, {t["model"]: t for t in project.record()
                     if t["stage"] == "validate" and t["target"] == "cpu"}


def threads() -> str:
    """How many threads IREE's local-task and the framework are given: one per core."""
    count = len(timing.cores())
    return f"{count} thread{'s' if count != 1 else ''}"


def assert_figure(figure: dict, min_runs: int = 3) -> None:
    assert set(figure) == {"median_ms", "min_ms", "max_ms", "runs", "how"}, figure
    assert figure["runs"] >= min_runs
    assert 0 < figure["min_ms"] <= figure["median_ms"] <= figure["max_ms"]
    assert "warm-up" in figure["how"] and "no other stage running" in figure["how"]


@needs_torch
def test_mlp_module_and_torch_are_timed_with_repetitions(validated):
    _, entries = validated
    result = entries["mlp"]["result"]
    assert_figure(result["latency"])
    assert result["latency_ms"] == result["latency"]["median_ms"]
    # IREE's local-task and torch get the same number of threads: one per core
    assert f"{threads()} (--task_topology_group_count)" in result["latency"]["how"]
    framework = result["framework_latency"]
    assert_figure(framework)
    assert framework["how"].startswith("torch:")
    assert f"{threads()} (torch.set_num_threads)" in framework["how"]
    assert "framework_latency_why" not in result
    assert result["speed_ratio"] == pytest.approx(result["latency_ms"] / framework["median_ms"])
    # how it was timed: the test suite's setting (conftest.TEST_SETTINGS), at most 3 repetitions
    assert result["timing_setting"] == {"repetitions": 3, "set_by": "KILN_TIMING_REPETITIONS"}
    assert result["latency"]["runs"] <= 3 and framework["runs"] <= 3


@needs_torch
def test_the_report_shows_both_times_and_their_ratio(validated):
    project, _ = validated
    row = next(r for r in table.rows(project.record()) if r["model"] == "mlp")
    assert row["ms"] and row["framework_ms"] and row["ratio"]
    text = table.table(project.record())
    assert "framework time/run" in text and units.times(row["ratio"]) in text
    markdown = (project.root / "build" / "report.md").read_text()
    assert units.duration(row["framework_ms"]) in markdown


@pytest.mark.skipif(not has_onnx(), reason="needs kiln[onnx]")
def test_onnxruntime_is_timed_with_the_same_threads(validated):
    _, entries = validated
    result = entries["onnx_cnn"]["result"]
    assert_figure(result["latency"])
    assert_figure(result["framework_latency"])
    assert f"{threads()} (onnxruntime intra_op_num_threads" in result["framework_latency"]["how"]


@needs_torch
def test_a_framework_that_cannot_be_timed_gives_a_reason_not_an_error(validated):
    project, _ = validated
    logged = []
    figure, why = timing.framework_latency("nosuch", project.root / "build" / "mlp" / "capture",
                                           1, "serialized", logged.append)
    assert figure is None and "unknown framework 'nosuch'" in why


def test_mlir_file_has_no_framework_time_and_still_passes(project, tmp_path):
    model = tmp_path / "add.mlir"
    model.write_text(ADD_MLIR)
    project.doit("validate", f"model={model}", "target=cpu")
    result = next(t for t in project.record()
                  if t["stage"] == "validate" and t["target"] == "cpu")["result"]
    assert result["passed"]
    assert_figure(result["latency"])
    assert result["framework_latency"] is None and result["speed_ratio"] is None
    assert "no framework" in result["framework_latency_why"]


def test_the_repetitions_setting_enters_validates_key_and_a_bad_one_is_named(project, tmp_path):
    """A figure of fewer repetitions never answers for one of more: the setting is in
    validate's key; a value that is not a count fails validate, saying what is valid."""
    model = tmp_path / "add.mlir"
    model.write_text(ADD_MLIR)
    args = ("validate", f"model={model}", "target=cpu")
    project.doit(*args)
    project.doit(*args, env_extra={"KILN_TIMING_REPETITIONS": "4"})
    validate = next(t for t in project.record() if t["stage"] == "validate")
    assert validate["status"] == "ran" and validate["why"] == "changed params: timing_repetitions"
    assert validate["result"]["timing_setting"] == {"repetitions": 4,
                                                    "set_by": "KILN_TIMING_REPETITIONS"}
    proc = project.doit(*args, env_extra={"KILN_TIMING_REPETITIONS": "ten"}, check=False)
    assert proc.returncode != 0
    validate = next(t for t in project.record() if t["stage"] == "validate")
    valid = (f"expected a whole number of timing repetitions from 1 to "
             f"{timing.MAX_REPETITIONS} (default {timing.REPETITIONS})")
    assert validate["error"] == f"KILN_TIMING_REPETITIONS='ten': {valid}"
    for bad in ("0", "101", "2.5"):
        with pytest.raises(ValueError) as err:
            timing.repetitions_setting({"KILN_TIMING_REPETITIONS": bad})
        assert str(err.value) == f"KILN_TIMING_REPETITIONS='{bad}': {valid}"
    assert timing.repetitions_setting({}) == timing.REPETITIONS


def test_spread_is_median_min_max_and_count():
    assert timing.spread([3.0, 1.0, 2.0]) == {"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0,
                                              "runs": 3}
    assert timing.spread([4.0, 1.0, 2.0, 3.0])["median_ms"] == 2.5
    with pytest.raises(ValueError):
        timing.spread([])
    assert timing.ratio({"median_ms": 3.0}, {"median_ms": 2.0}) == 1.5
    assert timing.ratio({"median_ms": 3.0}, None) is None


def test_a_callable_is_warmed_up_then_repeated():
    calls = []

    def run():
        calls.append(time.perf_counter())
        time.sleep(0.002 if len(calls) > 1 else 0.05)   # a slow first call, as a JIT's

    figure, how = timing.time_callable(run, budget_s=1.0)
    assert figure["runs"] >= 3
    assert 2 <= figure["min_ms"] <= figure["median_ms"] <= figure["max_ms"] < 50
    assert "after a warm-up" in how and len(calls) > figure["runs"]


def test_a_module_too_slow_for_the_budget_is_not_repeated():
    assert timing.iree_plan(5.0) == timing.REPETITIONS
    assert timing.iree_plan(timing.BUDGET_S * 1000 / 2) == 2
    assert timing.iree_plan(timing.BUDGET_S * 1000 * 3) is None
    figure = timing.iree_single_call(135_000.0)
    assert figure["runs"] == 1 and "not repeated" in figure["how"]


def test_a_timing_waits_for_the_stages_running_and_says_so(tmp_path):
    """Another process's stage holds the machine shared: the timing waits until it ends."""
    from pipeline.run import machine
    from pipeline.stage import StageContext
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from pipeline.run import machine
        with machine.shared(Path({str(tmp_path)!r})):
            print("held", flush=True)
            time.sleep(1.0)
        """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with machine.shared(tmp_path) as held:
            ctx = StageContext(None, None, {}, tmp_path, [], held)
            started = time.monotonic()
            with timing.one_at_a_time(ctx) as serialized:
                waited = time.monotonic() - started
        assert waited > 0.5, waited
        assert serialized.startswith("no other stage running, load average")
    finally:
        holder.wait(timeout=10)
