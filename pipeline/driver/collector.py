"""Python's cyclic garbage collector, held off while doit only reads and checks.

Until a task runs, a doit invocation only allocates what it keeps to the end: the task list,
doit's Task objects, every row of .doit.db decoded. None of it is garbage, yet each
collection walks all of it, and the older generations grow with it: on a 600-task no-op the
collector was a sixth of kiln's cost over bare doit. So the session holds the collector off
from the moment dodo.py loads, and the first task that runs starts it again (stage work
and the libraries it imports make real cycles), with what was loaded so far set aside
(gc.freeze) so later collections do not walk it again.
"""
from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_held = False   # whether this module turned the collector off (and so must turn it back on)


def hold() -> None:
    """No collection until resume(): called once dodo.py starts loading kiln's tasks."""
    global _held
    with _lock:
        if gc.isenabled():
            gc.disable()
            _held = True


def resume() -> None:
    """A task is about to run: collect again, leaving what was loaded so far out of it."""
    global _held
    with _lock:
        if _held:
            _held = False
            gc.freeze()
            gc.enable()
