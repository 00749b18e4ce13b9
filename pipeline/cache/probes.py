"""What the tools say about themselves, asked once: versions, and answers remembered on disk.

A stage's key holds the versions of the tools it calls. Python distributions answer from
their metadata; an executable's answer (--version, a device list) costs a process start, so
it is remembered in build/.kiln/tool-probes.json, keyed by the executable's path, size and
mtime and by whatever else the answer depends on (probes.Watch: the boot, device nodes, ...).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from .digest import canonical
from .files import atomic_write, read_only, stat_of


# name -> how the package that ships an executable finds it (stages register IREE's: the
# venv's bin/iree-compile is a Python launcher around the real binary, docs/DESIGN.md §9.1)
_finders: dict[str, Callable[[], str | None]] = {}


def register_executable(name: str, finder: Callable[[], str | None]) -> None:
    """find_executable(name) asks finder first: the real binary a package ships."""
    _finders[name] = finder


# how the stages find a tool's version within a toolchain (Target.toolchain: another release
# of their tools, provisioned apart: pipeline.cache.toolchain): (toolchain, tool) -> its
# version, or None where the toolchain does not hold that tool (numpy: the installed one's)
_toolchain_versions: Callable[[str, str], str | None] | None = None


def register_toolchain_versions(versions: Callable[[str, str], str | None]) -> None:
    global _toolchain_versions
    _toolchain_versions = versions


def find_executable(name: str) -> str | None:
    """The executable a registered finder names; else this interpreter's own bin/ (doit may
    run without the venv on PATH), then PATH."""
    finder = _finders.get(name)
    found = finder() if finder is not None else None
    if found:
        return found
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)



VERSION_TIMEOUT_S = 60


@functools.lru_cache(maxsize=None)
def tool_version(tool: str, toolchain: str | None = None) -> str:
    """A tool's version: a Python distribution's from its metadata; otherwise an executable's
    full --version text (iree-compile's names its exact build). Distributions are looked up
    first, so a package that also installs a command of its name never depends on PATH.
    Given a toolchain, the version of the tool that toolchain holds, where it holds one."""
    if toolchain is not None and _toolchain_versions is not None:
        found = _toolchain_versions(toolchain, tool)
        if found is not None:
            return found
    version = package_version(tool)
    if version != "not installed":
        return version
    exe = find_executable(tool)
    if exe:
        text = version_text(exe)
        if text is not None:
            return text
        raise ValueError(f"{tool} --version failed: declare its Python distribution instead")
    return version


def version_text(exe: str) -> str | None:
    """An executable's whole --version text, one line (None where it fails), remembered in
    the probe cache."""
    def ask() -> str | None:
        from ..process import run   # (a no-op run asks no tool: it need not load this)
        out = run([exe, "--version"], VERSION_TIMEOUT_S, fixed=True)
        return " ".join((out.stdout + out.stderr).split()) if out.returncode == 0 else None
    return probe(exe, ("--version",), ask)



# What an executable says about itself (--version, a device list) costs a process start on
# every doit invocation; it is remembered across processes, keyed by the executable's
# resolved path, size and mtime_ns (a replaced or touched binary asks again) plus the
# arguments and whatever else the caller names (e.g. the boot, for a device list).
PROBE_CACHE_ENV = "KILN_TOOL_CACHE"



_probe_cache: Path | None = None   # set by the plan: the project's build/.kiln/



def use_probe_cache(path: Path) -> None:
    """Where answers are remembered: inside the project's build/ (kiln touches nothing
    outside build/ and the cache). Until set (and without KILN_TOOL_CACHE), tools are asked."""
    global _probe_cache
    _probe_cache = path



def probe_cache_file() -> Path | None:
    explicit = os.environ.get(PROBE_CACHE_ENV)
    return Path(explicit) if explicit else _probe_cache



def exe_identity(exe: str) -> list | None:
    real = os.path.realpath(exe)
    st = stat_of(real)
    return None if st is None else [real, *st]



class Watch(NamedTuple):
    """What else an executable's answer depends on (a device list: the boot, the device
    nodes, the driver manifests, the selecting environment), as cheap checks: directories
    whose mtime changes when an entry comes or goes, small files read whole, variables.
    (A NamedTuple: every run imports this module, and a frozen dataclass costs more to
    define than the rest of it.)"""
    places: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    env: tuple[str, ...] = ()

    def state(self) -> dict:
        return {"host": os.uname().nodename,
                "places": {p: _mtime_ns(p) for p in self.places},
                "files": {f: read_small(f) for f in self.files},
                "env": {v: os.environ.get(v) for v in self.env}}



def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None



def read_small(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read(4096).strip()
    except OSError:
        return None



# the probes this process made, with what they depend on: the plan memo re-checks them
# (pipeline.plan.memo) before it trusts a task list that was made from their answers
PROBED: list[tuple[str, Watch | None]] = []



def probe(exe: str, args: tuple[str, ...], ask: Callable[[], str | list | None],
          watch: Watch | None = None):
    """ask()'s answer about exe, from the probe cache when exe (path, size, mtime_ns), args and
    what watch names are what they were when it was last asked; None answers are never
    remembered. A missing or damaged cache file is ignored and rewritten (atomically)."""
    PROBED.append((exe, watch))
    identity = exe_identity(exe)
    if identity is None:
        return ask()
    key = canonical({"exe": identity, "args": list(args),
                     "extra": watch.state() if watch else None})
    path = probe_cache_file()
    if path is None:
        return ask()
    entries = _read_probes(path)
    if key in entries:
        return entries[key]
    answer = ask()
    if answer is not None:
        entries = _read_probes(path)   # another process may have written meanwhile
        # drop what an older build of this executable said: the file stays small
        entries = {k: v for k, v in entries.items()
                   if json.loads(k).get("exe", [None])[0] != identity[0]
                   or json.loads(k).get("args") != list(args)}
        entries[key] = answer
        _write_probes(path, entries)
    return answer



def _read_probes(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    good = {}
    for k, v in data.items():
        try:
            if isinstance(json.loads(k), dict):
                good[k] = v
        except ValueError:
            continue
    return good



def _write_probes(path: Path, entries: dict) -> None:
    if read_only():   # `doit explain`: the tools are asked again next time, never wrongly
        return
    try:
        atomic_write(path, json.dumps(entries, indent=1, sort_keys=True).encode())
    except OSError:
        pass   # a read-only build/: asking every time is slower, never wrong



@functools.lru_cache(maxsize=None)
def package_version(dist: str) -> str:
    """Cheap version lookup (no import, no subprocess): used for doit's up-to-date check."""
    import importlib.metadata   # here: 15 ms that a no-op run from the plan memo never pays
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"

