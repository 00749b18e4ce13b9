"""IREE releases as toolchains: what a release is made of (its compiler and runtime packages),
where its executables lie once provisioned (pipeline.cache.toolchain does the provisioning),
and what they say of themselves for the keys (docs/DESIGN.md §11).

A target's toolchain (Target.toolchain) is a release other than the one kiln is installed
with; the stages that run a release's tools (lower, codegen, validate, bisect) start that
release's executables, and their keys hold that release's versions. The model's own stages
(capture to emit) run once with kiln's release: the emitted module is read by every release
(§11.1 says how far back that was measured).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

from pipeline.cache import toolchain
from pipeline.cache.probes import package_version, register_toolchain_versions, version_text
from pipeline.stage import ConfigError, Target
from stages.targets import with_tuning

# the packages a release is made of: only their executables are run (iree-compile,
# iree-run-module, ...), never their Python, so none of their dependencies is installed
PACKAGES = ("iree-base-compiler", "iree-base-runtime")
# where each package's executables lie in its wheel
COMPILER_DIR, RUNTIME_DIR = "iree/compiler/_mlir_libs", "iree/_runtime_libs"


def installed() -> str:
    """The release kiln is installed with (its compiler package's version)."""
    return package_version(PACKAGES[0])


def with_release(target: Target) -> Target:
    """The target as the stages build it: its release provisioned (kiln's own release is no
    toolchain: toolchain None), per-dispatch tuning only with kiln's own release (the tuning
    stage reads compiler dumps with kiln's MLIR bindings)."""
    if target.toolchain is None:
        return target
    if target.toolchain == installed():
        return dataclasses.replace(target, toolchain=None)
    site(target.toolchain)
    return with_tuning(target, False, None)


@functools.lru_cache(maxsize=None)
def site(release: str) -> Path:
    """The provisioned release's site directory (provisioned now where it is not yet)."""
    return toolchain.provisioned(f"IREE {release}", {p: release for p in PACKAGES},
                                 functools.partial(_check, release))


def _check(release: str, site_dir: Path) -> str | None:
    """What is wrong with a freshly installed release: a package of another version, or an
    executable that does not start."""
    from pipeline import process
    for package in PACKAGES:
        found = _dist_version(site_dir, package)
        if found != release:
            return f"{package}'s metadata says {found}, not {release}"
    compiler = site_dir / COMPILER_DIR / "iree-compile"
    done = process.run([str(compiler), "--version"], 60, fixed=True)
    if done.returncode != 0:
        return f"{compiler} --version failed: {(done.stderr or done.stdout).strip()[:300]}"
    return None


def executable(release: str, name: str) -> str:
    """The path of one of the release's executables (iree-compile, iree-run-module, ...)."""
    path = _found(release, name)
    if path is None:
        raise ConfigError(f"IREE {release} has no {name} (looked in {site(release)})")
    return str(path)


def version(release: str, tool: str) -> str | None:
    """The version of `tool` in the release (a package's from its metadata, an executable's
    --version text), or None where the release does not hold it (numpy: kiln's own)."""
    if tool in PACKAGES:
        return _dist_version(site(release), tool)
    exe = _found(release, tool)
    return None if exe is None else version_text(str(exe))


def _found(release: str, name: str) -> Path | None:
    """Where the release's executable `name` lies: its compiler's or its runtime's folder."""
    return next((p for folder in (COMPILER_DIR, RUNTIME_DIR)
                 if (p := site(release) / folder / name).exists()), None)


def _dist_version(site_dir: Path, package: str) -> str | None:
    prefix = package.replace("-", "_") + "-"
    for entry in os.listdir(site_dir):
        if entry.startswith(prefix) and entry.endswith(".dist-info"):
            return entry[len(prefix):-len(".dist-info")]
    return None


register_toolchain_versions(version)
