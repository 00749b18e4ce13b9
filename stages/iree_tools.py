"""Calling IREE's command-line tools the way every stage must: the real executables the
installed packages ship, never the venv's Python launchers (docs/DESIGN.md §9.1); each in a
process group of its own under a timeout (pipeline.process); input on stdin (a file path
given to iree-compile ends up inside the artifact); errors raised with the exact command; a
runtime tool watched for a hang (run_watched)."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shlex
import threading
from pathlib import Path

from pipeline import process
from pipeline.cache.probes import Watch, find_executable, probe, register_executable
from pipeline.stage import StageError
from stages import backends

HERE = Path(__file__).parent
# the files that decide what an iree-compile for a target does: in the code of each stage
# that compiles for one (lower, codegen)
COMPILE_CODE = (HERE / "iree_tools.py", HERE / "targets.py", HERE / "backends.py")

# the compiler package's tools (iree.compiler.tools.binaries knows where each one is)
COMPILER_TOOLS = ("iree-compile", "iree-opt", "iree-link")
# the runtime package's tools: all in iree/_runtime_libs/
RUNTIME_TOOLS = ("iree-run-module", "iree-benchmark-module", "iree-benchmark-executable",
                 "iree-dump-module", "iree-cpuinfo", "iree-convert-parameters",
                 "iree-create-parameters", "iree-dump-parameters")

COMPILE_TIMEOUT_S = 1800
DEVICES_TIMEOUT_S = 60


def _compiler_tool(name: str) -> str | None:
    """Where iree-base-compiler's own launcher finds it (iree.compiler.tools.binaries.
    find_tool): IREE_TOOL_PATH's directories first, then the package's _mlir_libs/. Done here
    without importing iree.compiler (0.14 s: its MLIR bindings and numpy, in every process
    that asks for a tool, a cold plan's included); the package's own lookup where that
    finds nothing (docs/DESIGN.md §9.1)."""
    for directory in os.environ.get("IREE_TOOL_PATH", "").split(os.pathsep):
        if directory and _executable(os.path.join(directory, name)):
            return os.path.join(directory, name)
    spec = importlib.util.find_spec("iree.compiler")
    for package_dir in (spec.submodule_search_locations or []) if spec else []:
        builtin = os.path.join(package_dir, "_mlir_libs", name)
        if _executable(builtin):
            return builtin
    try:
        from iree.compiler.tools.binaries import find_tool
        return os.path.normpath(find_tool(name))
    except (ImportError, ValueError):
        return None


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _runtime_tool(name: str) -> str | None:
    """iree-base-runtime's launchers start iree/_runtime_libs/<name> (IREE_PY_RUNTIME picks
    another variant, as there)."""
    try:
        from iree._runtime import libs
    except ImportError:
        return None
    path = os.path.join(libs.library_path, name)
    return path if _executable(path) else None


for _name in COMPILER_TOOLS:
    register_executable(_name, functools.partial(_compiler_tool, _name))
for _name in RUNTIME_TOOLS:
    register_executable(_name, functools.partial(_runtime_tool, _name))


@functools.lru_cache(maxsize=None)
def tool(name: str, release: str | None = None) -> str:
    """The executable to start for an IREE tool: the real binary its package ships; given a
    release (a target's toolchain), that release's (stages.toolchains)."""
    if release is not None:
        from stages import toolchains
        return toolchains.executable(release, name)
    return find_executable(name) or name


def iree_compile(src: Path, out: Path, flags: list[str], ctx,
                 timeout: float = COMPILE_TIMEOUT_S) -> None:
    """iree-compile from src to out, the target's release's (kiln's own where it has none)."""
    _from_stdin("iree-compile", src, out, flags, ctx, ctx.target and ctx.target.toolchain,
                timeout)


def iree_opt(src: Path, out: Path, flags: list[str], ctx, release: str | None = None,
             timeout: float = COMPILE_TIMEOUT_S) -> None:
    """iree-opt (a release's, given one) from src to out: here, to hand a module between
    releases (docs/DESIGN.md §11.1)."""
    _from_stdin("iree-opt", src, out, flags, ctx, release, timeout)


def _from_stdin(name: str, src: Path, out: Path, flags: list[str], ctx, release: str | None,
                timeout: float) -> None:
    """An IREE tool from src (on stdin) to out, logged with the command as a user types it;
    out is removed where it fails."""
    argv = [tool(name, release), "-", *flags, "-o", str(out)]
    command = f"{shlex.join(argv)} < {shlex.quote(str(src))}"
    ctx.log(f"$ {command}")
    try:
        done = process.run(argv, timeout, tool=name, stdin=src)
    except StageError as err:   # (a timeout, a stop) with the command as a user types it
        out.unlink(missing_ok=True)
        err.command = command
        raise
    if done.stderr:
        ctx.log(done.stderr)
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        raise StageError(f"{name} {failure(done.returncode, done.stderr)}",
                         command=command, exit_code=done.returncode)


def compile_failure(src: Path, flags: list[str], timeout: float = 600,
                    release: str | None = None) -> str | None:
    """How iree-compile fails on src, worded as iree_compile would, or None when it compiles
    (the output discarded): for probing which part of a module it cannot take."""
    argv = [tool("iree-compile", release), "-", *flags, "-o", "/dev/null"]
    done = process.run(argv, timeout, tool="iree-compile", stdin=src)
    return failure(done.returncode, done.stderr) if done.returncode else None


def failure(returncode: int, stderr: str) -> str:
    """How a tool failed, for an error message: its exit (a signal by name) and its words."""
    # LLVM's crash handler prints only a stack dump: its first line is no diagnostic
    if "Stack dump:" in stderr and "error:" not in stderr:
        return f"crashed ({process.exit_words(returncode)}: a stack dump, no diagnostic)"
    return f"{process.exit_words(returncode)}: {first_error(stderr)}"


def first_error(stderr: str) -> str:
    """The diagnostic a user needs first: the first 'error:' line, else the first line
    (e.g. "Unknown command line argument '--x'", before a "Did you mean" hint)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:500]
    return " ".join(lines[:2])[:500] if lines else "no message"


def devices() -> tuple[str, ...]:
    """The runtime's devices on this machine, e.g. ('local-task://', 'vulkan://GPU-...').
    Remembered across runs (pipeline.cache.probes.probe) while the executable, this boot,
    the device nodes, the Vulkan driver manifests and the device-selecting environment stay
    the same; asked once a process (a caller waits for an asking under way:
    ask_devices_ahead)."""
    with _DEVICES_LOCK:
        return _devices()


_DEVICES_LOCK = threading.Lock()   # held while asking
_AHEAD_LOCK = threading.Lock()
_asked_ahead = False


def ask_devices_ahead() -> None:
    """Start asking for devices() in a background thread, once a process: a plan names each
    validate task's device in its key only once its graph is built, and the asking (a
    process start, 0.1 s of a cold plan's wall time) runs meanwhile (docs/DESIGN.md §10.6).
    Where it fails, the caller that needs the answer asks again and sees why."""
    global _asked_ahead
    with _AHEAD_LOCK:
        if _asked_ahead:
            return
        _asked_ahead = True
    threading.Thread(target=_devices_quietly, name="kiln-devices", daemon=True).start()


def _devices_quietly() -> None:
    with contextlib.suppress(Exception):
        devices()


@functools.lru_cache(maxsize=None)
def _devices() -> tuple[str, ...]:
    exe = tool("iree-run-module")

    def ask() -> list[str]:
        done = process.run([exe, "--list_devices"], DEVICES_TIMEOUT_S, fixed=True)
        return [line.strip() for line in done.stdout.splitlines() if "://" in line]

    return tuple(probe(exe, ("--list_devices",), ask, DEVICE_WATCH))


# what can change the device list without changing iree-run-module: the device nodes, and
# each backend's own places and variables (stages/backends.py)
DEVICE_PLACES = ("/dev", *backends.device_places())
DEVICE_ENV = (*backends.device_env(), "LD_LIBRARY_PATH")

DEVICE_WATCH = Watch(places=DEVICE_PLACES, files=("/proc/sys/kernel/random/boot_id",),
                     env=DEVICE_ENV)


# IREE's local-task driver now and then deadlocks while reporting that a call failed
# (iree-run-module, OUT_OF_RANGE from hal.buffer_view.create: about 1 run in 10, the others
# answer in 40 ms); from then on it uses no CPU time at all. On a CPU driver a run that uses
# none for this long is making no progress: it is killed and may be run again.
IDLE_S = 10.0


def run_watched(argv: list[str], timeout: float, idle_s: float | None = None) -> process.Finished:
    """argv in a process group of its own (pipeline.process.run), killed with everything it
    started when it runs past timeout (ToolTimeout) or, given idle_s, when it uses no CPU
    time for idle_s seconds (returned with `stopped` saying so: the caller may run it again)."""
    return process.run(argv, timeout, idle_s=idle_s)
