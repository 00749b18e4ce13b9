"""IREE's own tools called directly, as a user would without kiln: the check that tells a
failure of IREE itself from kiln's own. benchmarks/onnx_node_suite.py (ONNX's node tests)
and benchmarks/zoo/passrate.py (the model zoo) build their command lines and run them here.

A step is one argv; run_steps runs them in order and stops at the first that fails, saying
which tool failed and its first error line. outputs_match compares what iree-run-module
wrote with the expected arrays by kiln's own comparison (stages.compare)."""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline import process  # noqa: E402

# the real binaries, as kiln runs them (the scripts that build command lines import it here)
from stages.iree_tools import tool  # noqa: E402,F401

TIMEOUT_S = 120


def run_steps(steps: list[list[str]], timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """(all ran, what happened): each step's argv run in turn, stopping at the first that
    fails or runs past timeout seconds (its process group killed)."""
    for step in steps:
        try:
            proc = process.run(step, timeout)
        except process.ToolTimeout:
            return False, f"{Path(step[0]).name} did not end in {timeout:g} s"
        if proc.returncode:
            return False, (f"{Path(step[0]).name} {process.exit_words(proc.returncode)}: "
                           f"{first_error(proc.stderr)[:200]}")
    return True, "ran"


# a frame of LLVM's crash backtrace: "#4 0x00007f... namespace::function(args) File.cpp:0:0"
CRASH_FRAME = re.compile(r"^\s*#\d+ 0x[0-9a-f]+ (\S.*?)(?: \S+:\d+:\d+)?$")
# the frames of the crash handler itself, above where the tool crashed
HANDLER_FRAMES = ("llvm::sys::", "SignalHandler", "(")


def first_error(stderr: str) -> str:
    """The line that says what went wrong: the first naming an error (or IREE's
    'STATUS; message' form); for a crash with only a backtrace, the function it crashed
    in; else the last line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    named = next((line for line in lines if "error" in line.lower() and
                  not CRASH_FRAME.match(line)), None)
    if named:
        return named
    frames = [m[1] for line in lines if (m := CRASH_FRAME.match(line))]
    crashed = next((f for f in frames if not f.startswith(HANDLER_FRAMES)), None)
    if crashed:
        return f"crashed in {crashed.split('(')[0]}"
    return next((line for line in lines if "; " in line), lines[-1] if lines else "")


def outputs_match(got: list, want: list, atol: float, rtol: float, tolerances: list | None = None,
                  against: str = "the reference") -> tuple[bool, str]:
    """(matched, what happened) by kiln's comparison: a shape or count mismatch fails too."""
    from pipeline.stage import StageError
    from stages.compare import compare
    try:
        checked = compare(got, want, atol, rtol, tolerances)
    except StageError as err:
        return False, f"outputs differ from {against}: {err}"
    if not checked["passed"]:
        return False, f"outputs differ from {against}: max abs error {checked['max_abs_error']}"
    return True, "passes"


def commands(steps: list[list[str]]) -> list[str]:
    return [shlex.join(step) for step in steps]
