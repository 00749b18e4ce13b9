"""Toolchains: other releases of a target's tools, each provisioned once into a directory of
the cache of its own, named by what it holds, verified before every use (docs/DESIGN.md §11).

A toolchain is a set of pinned Python distributions (packages = {name: version}) installed
with pip into <cache>/toolchains/<digest>/site, never into kiln's own environment. The
digest covers the packages, the interpreter's wheel tag and the platform: the same release on
two machines of one kind is the same directory name. What the stages need from it (which
packages make a release, where its executables lie) is theirs (stages/toolchains.py); this
module knows pip, the directory and its manifest only.

- Nothing half-provisioned is ever used: pip installs into a temporary directory beside the
  final one, the caller's check runs there, a manifest (every file's size) is written last,
  and the whole directory is renamed into place.
- A provisioned toolchain is verified on first use in a process: every file the manifest
  lists, with its size. A damaged one (a file gone or cut short, no manifest) is removed
  and provisioned again.
- Provisioning runs once per directory, whichever process asks first: the others wait on a
  lock file beside it, then find it done. Where it is done, pip is never started (offline).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import ConfigError
from .digest import canonical, digest_bytes

MANIFEST = "kiln-toolchain.json"
PIP_TIMEOUT_S = 1800
ROOT_ENV = "KILN_TOOLCHAINS"   # where toolchains go (default: <cache>/toolchains)

_root: Path | None = None   # set by the plan: the project's cache/toolchains


def use_root(path: Path) -> None:
    global _root
    _root = path


def root() -> Path:
    explicit = os.environ.get(ROOT_ENV)
    if explicit:
        return Path(explicit).resolve()
    if _root is None:
        raise RuntimeError("no toolchain directory: the plan sets it (use_root)")
    return _root


def directory(packages: dict[str, str]) -> Path:
    """Where these packages live once provisioned, for this interpreter and platform."""
    identity = {"packages": packages, "python": sys.implementation.cache_tag,
                "platform": sysconfig.get_platform()}
    return root() / digest_bytes(canonical(identity).encode())[:24]


def provisioned(name: str, packages: dict[str, str],
                check: Callable[[Path], str | None] = lambda site: None,
                say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """The site directory of the toolchain `name` (for messages: 'IREE 3.12.0'): as found,
    when verified; else provisioned now (pip, then check(site): None, or what is wrong with
    it). ConfigError naming the packages and what pip (or check) said when that fails."""
    home = directory(packages)
    return _provisioned(home, name, tuple(sorted(packages.items())), check, say)


@functools.lru_cache(maxsize=None)
def _provisioned(home: Path, name: str, packages: tuple, check, say) -> Path:
    if verified(home):
        return home / "site"
    home.parent.mkdir(parents=True, exist_ok=True)
    with _locked(home.with_name(home.name + ".lock")):
        if verified(home):   # another process provisioned it while this one waited
            return home / "site"
        if home.exists():
            say(f"kiln: {name}: {home} is incomplete or damaged: provisioning it again")
            shutil.rmtree(home, ignore_errors=True)
        for left in home.parent.glob(home.name + ".*.tmp"):   # a killed provisioning's (the
            shutil.rmtree(left, ignore_errors=True)            # lock says none is under way)
        _install(home, name, dict(packages), check, say)
    return home / "site"


def verified(home: Path) -> bool:
    """Every file the manifest lists is there with its size (a manifest is written last:
    no manifest, no toolchain)."""
    try:
        listed = json.loads((home / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    site = home / "site"
    for rel, size in listed.items():
        try:
            if os.stat(site / rel).st_size != size:
                return False
        except OSError:
            return False
    return True


def _install(home: Path, name: str, packages: dict[str, str], check, say) -> None:
    work = Path(tempfile.mkdtemp(prefix=home.name + ".", suffix=".tmp", dir=home.parent))
    try:
        site = work / "site"
        pins = [f"{dist}=={version}" for dist, version in packages.items()]
        argv = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
                "--disable-pip-version-check", "--progress-bar", "off", "--target", str(site),
                *pins]
        say(f"kiln: {name}: provisioning {', '.join(pins)} into {home} (once per release)")
        said = _pip(argv, name, say)
        if said is not None:
            raise ConfigError(f"{name}: could not provision {' '.join(pins)}: pip said: "
                              f"{said} (command: {shlex.join(argv)})")
        wrong = check(site)
        if wrong is not None:
            raise ConfigError(f"{name}: provisioned {' '.join(pins)}, but {wrong}")
        files = {str(p.relative_to(site)): p.stat().st_size
                 for p in sorted(site.rglob("*")) if p.is_file() and not p.is_symlink()}
        manifest = {"name": name, "packages": packages, "files": files}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(work, home)
        say(f"kiln: {name}: provisioned ({sum(files.values()) / 1e6:.0f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pip(argv: list[str], name: str, say) -> str | None:
    """Runs pip, echoing its lines as progress; None when it succeeded, else its error lines."""
    from .. import process
    lines = []
    with process.started(argv, PIP_TIMEOUT_S, tool="pip", stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, fixed=True) as proc:
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.strip() and not line.startswith("WARNING: Location"):
                say(f"kiln: {name}:   {line.rstrip()}")
    if proc.returncode == 0:
        return None
    errors = [line for line in lines if line.startswith("ERROR")] or lines[-5:]
    return " ".join(" ".join(errors).split())


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
