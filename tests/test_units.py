"""How the reports write a time and a ratio (pipeline/report/units.py)."""
import pytest

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
