"""Stages share the machine; a measurement needs it to itself.

Every stage runs holding the machine lock shared. A stage that measures (validate timing a
module and the framework) asks for it alone: it waits until the stages already running have
finished, and no stage starts until it is done. So `doit -n 2` compiles in parallel, yet
no timing ever shares the cores with a compile or with another timing.

The locks are two files in the cache directory, the one place every process that builds
here shares (doit's threads, a second doit, LocalCluster workers); flock releases them when
a process dies. A gate in front of the lock keeps stages that start one after another from
starving a measurement that waits: a stage passes the gate on its way in, a measurement
closes it while it waits and measures.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".machine.lock"
GATE_NAME = ".machine-gate.lock"


class MachineLock:
    """One stage's hold on the machine: shared while it runs, exclusive inside alone()."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        # flock needs no write access; each holder opens its own descriptor, so threads of one
        # process exclude each other as separate processes do
        self.lock = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CREAT, 0o644)
        self.gate = os.open(directory / GATE_NAME, os.O_RDONLY | os.O_CREAT, 0o644)

    def share(self) -> None:
        fcntl.flock(self.gate, fcntl.LOCK_SH)    # waits while a measurement holds the gate
        fcntl.flock(self.lock, fcntl.LOCK_SH)
        fcntl.flock(self.gate, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        # let go first: two stages that both want the machine alone must not wait on each other
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        fcntl.flock(self.gate, fcntl.LOCK_EX)    # no stage starts from here on
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX)    # the running ones finish
            try:
                yield
            finally:
                fcntl.flock(self.lock, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self.gate, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.lock)   # closing releases the locks
        os.close(self.gate)


@contextlib.contextmanager
def shared(directory: Path | None) -> Iterator[MachineLock | None]:
    """Hold the machine shared for a stage run (None: no directory to lock in, as in engine
    unit tests; alone() then does not wait)."""
    if directory is None:
        yield None
        return
    try:
        held = MachineLock(directory)
    except OSError:   # a read-only cache: run unserialized rather than not at all
        yield None
        return
    try:
        held.share()
        yield held
    finally:
        held.close()
