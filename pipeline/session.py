"""One doit invocation, as dodo.py sees it: its tasks, its DOIT_CONFIG, and the plan behind them.

The task list comes from the plan memo (pipeline.memo) while what it was made from holds, else
from a new plan, which is then remembered. The plan itself (models, graph, stages) is made
only when something needs it: a task that runs, or a stale memo. So a no-op run imports no
stage, no graph library and no YAML parser.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Callable

from . import memo
from .intact import outputs_intact
from .record import RunLog, make_reporter

CHECK_SIGNATURE = inspect.Signature(
    [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("task", "values")])
MEMO_ENV = "KILN_PLAN_MEMO"   # "0": always make the plan (a check that the memo is not wrong)


class Session:
    def __init__(self, get_var: Callable[[str], str | None], make_plan: Callable[[RunLog], object],
                 code: list[Path], root: Path | None = None):
        self.get_var = get_var
        self.root = Path(root or os.getcwd()).resolve()
        self.build = self.root / "build"
        self.run = RunLog()
        self.code = code                # kiln's own files: dodo.py and its packages
        self._make_plan = make_plan
        self._plan = None
        self._lock = threading.Lock()   # stages run in threads (-P thread): one plan
        self.saved: dict[str, dict] = {}   # task -> what its next up-to-date check compares

    def plan(self):
        """The plan of this invocation, made on first use."""
        with self._lock:
            if self._plan is None:
                self._plan = self._make_plan(self.run)
            return self._plan

    def task_specs(self) -> list[dict]:
        memo_file = self.build / ".kiln" / "plan-memo.json"
        context = memo.context(self.get_var, self.root)
        remembered = memo.load(memo_file, context) if os.environ.get(MEMO_ENV) != "0" else None
        if remembered is not None:
            notices, specs = remembered["notices"], remembered["tasks"]
        else:
            from .tasks import plan_inputs, task_specs
            plan = self.plan()
            notices, specs = plan.notices, task_specs(plan)
            read, listed = plan_inputs(plan)
            code_files, code_dirs = memo.code_facts(p for p in self.code if p.is_dir())
            files = memo.file_facts([*read, *code_files, *(p for p in self.code if p.is_file())],
                                    [*listed, *code_dirs, *memo.distribution_dirs()])
            memo.save(memo_file, context, files, memo.probe_facts(), specs, notices)
        for notice in notices:
            print(notice, file=sys.stderr)
        return specs

    def tasks(self):
        """doit's task dicts: the specs with their actions and up-to-date check attached."""
        check = _Check(self)
        for spec in self.task_specs():
            task = {k: v for k, v in spec.items() if k != "kiln_action"}
            kind = spec.get("kiln_action")
            if kind == "stage":
                task["actions"] = [(self.run_stage, [f"{spec['basename']}:{spec['name']}",
                                                     spec["meta"]["kiln"]])]
                task["uptodate"] = [check]
            elif kind == "prune":
                task["actions"] = [(self.prune, [])]
            yield task

    def run_stage(self, task_name: str, info: dict):
        from .tasks import stage_action
        outcome = stage_action(self.plan(), task_name, info["watched"], info.get("soft_deps", []))
        if isinstance(outcome, dict):   # saved by _Check's value saver, once doit has it
            self.saved[task_name] = outcome
            return None
        return outcome

    def prune(self):
        from .tasks import prune
        cache = Path(os.environ.get("KILN_CACHE") or self.root / "cache").resolve()
        return prune(cache, self.build, self.get_var("days"))

    def up_to_date(self, task, values) -> bool | None:
        verdict = stage_check(task, values)
        if verdict is not False:
            self.run.previous[task.name] = values["entry"]   # the record's, without a file read
        return verdict

    def doit_config(self) -> dict:
        dep_file = self.root / ".doit.db"
        seal = self.build / ".kiln" / "doit-db.json"
        warning = set_aside_if_damaged(dep_file, seal)
        if warning:
            self.run.warnings.append(warning)
            print(f"kiln: warning: {warning}", file=sys.stderr)
        return {
            "backend": "sqlite3",
            "dep_file": str(dep_file),
            "continue": True,           # one failing model x target never stops the others
            "default_tasks": ["validate"],
            "reporter": make_reporter(self.build / "run.json", self.run,
                                      after=lambda: _seal(dep_file, seal)),
        }


def stage_check(task, values, refresh: bool = True) -> bool | None:
    """doit's check of a stage task, beside its file_dep: the params and tool versions are
    those its last run saw, the inputs a soft upstream left are the same, and its outputs
    in build/ still hold what it wrote (refresh: record a touched output's new stat)."""
    info = task.meta["kiln"]
    entry = values.get("entry")
    if values.get("watched") != info["watched"] or not isinstance(entry, dict):
        return False   # never ran here, last failed, or a param or tool changed
    if info.get("soft_deps") and not same_inputs(info["soft_deps"], values.get("soft_inputs")):
        return False   # what a variant among several left it (doit checks the others)
    if not isinstance(entry.get("outputs"), dict):
        return None    # skipped: no outputs to check; doit's target check decides
    return outputs_intact(info["out_dir"], entry["outputs"], info["entry"], refresh)


def input_state(path: str, digest: str | None = None) -> list | None:
    """[digest, size, mtime_ns] of an input a soft upstream left, or None when it left none
    (digest: the one already taken, e.g. for the stage's key)."""
    from .keys import digest_file
    try:
        st = os.stat(path)
        return [digest or digest_file(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return None


def same_inputs(paths: list[str], recorded: dict | None) -> bool:
    """The inputs hold what they held at the task's last run (absent then, absent now counts
    as the same): a stat, and a hash only where the stat differs."""
    recorded = recorded or {}
    for path in paths:
        was = recorded.get(path, "unknown")
        try:
            st = os.stat(path)
        except OSError:
            if was is not None:
                return False
            continue
        if not isinstance(was, list):
            return False
        if [st.st_size, st.st_mtime_ns] != was[1:] and (input_state(path) or [None])[0] != was[0]:
            return False
    return True


class _Check:
    """A stage task's up-to-date check, and the saver of the values it checks against.

    The values reach doit's database through a value saver, not as the action's return
    value: doit would store a returned dict twice. The signature is stated because doit
    works out each check's signature for every task: a fifth of a 600-task no-op otherwise."""
    __signature__ = CHECK_SIGNATURE

    def __init__(self, session: Session):
        self.session = session

    def __call__(self, task, values):
        return self.session.up_to_date(task, values)

    def configure_task(self, task):
        task.value_savers.append(lambda: self.session.saved.pop(task.name, {}))


def _identity(path: Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _seal(dep_file: Path, seal: Path) -> None:
    """Remember the database as doit left it at the end of a run (the reporter's last step:
    doit has closed it), so the next run need not decode every row to trust it."""
    from .store import atomic_write
    with contextlib.suppress(OSError):
        atomic_write(seal, json.dumps(_identity(dep_file)).encode())


def set_aside_if_damaged(dep_file: Path, seal: Path | None = None) -> str | None:
    """doit stops every run (exit 3) on a damaged database until someone deletes it. Move it
    aside instead: the store turns the lost up-to-date state into cache hits, not compiles.
    Returns the warning, or None when the file is absent or sound."""
    if not dep_file.exists():
        return None
    try:
        sealed = json.loads(seal.read_text()) if seal else None
    except (OSError, ValueError):
        sealed = None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{dep_file}?mode=ro", uri=True)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            has_table = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'doit'").fetchone()
            # sqlite keeps no checksums: a flipped byte in a row shows only when doit decodes
            # it. Unless the file is the one the last run's doit left (same inode, size, mtime)
            deep = has_table and sealed != _identity(dep_file)
            for (data,) in db.execute("SELECT task_data FROM doit") if deep else ():
                json.loads(data)
    except sqlite3.OperationalError as err:   # locked or busy (another doit): not damage
        return None if "locked" in str(err) or "busy" in str(err) else \
            _set_aside(dep_file, str(err))
    except (sqlite3.Error, ValueError, TypeError) as err:
        verdict = str(err)
    return None if verdict == "ok" else _set_aside(dep_file, verdict)


def _set_aside(dep_file: Path, verdict: str) -> str:
    aside = dep_file.with_name(dep_file.name + ".damaged")
    os.replace(dep_file, aside)
    return (f"{dep_file} was damaged ({verdict}); moved it to {aside.name} and went on: "
            "stages are restored from the cache")
