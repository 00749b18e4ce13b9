"""The machine lock (pipeline/run/machine.py): stages share the machine, a measurement has it
alone. Real processes and threads on real lock files; no stage code."""
from __future__ import annotations

import threading
import time

from pipeline.run import machine


def test_a_stage_does_not_start_while_a_measurement_has_the_machine(tmp_path):
    events = []
    with machine.shared(tmp_path) as held:
        with held.alone():
            def stage():
                with machine.shared(tmp_path):
                    events.append(("stage started", time.monotonic()))
            other = threading.Thread(target=stage)
            other.start()
            time.sleep(0.5)
            events.append(("measurement done", time.monotonic()))
        other.join(timeout=10)
    assert [e for e, _ in events] == ["measurement done", "stage started"]


def test_a_measurement_waits_for_the_running_stage(tmp_path):
    events = []
    running = threading.Event()

    def stage():
        with machine.shared(tmp_path):
            running.set()
            time.sleep(0.5)
            events.append("stage ended")

    other = threading.Thread(target=stage)
    other.start()
    running.wait(timeout=10)
    with machine.shared(tmp_path) as held:
        with held.alone():
            events.append("measuring")
    other.join(timeout=10)
    assert events == ["stage ended", "measuring"]


def test_two_measurements_take_turns_and_never_deadlock(tmp_path):
    inside, overlaps = [0], []

    def measure():
        with machine.shared(tmp_path) as held:
            time.sleep(0.05)   # both hold the machine shared before either asks for it alone
            with held.alone():
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.1)
                inside[0] -= 1

    threads = [threading.Thread(target=measure) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "deadlocked"
    assert overlaps == [1, 1, 1]


def test_without_a_place_for_the_lock_a_stage_still_runs(tmp_path):
    unwritable = tmp_path / "file"
    unwritable.write_text("")
    with machine.shared(unwritable / "sub") as held:   # cannot be a directory: no lock
        assert held is None
