"""The summary table's wording: times carry their unit."""
import pytest

from pipeline.report import duration, table


@pytest.mark.parametrize("ms, shown", [(81480.7, "81.5 s"), (132.07, "132 ms"), (9.9, "9.9 ms"),
                                       (0.05, "0.05 ms"), (0.004, "4 µs"), (1500, "1.5 s"),
                                       (250_000, "250 s"), (None, "")])
def test_durations_carry_their_unit(ms, shown):
    assert duration(ms) == shown


def test_the_table_shows_time_per_run_with_its_unit():
    entries = [{"task": "validate:m@cpu", "stage": "validate", "model": "m", "target": "cpu",
                "status": "ran", "result": {"passed": True, "latency_ms": 135706.0}}]
    text = table(entries)
    assert "time/run" in text and "136 s" in text and "135706" not in text
