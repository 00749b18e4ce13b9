"""Progress while stages run: how many of the run's cases are done, which stage of which
model@target is running, and for how long so far.

The reporter tells a Progress when a task starts and when it ends, and what the run has done
so far (its `done` callable: "37/412 cases done, 2 failed"). A daemon thread wakes up about
twice a second and shows the tasks that have run longer than a threshold, and, once the run
itself has, that count: on a terminal as a live, transient block of lines (rich), gone once
they finish; elsewhere (CI logs) as a plain "still running" line per task and a "cases done"
line every 30 s. All output of the reporter goes through write(), so doit's own lines land
above the live block instead of through it.

    KILN_PROGRESS=0            off
    KILN_PROGRESS_AFTER=2      seconds a task runs before it is shown
    KILN_PROGRESS_EVERY=30     seconds between plain lines for one task

Cheap when there is nothing to show: the reporter imports this module when a stage first
runs (a no-op run never does), and rich is imported only when a live block is first shown
(a piped run, or a run of quick stages, never imports it).
"""
from __future__ import annotations

import atexit
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO


@dataclass(frozen=True)
class Settings:
    after: float = 2.0    # a task is shown once it has run this long
    every: float = 30.0   # plain mode: one line per task this often

    @property
    def tick(self) -> float:
        """How often the thread wakes: twice a second, sooner where the thresholds are short
        (tests), never busy-looping."""
        return max(0.02, min(0.5, self.after / 2, self.every / 2))


def settings_from_env(env=os.environ) -> Settings | None:
    """The settings the environment asks for; None when KILN_PROGRESS=0 turns progress off."""
    if env.get("KILN_PROGRESS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return Settings(after=_seconds(env, "KILN_PROGRESS_AFTER", Settings.after),
                    every=_seconds(env, "KILN_PROGRESS_EVERY", Settings.every))


def _seconds(env, name: str, default: float) -> float:
    try:
        value = float(env[name])
    except KeyError:
        return default
    except ValueError:
        raise ValueError(f"{name}={env[name]!r}: expected a number of seconds") from None
    if value < 0:
        raise ValueError(f"{name}={env[name]!r}: expected a number of seconds, not below 0")
    return value


def elapsed_text(seconds: float) -> str:
    """'7s', '1m 05s', '2h 03m': short, and of stable width within each range."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def describe(task) -> tuple[str, str]:
    """(stage, what): ('validate', 'resnet@vulkan') for a kiln stage; (task name, '') for any
    other task (doit prune)."""
    info = (getattr(task, "meta", None) or {}).get("kiln")
    if not info:
        return task.name, ""
    what = info["model"] + (f"@{info['target']}" if info.get("target") else "")
    return info["stage"], what


@dataclass
class _Running:
    name: str
    stage: str
    what: str
    since: float
    next_note: float = 0.0   # plain mode: elapsed time at which to print the next line


@dataclass
class Slow:
    """A task shown: it has run longer than the threshold."""
    name: str
    stage: str
    what: str
    elapsed: float


@dataclass
class Progress:
    """The tasks in flight, and their display. Thread-safe: doit's thread runner starts tasks
    from worker threads while the main thread ends them."""
    out: TextIO
    settings: Settings | None                 # None: off (every method does nothing extra)
    live: bool | None = None                  # None: a live block when out is a terminal
    clock: Callable[[], float] = time.monotonic
    done: Callable[[], str] | None = None     # what the run has done so far, in words
    _running: dict[str, _Running] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)  # for _running
    _io: threading.RLock = field(default_factory=threading.RLock, init=False)  # one writer
    _stopped: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _terminal: "_Terminal | None" = field(default=None, init=False)  # rich, once shown
    _began: float = field(default=0.0, init=False)
    _next_count: float = field(default=0.0, init=False)   # plain mode: when the next count line is

    def __post_init__(self):
        if self.live is None:
            self.live = _is_terminal(self.out)
        self._began = self.clock()
        if self.settings is not None:
            self._next_count = max(self.settings.after, self.settings.every)

    # --- what the reporter calls -------------------------------------------------------

    def started(self, task) -> None:
        if self.settings is None or not task.actions or task.name.startswith("_"):
            return   # doit shows neither group tasks (no actions) nor private ones
        stage, what = describe(task)
        first_note = max(self.settings.after, self.settings.every)
        with self._lock:
            self._running[task.name] = _Running(task.name, stage, what, self.clock(), first_note)
        self._start_thread()

    def finished(self, task) -> None:
        with self._lock:
            if self._running.pop(task.name, None) is None:
                return
        if self._terminal is not None:   # take it off the screen now, not at the next tick
            self._show(self.slow())

    def write(self, text: str) -> None:
        """The reporter's output: above the live block while one is shown."""
        with self._io:
            if self._terminal is not None:
                # the block printed below the text is the current one, not the last tick's
                self._show(self.slow(), refresh=False)
                self._terminal.write(text)
            else:
                self.out.write(text)

    def stop(self) -> None:
        """End the thread and clear the live block (before the summary table; on failures
        and Ctrl-C too, since doit calls complete_run in a finally). Safe to call twice."""
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        with self._io:
            if self._terminal is not None:
                self._terminal.clear()

    # --- the thread ----------------------------------------------------------------------

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopped.is_set():
                return
            # a daemon: a progress display never keeps a finished or interrupted run alive
            self._thread = threading.Thread(target=self._loop, name="kiln-progress", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self.settings.tick):
            try:
                self.tick()
            except Exception as err:   # a display must never fail the build: say it, stop
                with self._io:
                    self.out.write(f"kiln: progress display stopped: {err!r}\n")
                return

    def slow(self) -> list[Slow]:
        """The tasks running longer than the threshold, longest first."""
        now = self.clock()
        with self._lock:
            running = list(self._running.values())
        shown = [Slow(r.name, r.stage, r.what, now - r.since) for r in running
                 if now - r.since >= self.settings.after]
        return sorted(shown, key=lambda s: -s.elapsed)

    def tick(self) -> None:
        """One wake-up: refresh the live block, or print the plain lines that are due."""
        if self._stopped.is_set():
            return
        if self.live:
            self._show(self.slow())
        else:
            self._note_due()

    def _count(self) -> Slow | None:
        """The run's count as a line of the block, once the run has lasted the threshold."""
        elapsed = self.clock() - self._began
        if self.done is None or elapsed < self.settings.after:
            return None
        return Slow("", "kiln", self.done(), elapsed)

    def _show(self, slow: list[Slow], refresh: bool = True) -> None:
        with self._io:
            if self._stopped.is_set():
                return
            count = self._count()
            lines = [count, *slow] if count is not None else slow
            if self._terminal is None:
                if not lines:
                    return   # nothing to show yet: rich stays unimported
                self._terminal = _Terminal(self.out)
                if not self._terminal.interactive:   # TERM=dumb and the like: plain lines
                    self._terminal, self.live = None, False
                    return
            if lines:
                self._terminal.show(lines, refresh)
            else:
                self._terminal.clear()

    def _note_due(self) -> None:
        now, every = self.clock(), self.settings.every
        due = []
        with self._lock:
            for r in self._running.values():
                elapsed = now - r.since
                if elapsed >= r.next_note:
                    due.append(f"kiln: still running {r.name} ({elapsed_text(elapsed)})\n")
                    # the next multiple of `every`, even where a tick came late
                    r.next_note = (int(elapsed / every) + 1) * every if every > 0 else elapsed
        elapsed = now - self._began
        if self.done is not None and elapsed >= self._next_count:
            due.append(f"kiln: {self.done()} ({elapsed_text(elapsed)})\n")
            self._next_count = (int(elapsed / every) + 1) * every if every > 0 else elapsed
        if due:
            with self._io:
                self.out.write("".join(due))
                self.out.flush()   # a piped stdout is block-buffered: CI should see it now


def _is_terminal(out) -> bool:
    try:
        return out.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


class _Terminal:
    """The live block on a terminal, drawn by rich: one line per slow task, transient (erased
    when it ends), redrawn on each tick; text written meanwhile is printed above it."""

    def __init__(self, out: TextIO):
        from rich.console import Console  # here, not at the top: see the module docstring
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.interactive = self.console.is_terminal and not self.console.is_dumb_terminal
        self._live = None
        atexit.register(self.clear)   # never leave the cursor hidden, however the run ends

    def show(self, slow: list[Slow], refresh: bool = True) -> None:
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text
        grid = Table.grid(padding=(0, 2))
        for s in slow:   # Text, not markup: write() renders with markup off, and so would this
            grid.add_row(Text(s.stage, style="bold"), Text(s.what),
                         Text(elapsed_text(s.elapsed), style="cyan"))
        if self._live is None:
            # doit captures sys.stdout inside actions; a Live that swapped sys.stdout too
            # could restore doit's capture after doit had restored the real stream
            self._live = Live(grid, console=self.console, transient=True, auto_refresh=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        self._live.update(grid, refresh=refresh)

    def clear(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def write(self, text: str) -> None:
        # as is: no markup, highlighting or wrapping of doit's lines
        self.console.out(text, end="", highlight=False)
