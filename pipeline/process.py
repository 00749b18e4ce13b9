"""Every external process kiln starts, started one way: a compiler, a runtime tool, a
benchmark, the framework's timing process, a Dask worker's stage process, a device listing.

Each one runs in a process group of its own, with a timeout (named in the error with how to
raise it), and the whole group is killed when it runs past that timeout, when its caller
leaves early (an exception in the stage), and when the run is stopped: stop_on_signals()
makes Ctrl-C (SIGINT) and SIGTERM kill every group still running before the run ends, so no
tool outlives kiln (docs/DESIGN.md §9.2). A group of its own, not kiln's: a terminal's
Ctrl-C would otherwise reach a tool before kiln could record what it was doing.

The seconds each process ran are added to the tool clock of the context that started it
(tool_clock): the record's "tool time" of a stage. Of kiln, this module imports only
pipeline.errors' StageError: a timeout and a stop are failures a stage reports as they come.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from .errors import ConfigError, StageError

# seconds: every tool's own limit is replaced by this one where it is set (a slow machine,
# a huge model); the timeout error names it
TIMEOUT_ENV = "KILN_TOOL_TIMEOUT"


class ToolTimeout(StageError):
    """A process ran past its timeout and was killed with its group: no verdict on its
    inputs (the machine may be slow or busy), never remembered."""

    def __init__(self, tool: str, seconds: float, command: str):
        said = f"{tool} did not finish within {seconds:g} s"
        super().__init__(f"{said} and was killed with every process it started (raise the "
                         f"limit with {TIMEOUT_ENV}=<seconds>)", command=command,
                         transient=f"{said}: a timeout is no verdict on its inputs")
        self.tool, self.seconds = tool, seconds


class Interrupted(StageError):
    """The run was stopped (Ctrl-C, SIGTERM) while this process ran, or before it started:
    it was killed; no verdict on anything."""

    def __init__(self, message: str):
        super().__init__(message, transient="the run was stopped")


@dataclass
class Finished:
    """A process that ended by itself, or was killed for using no CPU (`stopped` says so)."""
    argv: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    stopped: str | None = None

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def timeout_for(default: float) -> float:
    """The limit a call runs under: KILN_TOOL_TIMEOUT where set (seconds), else default."""
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={value!r}: give the seconds a tool may run, "
                          "e.g. 3600")
    return seconds


def signal_of(returncode: int) -> signal.Signals | None:
    """The signal an exit status stands for: -N (killed), a shell's 128+N, a launcher's
    256-N (the venv's Python launchers exit so for their child's -N), else None."""
    number = -returncode if returncode < 0 else \
        returncode - 128 if 128 < returncode < 128 + 65 else \
        256 - returncode if 256 - 65 < returncode < 256 else None
    try:
        return None if number is None else signal.Signals(number)
    except ValueError:
        return None


def exit_words(returncode: int) -> str:
    """How a process ended, for an error message: 'exited with 1', or the signal by name
    ('was killed by SIGKILL (signal 9)')."""
    sig = signal_of(returncode)
    if sig is None:
        return f"exited with {returncode}"
    return f"was killed by {sig.name} (signal {sig.value}" + \
        (": the out-of-memory killer sends it too)" if sig.name == "SIGKILL" else ")")


# --- the processes now running, for a stop to kill -------------------------------------

_live: dict[int, subprocess.Popen] = {}
# reentrant: the stop's handler (kill_all) runs in the main thread, which may hold it already
_live_lock = threading.RLock()
_stop_reason: str | None = None
# the main thread is between starting a process and registering it: a stop then waits for the
# registration (_start), or the process would be left running, unknown to kill_all
_main_starting = False
_stop_pending = False


def stop_reason() -> str | None:
    """'SIGINT' or 'SIGTERM' once the run has been told to stop, else None."""
    return _stop_reason


def kill_all() -> None:
    """Kill every process group still running (a stop, or the end of a run)."""
    with _live_lock:   # (a worker thread starting a process registers it first)
        running = list(_live.values())
    for proc in running:
        _kill_group(proc)


def stop_on_signals() -> None:
    """From now on SIGINT and SIGTERM stop the run: every process group kiln started is
    killed, stop_reason() says which signal, and KeyboardInterrupt is raised in the main
    thread (doit then ends the run and its reporter writes the stopped run's record). Only
    the main thread can install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _on_stop_signal)


def _on_stop_signal(signum, frame) -> None:
    global _stop_reason, _stop_pending
    first = _stop_reason is None
    _stop_reason = _stop_reason or signal.Signals(signum).name
    if _main_starting:   # (_start kills and raises once the process it starts is registered)
        _stop_pending = _stop_pending or first
        return
    kill_all()
    if first:
        raise KeyboardInterrupt(_stop_reason)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# --- the tool clock ----------------------------------------------------------------------

_clock: contextvars.ContextVar[dict[str, float] | None] = \
    contextvars.ContextVar("kiln_tool_clock", default=None)


@contextlib.contextmanager
def tool_clock() -> Iterator[dict[str, float]]:
    """Seconds per tool of every process started in this block (in this context: a thread a
    stage starts joins it through contextvars.copy_context)."""
    seconds: dict[str, float] = {}
    token = _clock.set(seconds)
    try:
        yield seconds
    finally:
        _clock.reset(token)


def _clocked(tool: str, seconds: float) -> None:
    clock = _clock.get()
    if clock is not None:
        clock[tool] = clock.get(tool, 0.0) + seconds


# --- starting a process ------------------------------------------------------------------

@contextlib.contextmanager
def started(argv: list[str], timeout: float, *, tool: str | None = None,
            stdin: IO | int | None = subprocess.DEVNULL, stdout: IO | int | None = None,
            stderr: IO | int | None = None, text: bool = False, cwd: Path | str | None = None,
            env: dict | None = None, fixed: bool = False) -> Iterator[subprocess.Popen]:
    """argv started in a process group of its own, for a caller that reads its output as it
    comes (the Popen is yielded). A watchdog kills the group at the timeout (ToolTimeout is
    raised when the block ends); leaving the block, whatever the reason, kills what is left."""
    name = tool or Path(argv[0]).name
    limit = timeout if fixed else timeout_for(timeout)
    proc = _start(argv, stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, env=env,
                  **({"text": True, "errors": "replace"} if text else {}))
    began = time.monotonic()
    expired = threading.Event()

    def expire():
        expired.set()
        _kill_group(proc)

    watchdog = threading.Timer(limit, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield proc
        proc.wait()
    except Exception as err:   # (the reader's error may be the kill's doing: say the kill)
        if expired.is_set():
            raise ToolTimeout(name, limit, shlex.join(argv)) from err
        _raise_if_stopped(name)
        raise
    finally:
        watchdog.cancel()
        _end(proc, name, began)
    if expired.is_set():
        raise ToolTimeout(name, limit, shlex.join(argv))
    _raise_if_stopped(name)


def run(argv: list[str], timeout: float, *, tool: str | None = None,
        stdin: Path | str | None = None, cwd: Path | str | None = None,
        env: dict | None = None, idle_s: float | None = None, fixed: bool = False) -> Finished:
    """argv to its end in a process group of its own, stdin from a file (a path: never the
    terminal), stdout and stderr read back as text. Raises ToolTimeout past the timeout,
    Interrupted when the run is stopped meanwhile. Given idle_s, a run whose group uses no
    CPU time for idle_s seconds is killed and returned with `stopped` saying so (a hang the
    caller may retry). fixed: KILN_TOOL_TIMEOUT does not replace the timeout (a limit on a
    whole stage's process, or on a probe, is not a tool's)."""
    name = tool or Path(argv[0]).name
    limit = timeout if fixed else timeout_for(timeout)
    with contextlib.ExitStack() as files:
        source = files.enter_context(open(stdin, "rb")) if stdin is not None else subprocess.DEVNULL
        out = files.enter_context(tempfile.TemporaryFile())
        err = files.enter_context(tempfile.TemporaryFile())
        proc = _start(argv, stdin=source, stdout=out, stderr=err, cwd=cwd, env=env)
        began = time.monotonic()
        try:
            stopped = _watch(proc, limit, idle_s)
        finally:
            seconds = _end(proc, name, began)
        if stopped == "timeout":
            raise ToolTimeout(name, limit, shlex.join(argv))
        _raise_if_stopped(name)
        out.seek(0)
        err.seek(0)
        return Finished(argv, None if stopped else proc.returncode,
                        out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                        seconds, stopped)


def _start(argv: list[str], **how) -> subprocess.Popen:
    global _main_starting, _stop_pending
    main = threading.current_thread() is threading.main_thread()
    with _live_lock:   # (registered before a stop could look for it)
        if _stop_reason is not None:
            raise Interrupted(f"the run was stopped ({_stop_reason}): {Path(argv[0]).name} "
                              "not started")
        _main_starting = main
        try:
            proc = subprocess.Popen(argv, start_new_session=True, **how)
            _live[proc.pid] = proc
        finally:
            _main_starting = False
    if main and _stop_pending:   # a stop came meanwhile: what _on_stop_signal left to do
        _stop_pending = False
        kill_all()
        _end(proc, Path(argv[0]).name, time.monotonic())   # (waited for, forgotten)
        raise KeyboardInterrupt(_stop_reason)
    return proc


def _end(proc: subprocess.Popen, tool: str, began: float) -> float:
    """Kill what is left of proc's group, forget it, clock its seconds."""
    _kill_group(proc)
    proc.wait()
    # the group's other members (a tool's own children) go with their leader's group kill;
    # one that left the group is no longer ours to find
    with _live_lock:
        _live.pop(proc.pid, None)
    seconds = time.monotonic() - began
    _clocked(tool, seconds)
    return seconds


def _raise_if_stopped(tool: str) -> None:
    if _stop_reason is not None:
        raise Interrupted(f"the run was stopped ({_stop_reason}) while {tool} ran")


def _watch(proc: subprocess.Popen, timeout: float, idle_s: float | None) -> str | None:
    """None when proc ended by itself; 'timeout', or why it hung, when it was killed."""
    started = busy = time.monotonic()
    spent = None
    while True:
        try:
            proc.wait(timeout=0.25)
            return None
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - started > timeout:
            _kill_group(proc)
            return "timeout"
        if idle_s is None:
            continue
        cpu = _group_cpu_ticks(proc.pid)
        if cpu != spent:
            spent, busy = cpu, now
        if cpu is not None and now - busy > idle_s:
            _kill_group(proc)
            return f"hung: no CPU time used for {idle_s:g} s"


def _group_cpu_ticks(group: int) -> int | None:
    """User and system clock ticks of every live process in the group (Linux /proc), or None
    where they cannot be read."""
    total, found = 0, False
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return None
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()   # after the command's name
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:      # pgrp; then utime and stime
            total, found = total + int(fields[11]) + int(fields[12]), True
    return total if found else None
