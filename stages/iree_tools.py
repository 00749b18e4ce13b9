"""Calling IREE's command-line tools the way every stage must: input on stdin (a file path
given to iree-compile ends up inside the artifact), errors raised with the exact command."""
from __future__ import annotations

import functools
import shlex
import subprocess
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
