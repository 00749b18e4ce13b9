"""Numbers as a person reads them: times with their unit, ratios with a ×.

Its own module so that a stage may format a figure (pick's 'why') without its key depending
on the summary table's code.
"""
from __future__ import annotations


def duration(ms: float | None) -> str:
    """A time with its unit and about three significant digits: '81.5 s', '132 ms', '0.05 ms'."""
    if ms is None:
        return ""
    if ms >= 1000:
        return f"{ms / 1000:.3g} s" if ms < 100_000 else f"{ms / 1000:.0f} s"
    return f"{ms:.3g} ms" if ms >= 0.01 else f"{ms * 1000:.3g} µs"



def times(ratio: float | None) -> str:
    """IREE's time over the framework's: '1.23×' (above 1, IREE is slower)."""
    return "" if ratio is None else f"{ratio:.3g}×"

