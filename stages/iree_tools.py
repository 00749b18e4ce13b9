"""Calling IREE's command-line tools the way every stage must: input on stdin (a file path
given to iree-compile ends up inside the artifact), errors raised with the exact command; a
runtime tool watched for a hang (run_watched)."""
from __future__ import annotations

import functools
import os
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache.probes import Watch, find_executable, probe
from pipeline.stage import StageError


def tool(name: str) -> str:
    return find_executable(name) or name


def iree_compile(src: Path, out: Path, flags: list[str], ctx, timeout: int = 1800) -> None:
    argv = [tool("iree-compile"), "-", *flags, "-o", str(out)]
    command = f"{shlex.join(argv)} < {shlex.quote(str(src))}"
    ctx.log(f"$ {command}")
    with open(src, "rb") as stdin:
        proc = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=timeout)
    stderr = proc.stderr.decode(errors="replace")
    if stderr:
        ctx.log(stderr)
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise StageError(f"iree-compile {_failure(proc.returncode, stderr)}", command=command,
                         exit_code=proc.returncode)


def compile_failure(src: Path, flags: list[str], timeout: int = 600) -> str | None:
    """How iree-compile fails on src, worded as iree_compile would, or None when it compiles
    (the output discarded): for probing which part of a module it cannot take."""
    argv = [tool("iree-compile"), "-", *flags, "-o", "/dev/null"]
    with open(src, "rb") as stdin:
        proc = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=timeout)
    return _failure(proc.returncode, proc.stderr.decode(errors="replace")) if proc.returncode else None


def _failure(returncode: int, stderr: str) -> str:
    # LLVM's crash handler prints only a stack dump: its first line is no diagnostic
    if "Stack dump:" in stderr and "error:" not in stderr:
        return f"crashed (exit {returncode}: a stack dump, no diagnostic)"
    return f"exited with {returncode}: {_first_error(stderr)}"


def _first_error(stderr: str) -> str:
    """The diagnostic a user needs first: the first 'error:' line, else the first line
    (e.g. "Unknown command line argument '--x'", before a "Did you mean" hint)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:500]
    return " ".join(lines[:2])[:500] if lines else "no message"


@functools.lru_cache(maxsize=None)
def devices() -> tuple[str, ...]:
    """The runtime's devices on this machine, e.g. ('local-task://', 'vulkan://GPU-...').
    Remembered across runs (keys.probe) while the executable, this boot, the device nodes,
    the Vulkan driver manifests and the device-selecting environment stay the same."""
    exe = tool("iree-run-module")

    def ask() -> list[str]:
        proc = subprocess.run([exe, "--list_devices"], capture_output=True, text=True,
                              check=False)
        return [line.strip() for line in proc.stdout.splitlines() if "://" in line]

    return tuple(probe(exe, ("--list_devices",), ask, DEVICE_WATCH))


# what can change the device list without changing iree-run-module
DEVICE_PLACES = ("/dev", "/dev/dri", "/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d",
                 "/usr/local/share/vulkan/icd.d", "/proc/driver/nvidia/gpus")
DEVICE_ENV = ("VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES",
              "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
              "LD_LIBRARY_PATH")

DEVICE_WATCH = Watch(places=DEVICE_PLACES, files=("/proc/sys/kernel/random/boot_id",),
                     env=DEVICE_ENV)


# IREE's local-task driver now and then deadlocks while reporting that a call failed
# (iree-run-module, OUT_OF_RANGE from hal.buffer_view.create: about 1 run in 10, the others
# answer in 40 ms); from then on it uses no CPU time at all. On a CPU driver a run that uses
# none for this long is making no progress: it is killed and may be run again.
IDLE_S = 10.0


@dataclass
class Ran:
    """A watched run: its exit status (None: killed, `stopped` says why) and its output."""
    returncode: int | None
    stdout: str
    stderr: str
    stopped: str | None = None


def run_watched(argv: list[str], timeout: float, idle_s: float | None = None) -> Ran:
    """argv in a process group of its own, killed with everything it started (the venv's
    runtime tools are Python wrappers around the real binary) when it runs past timeout or,
    given idle_s, uses no CPU time for idle_s seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        stopped = _watch(proc, timeout, idle_s)
        out.seek(0)
        err.seek(0)
        return Ran(None if stopped else proc.returncode, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"), stopped)


def _watch(proc: subprocess.Popen, timeout: float, idle_s: float | None) -> str | None:
    """None when proc ended by itself, else why it was killed."""
    started = busy = time.monotonic()
    spent = None
    while True:
        try:
            proc.wait(timeout=0.25)
            return None
        except subprocess.TimeoutExpired:
            pass
        now, cpu = time.monotonic(), _group_cpu_ticks(proc.pid)
        if cpu != spent:
            spent, busy = cpu, now
        stopped = f"did not end within {timeout:g} s" if now - started > timeout else \
            f"hung: no CPU time used for {idle_s:g} s" \
            if idle_s is not None and cpu is not None and now - busy > idle_s else None
        if stopped:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return stopped


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
