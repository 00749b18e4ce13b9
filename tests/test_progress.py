"""Progress while stages run (pipeline/report/progress.py): the tracker with a fake clock,
then real doit runs of test_reporter's tiny project whose stage sleeps, piped (plain lines)
and on a pseudo-terminal (a live block that leaves doit's lines and the summary table
intact)."""
from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import threading
import time

import pytest
from test_reporter import DOIT, doit_env, make_project, run_record

from pipeline.report.progress import Progress, Settings, describe, elapsed_text, settings_from_env
from pipeline.report.table import table as summary_table


class FakeTask:
    """What the reporter hands over: doit's Task has these three."""

    def __init__(self, name, stage=None, model=None, target=None, actions=("run",)):
        self.name, self.actions = name, list(actions)
        self.meta = {"kiln": {"stage": stage, "model": model, "target": target}} if stage else None


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# --- the tracker --------------------------------------------------------------------------

def test_elapsed_text():
    assert [elapsed_text(s) for s in (0.4, 7.9, 65, 3599, 7380)] == \
        ["0s", "7s", "1m 05s", "59m 59s", "2h 03m"]


def test_describe_names_stage_and_model_at_target():
    assert describe(FakeTask("validate:resnet@vulkan", "validate", "resnet", "vulkan")) == \
        ("validate", "resnet@vulkan")
    assert describe(FakeTask("capture:mlp", "capture", "mlp")) == ("capture", "mlp")
    assert describe(FakeTask("prune")) == ("prune", "")


def test_settings_from_the_environment():
    assert settings_from_env({}) == Settings(after=2.0, every=30.0)
    assert settings_from_env({"KILN_PROGRESS": "0"}) is None
    assert settings_from_env({"KILN_PROGRESS_AFTER": "0.2", "KILN_PROGRESS_EVERY": "1"}) == \
        Settings(after=0.2, every=1.0)
    with pytest.raises(ValueError, match="KILN_PROGRESS_AFTER='soon': expected a number"):
        settings_from_env({"KILN_PROGRESS_AFTER": "soon"})


def test_plain_lines_every_interval_per_running_task():
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, Settings(after=2, every=30), live=False, clock=clock)
    slow = FakeTask("validate:resnet@vulkan", "validate", "resnet", "vulkan")
    progress.started(slow)
    progress.started(FakeTask("lower:mlp@cpu", "lower", "mlp", "cpu"))
    try:
        clock.now += 1
        progress.tick()
        assert progress.slow() == [] and out.getvalue() == ""
        clock.now += 4   # past 'after': shown live on a terminal, but a log line waits 30 s
        assert [(s.stage, s.what) for s in progress.slow()] == \
            [("validate", "resnet@vulkan"), ("lower", "mlp@cpu")]
        progress.tick()
        assert out.getvalue() == ""
        clock.now += 26
        progress.finished(FakeTask("lower:mlp@cpu"))
        progress.tick()
        progress.tick()   # once per interval, however often the thread wakes
        assert out.getvalue() == "kiln: still running validate:resnet@vulkan (31s)\n"
        clock.now += 70   # a late wake-up: one line, then back on the 30 s beat
        progress.tick()
        clock.now += 20
        progress.tick()
        assert out.getvalue().splitlines()[1:] == [
            "kiln: still running validate:resnet@vulkan (1m 41s)",
            "kiln: still running validate:resnet@vulkan (2m 01s)"]
        progress.finished(slow)
        clock.now += 600
        progress.tick()
        assert len(out.getvalue().splitlines()) == 3
    finally:
        progress.stop()


def test_group_and_private_tasks_are_not_tracked_and_off_means_off():
    clock = Clock()
    progress = Progress(io.StringIO(), Settings(after=0, every=1), live=False, clock=clock)
    progress.started(FakeTask("validate", actions=()))    # a group task: no actions
    progress.started(FakeTask("_hidden"))
    clock.now += 5
    assert progress.slow() == [] and progress._thread is None
    off = Progress(io.StringIO(), None, live=False)
    off.started(FakeTask("validate:a@b", "validate", "a", "b"))
    assert off._thread is None
    off.write("x\n")
    assert off.out.getvalue() == "x\n"
    off.stop()


def test_the_thread_prints_stops_and_never_holds_the_process():
    out = io.StringIO()
    progress = Progress(out, Settings(after=0.05, every=0.1), live=False)
    progress.started(FakeTask("codegen:m@t", "codegen", "m", "t"))
    time.sleep(0.5)
    thread = progress._thread
    assert thread.daemon and thread.is_alive()
    progress.stop()
    assert not thread.is_alive()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(re.fullmatch(r"kiln: still running codegen:m@t \(0s\)", line)
                                   for line in lines)
    progress.stop()   # twice is fine
    progress.started(FakeTask("codegen:m@u", "codegen", "m", "u"))   # after stop: no new thread
    assert progress._thread is thread


def test_concurrent_starts_and_writes_from_worker_threads():
    """doit's thread runner calls execute_task from its workers: every line stays whole."""
    out = io.StringIO()
    progress = Progress(out, Settings(after=0, every=0.01), live=False)

    def worker(i):
        for j in range(50):
            task = FakeTask(f"lower:m{i}@t{j}", "lower", f"m{i}", f"t{j}")
            progress.started(task)
            progress.write(f".  {task.name}\n")
            progress.finished(task)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    progress.stop()
    for line in out.getvalue().splitlines():
        assert re.fullmatch(r"(\.  |kiln: still running )lower:m\d@t\d+( \(0s\))?", line), line
    assert sum(line.startswith(".  ") for line in out.getvalue().splitlines()) == 400


def test_a_live_block_on_a_terminal_is_drawn_then_erased():
    master, slave = os.openpty()
    with open(slave, "w", closefd=True) as tty:
        clock = Clock()
        progress = Progress(tty, Settings(after=2, every=30), clock=clock)
        assert progress.live
        task = FakeTask("validate:resnet@vulkan", "validate", "resnet", "vulkan")
        progress.started(task)
        progress.tick()
        assert progress._terminal is None   # nothing slow yet: rich is not even set up
        clock.now += 72
        progress.tick()
        progress.write(".  validate:mlp@cpu\n")   # above the block, which is drawn again
        progress.finished(task)                     # gone at once, not at the next tick
        progress.write(".  validate:mlp@vulkan\n")
        progress.stop()
        tty.flush()
        shown = _read_available(master)
    os.close(master)
    text = _plain(shown)
    first, after_cpu = text.split(".  validate:mlp@cpu\n")
    assert re.search(r"validate\s+resnet@vulkan\s+1m 12s", first)
    between = after_cpu.split(".  validate:mlp@vulkan")[0]
    assert re.search(r"validate\s+resnet@vulkan\s+1m 12s", between)
    assert after_cpu.endswith(".  validate:mlp@vulkan\n")
    assert "[bold]" not in text
    assert shown.rindex("\x1b[?25h") > shown.rindex("\x1b[?25l")   # the cursor is back


# --- real doit runs -----------------------------------------------------------------------

# the tiny project, and how to run doit on it: test_reporter's


def test_piped_output_gets_plain_lines_and_a_no_op_run_never_loads_rich(tmp_path):
    root = make_project(tmp_path, slow=1.5)
    env = doit_env(KILN_PROGRESS_AFTER="0.2", KILN_PROGRESS_EVERY="0.4")
    proc = subprocess.run(DOIT, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = re.findall(r"^kiln: still running (\S+) \((\d+)s\)$", proc.stdout, re.M)
    assert len(notes) >= 2 and {name for name, _ in notes} == {"validate:toy@slow"}
    assert "\x1b" not in proc.stdout                    # no terminal codes in a log
    assert ".  validate:toy@later" in proc.stdout.splitlines()
    assert re.search(r"toy\s+slow\s+passed", proc.stdout)
    assert (root / "loaded").read_text() == "pipeline.report.progress"

    proc = subprocess.run(DOIT, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert "still running" not in proc.stdout and "-- validate:toy@slow" in proc.stdout
    assert (root / "loaded").read_text() == ""

    off = make_project(tmp_path / "off", slow=1.0)
    proc = subprocess.run(DOIT, cwd=off, env={**env, "KILN_PROGRESS": "0"}, capture_output=True,
                          text=True, timeout=60)
    assert "still running" not in proc.stdout and re.search(r"toy\s+slow\s+passed", proc.stdout)


def run_on_pty(args, cwd, env, interrupt_on: re.Pattern | None = None) -> tuple[int, str]:
    """Run args with a pseudo-terminal as stdout and stderr; (exit status, all it wrote).
    Ctrl-C (SIGINT) once what it wrote matches interrupt_on."""
    master, slave = os.openpty()
    # SIGINT as a terminal's user has it: a test run started in the background by a
    # non-interactive shell (nohup ... &, as CI may) ignores SIGINT, the child inherits that,
    # and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(args, cwd=cwd, env={**env, "TERM": "xterm-256color", "COLUMNS": "100"},
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    chunks, started = [], time.monotonic()
    while True:
        if interrupt_on is not None and interrupt_on.search(_plain(b"".join(chunks).decode())):
            proc.send_signal(signal.SIGINT)
            interrupt_on = None
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:   # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
        assert time.monotonic() - started < 60, "the run hung"
    os.close(master)
    return proc.wait(timeout=10), b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def _read_available(fd) -> str:
    chunks = []
    while select.select([fd], [], [], 0.2)[0]:
        chunks.append(os.read(fd, 65536))
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _plain(text: str) -> str:
    """What a reader sees of each line, codes and carriage returns taken out."""
    return ANSI.sub("", text).replace("\r", "")


def test_a_terminal_shows_a_live_line_and_keeps_the_table_intact(tmp_path):
    root = make_project(tmp_path, slow=2.0, broken=True)
    status, shown = run_on_pty(DOIT, root, doit_env(KILN_PROGRESS_AFTER="0.2"))
    assert status != 0, shown   # toy@broken fails
    text = _plain(shown)
    assert re.search(r"validate\s+toy@slow\s+1s", text), shown   # the live line, ticking
    assert re.search(r"kiln\s+\d/7 cases done", text), shown        # above it, the count
    assert "still running" not in text                          # no log lines on a terminal
    # doit's own lines printed while the live line showed are whole lines
    assert ".  validate:toy@later\n" in text, shown
    assert "FAILED toy@broken at validate: the device said no  (log: build/logs/broken.log)\n" \
        in text   # not doit's report
    assert "TaskFailed" not in text
    # the summary table, byte for byte, after the live block was erased
    table = summary_table(run_record(root))
    assert "\n" + table + "\n" in shown, shown
    assert shown.index(table) > shown.rindex("\x1b[?25h") > shown.rindex("\x1b[?25l")
    assert (root / "loaded").read_text() == "rich pipeline.report.progress"


def test_ctrl_c_on_a_terminal_stops_promptly_and_gives_the_cursor_back(tmp_path):
    root = make_project(tmp_path, slow=30.0)
    started = time.monotonic()
    status, shown = run_on_pty(DOIT[:3] + ["validate:toy@slow"], root,
                               doit_env(KILN_PROGRESS_AFTER="0.1"),
                               interrupt_on=re.compile(r"validate\s+toy@slow\s+1s"))
    assert time.monotonic() - started < 20 and status != 0   # not the stage's 30 s
    # (the toy's dodo stops on signals as kiln's does: no traceback, a record that says so)
    assert "Traceback" not in shown and "kiln: interrupted (SIGINT): 1 case" in shown, shown
    assert shown.rindex("\x1b[?25h") > shown.rindex("\x1b[?25l")
