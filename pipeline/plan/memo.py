"""The plan memo: the task list of the last run, reused while nothing it was made from changed.

Making the plan reads targets.yaml, discovers the models, asks the tools their versions and
devices, builds the graph and computes every task's dependencies: on 600 tasks that is most
of a no-op run. The memo (build/.kiln/plan-memo.marshal) holds the task list as data
together with what it was made from, as checks that cost a stat each:

- the command-line variables, the environment kiln and its tools read, the working
  directory, the interpreter, this machine and its boot;
- size and mtime of every file the plan read (targets.yaml, kiln's own code, the models/
  directories and every model source) and mtime of every directory it listed;
- the installed distributions (their site-packages directories) and each tool it asked,
  with what the answer depends on (probes.Watch).

Any difference and the plan is made again, then remembered. The memo decides only which tasks
exist and what they depend on; whether a task is up to date is still doit's and the store's.

It is JSON data written with marshal, the format of Python's own .pyc files (and as trusted
as the __pycache__ beside kiln's code): every run reads it, and marshal reads 600 tasks'
specs in half the time json does. A damaged or foreign file reads as no memo.
"""
from __future__ import annotations

import json
import marshal
import os
import sys
from pathlib import Path
from typing import Iterable

from ..cache import probes
from ..cache.digest import canonical
from ..cache.files import atomic_write, read_only, stat_of

FORMAT = 3
# what kiln, iree-compile and the runtime read from the environment. The variables that
# select a backend's devices are the device probe's to watch (each probe fact below is
# checked with its own Watch): the engine names no backend.
ENV_PREFIXES = ("KILN_", "IREE_")
ENV_NAMES = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV")
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def context(variables: dict[str, str], root: Path) -> dict:
    """What the plan depends on that is not a file: checked whole, every run."""
    return {"format": FORMAT, "vars": variables,
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(ENV_PREFIXES) or k in ENV_NAMES},
            "cwd": str(root), "python": [sys.executable, sys.version],
            "host": os.uname().nodename, "boot": probes.read_small(BOOT_ID)}


def file_facts(files: Iterable[Path], listed_dirs: Iterable[Path]) -> dict[str, list | None]:
    """path -> [size, mtime_ns] (None: absent) for the files read and the directories listed
    (a directory's mtime changes when an entry is added, removed or renamed)."""
    facts: dict[str, list | None] = {}
    for path in [*files, *listed_dirs]:
        name = str(path)
        if name not in facts:   # (a folder's cases name its directories many times)
            facts[name] = stat_of(name)
    return facts


def code_facts(packages: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """Every .py file of kiln's packages and the directories holding them."""
    files, dirs = [], []
    for package in packages:
        for folder, subdirs, names in os.walk(package):
            subdirs[:] = [d for d in subdirs if d != "__pycache__"]
            dirs.append(Path(folder))
            files += [Path(folder) / n for n in names if n.endswith(".py")]
    return files, dirs


def distribution_dirs() -> list[Path]:
    """Where installed distributions live: a pip install or upgrade changes these."""
    return [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))
            and os.path.isdir(p)]


def probe_facts() -> list[dict]:
    """Each tool this process asked (probes.probe), with what its answer depends on."""
    seen, facts = set(), []
    for exe, watch in probes.PROBED:
        if (exe, watch) in seen:
            continue
        seen.add((exe, watch))
        facts.append({"exe": exe, "identity": probes.exe_identity(exe),
                      "watch": None if watch is None else
                      [list(watch.places), list(watch.files), list(watch.env)],
                      "state": None if watch is None else watch.state()})
    return facts


def _probe_still(fact: dict) -> bool:
    if probes.exe_identity(fact["exe"]) != fact["identity"]:
        return False
    if fact["watch"] is None:
        return True
    places, files, env = fact["watch"]
    state = probes.Watch(tuple(places), tuple(files), tuple(env)).state()
    return json.loads(canonical(state)) == fact["state"]


def save(path: Path, ctx: dict, files: dict, probes: list[dict], tasks: list[dict],
         notices: list[str]) -> None:
    """Remember the task list (never fatal: a read-only build/ just makes every plan; in
    read-only mode, `doit explain`, nothing is written: the next run makes the plan)."""
    if read_only():
        return
    # (through JSON first: what is remembered is what json would read back, e.g. no tuples.
    # The task specs are JSON's types as pipeline.plan.tasks makes them, a test checks it,
    # and go as they are: their round trip was 0.36 s of a 20,000-task plan; marshal refuses
    # anything else it cannot write, and then they take the round trip too)
    memo = json.loads(json.dumps({"context": ctx, "files": files, "probes": probes,
                                  "notices": notices}, default=str))
    try:
        try:
            data = marshal.dumps({**memo, "tasks": tasks})
        except ValueError:
            data = marshal.dumps({**memo, "tasks": json.loads(json.dumps(tasks, default=str))})
        atomic_write(path, data)
    except OSError:
        pass


def load(path: Path, ctx: dict) -> dict | None:
    """The memo when every fact it was made from still holds, else None."""
    try:
        memo = marshal.loads(path.read_bytes())
        if memo["context"] != json.loads(json.dumps(ctx, default=str)):
            return None
        if any(stat_of(p) != fact for p, fact in memo["files"].items()):
            return None
        if not all(_probe_still(fact) for fact in memo["probes"]):
            return None
        memo["tasks"], memo["notices"]   # noqa: B018 (both present)
    except (OSError, ValueError, EOFError, KeyError, TypeError):
        return None
    return memo
