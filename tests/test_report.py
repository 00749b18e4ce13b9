"""The summary table's wording: times carry their unit, IREE's beside the framework's."""
import pytest

from pipeline.report.table import markdown, rows, table
from pipeline.report.units import duration, times


@pytest.mark.parametrize("ms, shown", [(81480.7, "81.5 s"), (132.07, "132 ms"), (9.9, "9.9 ms"),
                                       (0.05, "0.05 ms"), (0.004, "4 µs"), (1500, "1.5 s"),
                                       (250_000, "250 s"), (None, "")])
def test_durations_carry_their_unit(ms, shown):
    assert duration(ms) == shown


@pytest.mark.parametrize("ratio, shown", [(1.2345, "1.23×"), (0.25, "0.25×"), (12.0, "12×"),
                                          (None, "")])
def test_ratios_read_as_times(ratio, shown):
    assert times(ratio) == shown


def validate_entry(result: dict) -> dict:
    return {"task": "validate:m@cpu", "stage": "validate", "model": "m", "target": "cpu",
            "status": "ran", "result": {"passed": True, **result}}


def test_the_table_shows_time_per_run_with_its_unit():
    # a record written before framework timing: no framework figure, no ratio
    text = table([validate_entry({"latency_ms": 135706.0})])
    assert "time/run" in text and "136 s" in text and "135706" not in text


def test_rows_and_table_show_iree_and_framework_times_and_their_ratio():
    result = {"latency_ms": 2.0,
              "latency": {"median_ms": 2.0, "min_ms": 1.9, "max_ms": 2.5, "runs": 10, "how": "x"},
              "framework_latency": {"median_ms": 1.6, "min_ms": 1.5, "max_ms": 1.7, "runs": 10,
                                    "how": "y"},
              "speed_ratio": 1.25}
    (row,) = rows([validate_entry(result)])
    assert (row["ms"], row["framework_ms"], row["ratio"]) == (2.0, 1.6, 1.25)
    text = table([validate_entry(result)])
    assert "framework time/run" in text and "2 ms" in text and "1.6 ms" in text \
        and "1.25×" in text
    summary = markdown({"tasks": [validate_entry(result)]})
    assert "1.25×" in summary and "1.6 ms" in summary and "medians" in summary


def test_no_framework_time_leaves_its_cells_empty():
    result = {"latency_ms": 0.5, "framework_latency": None, "speed_ratio": None,
              "framework_latency_why": "no framework: the model is an MLIR file"}
    (row,) = rows([validate_entry(result)])
    assert row["framework_ms"] is None and row["ratio"] is None
    assert "×" not in table([validate_entry(result)])
