"""pipeline.process and the IREE tools started through it: the real binaries, never the venv's
Python launchers; no tool outlives a timeout, a Ctrl-C or a SIGTERM; temporary files stay in
build/ (docs/DESIGN.md §9.1, §9.2); a stopped run's record, reports and junit.xml say so and
list every case, and the next run does only what did not finish."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import without_kiln_settings

from pipeline import process
from pipeline.stage import StageError
from pipeline.vocab import Status


def slow_mlir(layers: int = 60, scale: float = 0.01) -> str:
    """A chain of matmuls and tanh that takes iree-compile a few seconds for llvm-cpu."""
    lines = ["func.func @main(%x: tensor<16x64xf32>) -> tensor<16x64xf32> {"]
    previous = "%x"
    for i in range(layers):
        lines += [f"  %w{i} = arith.constant dense<{scale * (i + 1)}> : tensor<64x64xf32>",
                  f"  %e{i} = tensor.empty() : tensor<16x64xf32>",
                  f"  %z{i} = arith.constant 0.0 : f32",
                  f"  %f{i} = linalg.fill ins(%z{i} : f32) outs(%e{i} : tensor<16x64xf32>)"
                  " -> tensor<16x64xf32>",
                  f"  %m{i} = linalg.matmul ins({previous}, %w{i} : tensor<16x64xf32>, "
                  f"tensor<64x64xf32>) outs(%f{i} : tensor<16x64xf32>) -> tensor<16x64xf32>",
                  f"  %t{i} = math.tanh %m{i} : tensor<16x64xf32>"]
        previous = f"%t{i}"
    return "\n".join([*lines, f"  return {previous} : tensor<16x64xf32>", "}"])


def processes_naming(text: str) -> list[str]:
    """The command lines of live (not zombie) processes that contain text."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(cmdline)
    return found


class Ctx:
    def __init__(self):
        self.lines = []
        self.target = None   # (a stage's context names its target: None, kiln's own release)

    def log(self, line):
        self.lines.append(line)


CPU = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu",
       "--iree-llvmcpu-target-cpu=generic"]


def test_iree_tools_are_the_real_executables_not_the_venvs_launchers(tmp_path):
    from stages.iree_tools import iree_compile, tool
    for name in ("iree-compile", "iree-run-module", "iree-benchmark-module"):
        path = Path(tool(name))
        assert path.read_bytes()[:4] == b"\x7fELF", f"{name} is {path}, not a binary"
        assert path.parent != Path(sys.executable).parent
    src = tmp_path / "add.mlir"
    src.write_text("func.func @main(%a: tensor<4xf32>) -> tensor<4xf32> {\n"
                   "  %b = arith.addf %a, %a : tensor<4xf32>\n  return %b : tensor<4xf32>\n}\n")
    ctx = Ctx()
    iree_compile(src, tmp_path / "add.vmfb", CPU, ctx)
    argv0 = ctx.lines[0].split()[1]   # "$ <argv0> - flags... < src"
    assert argv0 == tool("iree-compile") and argv0.endswith("_mlir_libs/iree-compile")
    assert (tmp_path / "add.vmfb").stat().st_size > 0


def test_a_compile_past_its_timeout_is_killed_with_nothing_left_running(tmp_path):
    from stages.iree_tools import iree_compile
    src = tmp_path / "slow.mlir"
    src.write_text(slow_mlir())
    out = tmp_path / "slow.vmfb"
    started = time.monotonic()
    with pytest.raises(process.ToolTimeout) as err:
        iree_compile(src, out, CPU, Ctx(), timeout=1)
    assert time.monotonic() - started < 5
    assert "iree-compile did not finish within 1 s" in str(err.value)
    assert process.TIMEOUT_ENV in str(err.value) and err.value.command.endswith(str(src))
    assert err.value.transient   # a timeout is never remembered
    assert processes_naming(str(out)) == []
    time.sleep(2)   # a compiler left running would write its output now
    assert not out.exists() and processes_naming(str(out)) == []


def test_a_tool_killed_by_a_signal_is_named_by_it(tmp_path):
    done = process.run(["sh", "-c", "kill -KILL $$"], 10)
    assert process.exit_words(done.returncode) == \
        "was killed by SIGKILL (signal 9: the out-of-memory killer sends it too)"
    assert process.exit_words(247) .startswith("was killed by SIGKILL")   # a launcher's 256-9
    assert process.exit_words(1) == "exited with 1"


def test_the_tool_clock_counts_the_processes_a_block_started():
    with process.tool_clock() as clock:
        process.run(["sleep", "0.3"], 10)
        process.run(["true"], 10)
    assert set(clock) == {"sleep", "true"} and clock["sleep"] >= 0.3


def test_a_stopped_run_starts_nothing_more(monkeypatch):
    monkeypatch.setattr(process, "_stop_reason", "SIGINT")
    with pytest.raises(StageError) as err:
        process.run(["true"], 10)
    assert isinstance(err.value, process.Interrupted) and err.value.transient


def test_a_stop_while_the_main_thread_starts_a_tool_kills_it_once_registered(monkeypatch,
                                                                           tmp_path):
    """The stop's handler runs in the main thread, maybe while it starts a process holding
    the registry's lock: it must neither wait for that lock (a hang seen with -n 2) nor miss
    the process being started (left running)."""
    monkeypatch.setattr(process, "_stop_reason", None)
    popen = subprocess.Popen

    def signalled_meanwhile(*args, **kwargs):
        started = popen(*args, **kwargs)
        process._on_stop_signal(signal.SIGINT, None)   # as a Ctrl-C right now would
        return started

    monkeypatch.setattr(process.subprocess, "Popen", signalled_meanwhile)
    marker = str(tmp_path / "sleeper")
    with pytest.raises(KeyboardInterrupt):
        process.run(["sh", "-c", f"sleep 30; : {marker}"], 60)
    assert processes_naming(marker) == []


def slow_suite(folder: Path) -> Path:
    """Three .mlir models whose codegen takes iree-compile a second or two each for llvm-cpu."""
    folder.mkdir()
    for i in range(3):
        (folder / f"slow{i}.mlir").write_text(slow_mlir(layers=12, scale=0.01 * (i + 1)))
    return folder


def stop_mid_codegen(project, suite: Path, temp: Path, signum: int, jobs: tuple[str, ...]):
    """doit compile of suite, stopped by signum to its whole group (as a terminal's Ctrl-C or
    a CI runner's SIGTERM) while a codegen compiler runs: (exit code, stdout, stderr)."""
    env = {**without_kiln_settings(os.environ), "TMPDIR": str(temp)}
    doit = subprocess.Popen([sys.executable, "-m", "doit", *jobs, "compile", f"model={suite}",
                             "target=cpu", "variants=default"], cwd=project.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        codegen = f"{project.root}/build/.tmp/"   # (a compile to a module.vmfb: the slowest)
        while not [c for c in processes_naming(codegen) if "module.vmfb" in c]:
            assert doit.poll() is None, doit.communicate()
            assert time.monotonic() < deadline, "no codegen compiler started"
            time.sleep(0.05)
        os.killpg(doit.pid, signum)
        stdout, stderr = doit.communicate(timeout=60)
    finally:
        if doit.poll() is None:
            os.killpg(doit.pid, signal.SIGKILL)
    return doit.returncode, stdout, stderr


@pytest.mark.parametrize("signum,jobs", [(signal.SIGINT, ()),
                                         (signal.SIGTERM, ("-n", "2", "-P", "thread")),
                                         (signal.SIGINT, ("-n", "2"))],
                         ids=["ctrl-c", "sigterm-threads", "ctrl-c-processes"])
def test_stopping_doit_mid_suite_leaves_no_tool_and_no_temp_file(project, tmp_path, signum, jobs):
    suite = slow_suite(tmp_path / "suite")
    temp = tmp_path / "tmpdir"
    temp.mkdir()
    code, stdout, stderr = stop_mid_codegen(project, suite, temp, signum, jobs)
    assert code == 128 + signum, stdout + stderr
    assert "Traceback" not in stderr + stdout, stderr
    assert processes_naming(str(project.root)) == []
    assert list(temp.iterdir()) == []
    leftovers = list((project.root / "build" / ".tmp").glob("*"))
    assert leftovers == [], leftovers
    stopped = stopped_record(project, signal.Signals(signum).name, stdout)
    if not jobs:   # the rerun does what did not finish, and only that
        project.doit("compile", f"model={suite}", "target=cpu")
        rerun = json.loads((project.root / "build" / "run.json").read_text())
        assert "interrupted" not in rerun
        again = {t["task"]: t["status"] for t in rerun["tasks"]}
        assert again == {task: "up-to-date" if status == "ran" else again[task]
                         for task, status in stopped.items()}
        assert {again[task] for task, status in stopped.items() if status != "ran"} <= \
            {"ran", "cached"}


def stopped_record(project, signal_name: str, stdout: str) -> dict[str, str]:
    """Check that run.json, report.md, junit.xml and the summary line say the run was
    stopped and list each of the 3 cases (every stage of each: 2 per model, 2 per case);
    return task -> status."""
    build = project.root / "build"
    record = json.loads((build / "run.json").read_text())
    assert record["interrupted"] == signal_name
    statuses = {t["task"]: t["status"] for t in record["tasks"]}
    assert len(statuses) == 12 and {t["model"] for t in record["tasks"]} == \
        {"slow0", "slow1", "slow2"}
    assert set(statuses.values()) <= {"ran", Status.INTERRUPTED, Status.NOT_STARTED}, statuses
    unfinished = {t["model"] for t in record["tasks"] if t["status"] != "ran"}
    assert unfinished, statuses
    suite = ET.parse(build / "junit.xml").getroot().find("testsuite")
    cases = {c.get("classname"): c for c in suite.iter("testcase")}
    assert sorted(cases) == ["slow0", "slow1", "slow2"]
    for model, case in cases.items():
        error = case.find("error")
        assert (error is not None) == (model in unfinished), ET.tostring(case)
        assert error is None or f"stopped ({signal_name})" in error.get("message")
    assert f"The run was interrupted ({signal_name})" in (build / "report.md").read_text()
    assert stdout.splitlines()[-1].startswith(f"kiln: interrupted ({signal_name}): 3 cases")
    return statuses
