"""Running a compiled module with IREE's runtime tools, for every stage and benchmark that
does: the device for a driver, the arguments iree-run-module and iree-benchmark-module share,
a run that reads the outputs back, and a tool call that repeats a run which lost its device
or hung, with the runtime's own words when it fails. validate, bisect and the benchmarks
call these; the processes start through stages/iree_tools.py (the real binaries)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from pipeline import process
from pipeline.stage import StageError
from stages.backends import is_host_driver
from stages.iree_tools import IDLE_S, devices, run_watched, tool
from stages.weights import SCOPE


def device_for(driver: str) -> str | None:
    return next((d for d in devices() if d.startswith(f"{driver}://")), None)


def module_args(tmp: Path, module: Path, parameters: Path | None, driver: str, entry: str,
                 inputs) -> list[str]:
    """The arguments iree-run-module and iree-benchmark-module share: device, module,
    weights, function and inputs (saved into tmp)."""
    import numpy as np
    args = [f"--device={driver}", f"--module={module}", f"--function={entry}"]
    if parameters is not None:   # the weights, from the archive emit wrote
        args.append(f"--parameters={SCOPE}={parameters}")
    for i, array in enumerate(inputs):
        np.save(tmp / f"in{i}.npy", array)
        args.append(f"--input=@{tmp / f'in{i}.npy'}")
    return args


def run_module(tmp: Path, args: list[str], n_outputs: int | None, ctx, lost: list[str]):
    """(outputs, wall ms) of iree-run-module, which reads Vulkan results back through a
    staging buffer. The wall time (process start and load included) bounds one call's."""
    import numpy as np
    counting_s = 0.0
    if n_outputs is None:  # count them from a first run's printout
        printed, counting_s = run_tool([tool("iree-run-module", ctx.target.toolchain), *args], ctx, lost)
        n_outputs = sum(line.startswith("result[") for line in printed.splitlines())
    outs = [tmp / f"out{i}.npy" for i in range(n_outputs)]
    _, run_s = run_tool([tool("iree-run-module", ctx.target.toolchain), *args,
                         *(f"--output=@{o}" for o in outs)],
                        ctx, lost)
    return [np.load(o) for o in outs], (counting_s + run_s) * 1000


# a lost device is no verdict on the module: lavapipe loses it now and then (VK_ERROR_DEVICE_LOST
# from vkSignalSemaphore: once in 40 runs beside the busy test suite, never in 600 runs
# otherwise), and a fresh process gets a new device. A module that really kills its device
# loses it every time.
DEVICE_LOST = ("VK_ERROR_DEVICE_LOST",)
ATTEMPTS = 3
RUN_TIMEOUT_S = 600
# an IREE status in a runtime tool's message: "<file>:<line>: OUT_OF_RANGE; <what>"
IREE_STATUS = re.compile(r"\b[A-Z][A-Z_]+; ")


def run_tool(argv: list[str], ctx, notes: list[str]) -> tuple[str, float]:
    """A runtime tool's stdout and the wall seconds of its run; a StageError with its words
    when it fails. A run that lost its device, or hung (on a CPU driver: no CPU time used
    for IDLE_S seconds), is repeated in a new process (up to ATTEMPTS runs; the time is the
    run that answered), each repeat logged and noted in `notes`."""
    command, name = shlex.join(argv), Path(argv[0]).name
    device = next((a.split("=", 1)[1] for a in argv if a.startswith("--device=")), "")
    idle_s = IDLE_S if is_host_driver(device) else None
    for attempt in range(1, ATTEMPTS + 1):
        ctx.log(f"$ {command}")
        ran = run_watched(argv, RUN_TIMEOUT_S, idle_s)   # (past RUN_TIMEOUT_S: ToolTimeout)
        took = ran.seconds
        if ran.stderr:
            ctx.log(ran.stderr)
        if ran.returncode == 0:
            return ran.stdout, took
        again = ran.stopped or next((m for m in DEVICE_LOST if m in ran.stderr), None)
        if again is None:
            break
        note = f"{name} " + (ran.stopped if ran.stopped else f"lost its device ({again})") + \
            f" on run {attempt} of {ATTEMPTS}"
        ctx.log(note + ("; running it again in a new process" if attempt < ATTEMPTS else ""))
        notes.append(note)
    if ran.stopped:   # a hang is no verdict on the module: never remembered
        raise StageError(f"{name} {ran.stopped} on all {ATTEMPTS} runs", command=command,
                         transient=f"{name} {ran.stopped}")
    lost = f" (it lost its device on all {ATTEMPTS} runs)" if again else ""
    raise StageError(f"{name} {process.exit_words(ran.returncode)}{lost}: "
                     f"{runtime_error(ran.stderr)}",
                     command=command, exit_code=ran.returncode,
                     transient=f"the device was lost ({again})" if again else None)


def runtime_error(stderr: str) -> str:
    """The line of a runtime tool's stderr that says what went wrong: the one with IREE's
    status (`...: OUT_OF_RANGE; buffer view byte length 24 exceeds ...`), not the call
    stack printed after it; else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    status = next((line for line in lines if IREE_STATUS.search(line)), None)
    return (status or (lines or ["no message"])[-1])[:500]
