"""validate's handling of a runtime tool that lost its device (stages/runtime.run_tool).

Lavapipe loses its Vulkan device now and then (VK_ERROR_DEVICE_LOST from vkSignalSemaphore:
once in 40 iree-run-module runs beside the busy test suite, never in 600 otherwise): a run in
a new process answers. These tests are about kiln's policy for that, not about the runtime,
so the tool is a small script that loses its "device" a set number of times; the real
runtime runs in test_frameworks and test_resnet."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.stage import StageError
from stages import runtime, validate

LOST = ("c/runtime/src/iree/hal/drivers/vulkan/queue.c:2867: DATA_LOSS; [vkSignalSemaphore] "
        "VK_ERROR_DEVICE_LOST; while invoking native function hal.device.queue.alloca")


class Ctx:
    def __init__(self):
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)


def flaky_tool(tmp_path: Path, failures: int, stderr: str = LOST) -> list[str]:
    """argv of a tool that fails `failures` times with `stderr`, then prints 'answer'."""
    script = tmp_path / "iree-run-module"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom pathlib import Path\n"
        f"count = Path({str(tmp_path / 'runs')!r})\n"
        "runs = int(count.read_text()) if count.exists() else 0\n"
        "count.write_text(str(runs + 1))\n"
        f"if runs < {failures}:\n"
        f"    print({stderr!r}, file=sys.stderr)\n"
        "    sys.exit(1)\n"
        "print('answer')\n")
    script.chmod(0o755)
    return [str(script), "--device=vulkan"]


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_a_lost_device_is_run_again_in_a_new_process_and_noted(tmp_path):
    ctx, notes = Ctx(), []
    out, seconds = runtime.run_tool(flaky_tool(tmp_path, failures=1), ctx, notes)
    assert out.strip() == "answer" and seconds > 0
    assert runs(tmp_path) == 2
    assert notes == [f"iree-run-module lost its device (VK_ERROR_DEVICE_LOST) on run 1 of "
                     f"{runtime.ATTEMPTS}"]
    assert any("running it again in a new process" in line for line in ctx.lines)


def test_a_device_lost_on_every_run_fails_and_says_so(tmp_path):
    ctx, notes = Ctx(), []
    with pytest.raises(StageError) as err:
        runtime.run_tool(flaky_tool(tmp_path, failures=99), ctx, notes)
    assert runs(tmp_path) == runtime.ATTEMPTS
    assert f"lost its device on all {runtime.ATTEMPTS} runs" in str(err.value)
    assert "VK_ERROR_DEVICE_LOST" in str(err.value)
    assert len(notes) == runtime.ATTEMPTS


def test_any_other_failure_is_not_run_again(tmp_path):
    ctx, notes = Ctx(), []
    with pytest.raises(StageError) as err:
        runtime.run_tool(flaky_tool(tmp_path, failures=1, stderr="INVALID_ARGUMENT; bad input"),
                          ctx, notes)
    assert runs(tmp_path) == 1 and notes == []
    assert "exited with 1: INVALID_ARGUMENT; bad input" in str(err.value)


def test_a_hung_run_is_killed_with_what_it_started_and_run_again(tmp_path, monkeypatch):
    """IREE's local-task driver now and then deadlocks reporting a failed call, using no CPU
    from then on: a run idle for IDLE_S is killed, its whole process group with it (the
    venv's tools are wrappers around the real binary), and run again."""
    monkeypatch.setattr(runtime, "IDLE_S", 1.0)
    script = tmp_path / "iree-run-module"
    script.write_text(
        f"#!{sys.executable}\nimport subprocess, sys, time\nfrom pathlib import Path\n"
        f"count = Path({str(tmp_path / 'runs')!r})\n"
        "runs = int(count.read_text()) if count.exists() else 0\n"
        "count.write_text(str(runs + 1))\n"
        "if runs == 0:\n"
        "    child = subprocess.Popen(['sleep', '300'])\n"
        f"    Path({str(tmp_path / 'child')!r}).write_text(str(child.pid))\n"
        "    time.sleep(300)\n"
        "print('OUT_OF_RANGE; the answer', file=sys.stderr)\n"
        "sys.exit(1)\n")
    script.chmod(0o755)
    ctx, notes = Ctx(), []
    with pytest.raises(StageError) as err:
        runtime.run_tool([str(script), "--device=local-task"], ctx, notes)
    assert runs(tmp_path) == 2
    assert notes == [f"iree-run-module hung: no CPU time used for 1 s on run 1 of {runtime.ATTEMPTS}"]
    assert "exited with 1: OUT_OF_RANGE; the answer" in str(err.value)
    child = int((tmp_path / "child").read_text())
    assert not Path(f"/proc/{child}").exists() or \
        Path(f"/proc/{child}/stat").read_text().split(")")[1].split()[0] == "Z"


def test_timing_off_is_in_validates_key_in_place_of_the_repetitions():
    from pipeline.stage import Target
    cpu = Target("cpu", "llvm-cpu", "generic", "local-task", (), 1e-4, 1e-4)
    assert validate._timing_params(cpu) == {"timing_repetitions": 3}   # TEST_SETTINGS
    assert validate._timing_params(Target(**{**cpu.__dict__, "timing": False})) == {"timing": "off"}
