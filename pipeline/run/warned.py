"""Warnings that libraries raise while a stage runs (numpy's RuntimeWarning, a framework's
deprecation notes) go to that stage's log, never to the console between the progress lines.

Python prints a warning through warnings.showwarning; while a stage runs, its context holds
the stage's log lines (a contextvar: stages run in threads, each its own), and the warning
becomes one of them. Outside a stage, warnings show as before.
"""
from __future__ import annotations

import contextlib
import contextvars
import warnings
from typing import Iterator

_lines: contextvars.ContextVar[list[str] | None] = \
    contextvars.ContextVar("kiln_stage_log", default=None)
_shown_before = warnings.showwarning


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    lines = _lines.get()
    if lines is None:
        _shown_before(message, category, filename, lineno, file, line)
    else:
        lines.append(f"warning: {category.__name__}: {message} ({filename}:{lineno})")


@contextlib.contextmanager
def into(lines: list[str]) -> Iterator[None]:
    """Every warning raised in this block (in this context) is appended to lines."""
    # (set again on every stage: a test harness's catch_warnings puts the original back)
    warnings.showwarning = _show
    token = _lines.set(lines)
    try:
        yield
    finally:
        _lines.reset(token)
