"""One doit invocation, as dodo.py sees it: its tasks, its DOIT_CONFIG, and the plan behind them.

The task list comes from the plan memo (pipeline.plan.memo) while what it was made from holds, else
from a new plan, which is then remembered. The plan itself (models, graph, stages) is made
only when something needs it: a task that runs, or a stale memo. So a no-op run imports no
stage, no graph library and no YAML parser.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn

from doit.exceptions import TaskFailed

from ..cache.files import atomic_write, read_only
from ..names import SCRATCH_DIR, task_name
from ..plan import memo
from ..plan.variables import given_variables, plan_variables, read_variables, refuse_unknown
from ..report.record import RunLog, write_failed_run
from ..run.uptodate import CHECK_SIGNATURE, KeySources, Settled, settled, stage_check
from . import collector
from .database import identity, seal, set_aside_if_damaged
from .doit_tasks import TaskMaker
from .reporter import make_reporter

if TYPE_CHECKING:   # (the plan's modules load only when a plan is made)
    from ..plan.tasks import Plan
    from ..report.diff import Baseline

MEMO_ENV = "KILN_PLAN_MEMO"   # "0": always make the plan (a check that the memo is not wrong)


class Session:
    def __init__(self, get_var: Callable[[str], str | None],
                 make_plan: Callable[[dict[str, str]], Plan],
                 code: list[Path], root: Path | None = None):
        collector.hold()   # (until a task runs: a no-op allocates only what it keeps)
        self.variables = read_variables(get_var)   # the command line's options, as given
        self.root = Path(root or os.getcwd()).resolve()
        self.build = self.root / "build"
        self.memo_file = self.build / ".kiln" / "plan-memo.marshal"
        self.run = RunLog()
        self.code = code                # kiln's own files: dodo.py and its packages
        self._make_plan = make_plan
        self._plan = None
        self._specs = None
        self._executor = None
        self._lock = threading.Lock()   # stages run in threads (-P thread): one plan

    def plan(self) -> Plan:
        """The plan of this invocation, made on first use (a bad option stops it here)."""
        with self._lock:
            if self._plan is None:
                self._plan = self._planned()
            return self._plan

    def _planned(self) -> Plan:
        """A new plan. Bad input (a ConfigError) stops the run with its message and no
        traceback; anything else raised (a kiln bug) with its traceback. Either way a
        failed-run record replaces the previous run's, which would otherwise look current."""
        from ..stage import ConfigError
        try:
            return self._make_plan(plan_variables(self.variables))
        except ConfigError as err:
            self._stop(err)
        except Exception as err:
            write_failed_run(self.build / "run.json",
                             f"planning failed: {type(err).__name__}: {err}")
            raise

    def executor(self):
        """Where stages that miss the cache run: a Dask executor, or None (here)."""
        plan = self.plan()
        with self._lock:
            if self._executor is None and plan.options.executor is not None:
                from ..run.executor import DaskExecutor
                stages = {id(d["stage"]): d["stage"] for _, d in plan.graph.nodes(data=True)}
                offered = lambda: {k: v for s in stages.values()  # noqa: E731
                                   for k, v in s.worker_resources().items()}
                from .worker import WORKER_SCRIPT
                self._executor = DaskExecutor(plan.options.executor, plan.options.for_worker(),
                                              plan.layout.root, plan.layout.cache, offered,
                                              WORKER_SCRIPT)
            return self._executor

    def task_specs(self) -> list[dict]:
        if self._specs is None:
            self._specs = self._load_specs()
        return self._specs

    def _load_specs(self) -> list[dict]:
        context = memo.context(plan_variables(self.variables), self.root)
        remembered = memo.load(self.memo_file, context) if os.environ.get(MEMO_ENV) != "0" else None
        if remembered is not None:
            notices, specs = remembered["notices"], remembered["tasks"]
        else:
            from ..plan.tasks import plan_inputs, task_specs
            plan = self.plan()
            notices, specs = plan.notices, task_specs(plan)
            read, listed = plan_inputs(plan)
            code_files, code_dirs = memo.code_facts(p for p in self.code if p.is_dir())
            files = memo.file_facts([*read, *code_files, *(p for p in self.code if p.is_file())],
                                    [*listed, *code_dirs, *memo.distribution_dirs()])
            memo.save(self.memo_file, context, files, memo.probe_facts(), specs, notices)
        for notice in notices:
            print(notice, file=sys.stderr)
        return specs

    def tasks(self):
        """doit's tasks: the specs with their actions and up-to-date check attached, made
        into doit's Task objects by pipeline.driver.doit_tasks (a stage task's dict, its group's
        too), else handed to doit as dicts."""
        check = StageCheck(self)
        maker = TaskMaker()   # (doit's Task objects, made for less than doit makes them)
        for spec in self.task_specs():
            task = {k: v for k, v in spec.items() if not k.startswith("kiln_")}
            kind = spec.get("kiln_action")
            if kind == "stage":
                task["actions"] = [(self.run_stage, [task_name(spec["basename"], spec["name"]),
                                                     spec["meta"]["kiln"]])]
                task["uptodate"] = [check]
            elif kind == "prune":
                task["actions"] = [(self.prune, [])]
            yield maker.make(task)

    def run_stage(self, name: str, info: dict, task):
        """A stage task's action. Its values (what the next up-to-date check compares) go
        straight into doit's task (doit hands it in as `task`), not as the return value
        (doit would store a returned dict twice, as result and values) nor through a value
        saver (with -n, doit runs those in its main process, which never saw the action run:
        every -n run ran every task again). A task whose last outcome is settled (a failure
        the cache remembers, a skip for an absent input: pipeline.run.uptodate.settled) is
        reported as it stands, with no plan made and no key computed."""
        collector.resume()   # (here too: with -n, stages run in doit's child processes)
        self._temp_files_in_build()
        sources = KeySources.of(task)
        known = self.settled(task, sources)
        if known is not None:
            outcome = self._report_settled(info, known)
        else:
            from .actions import stage_action
            outcome = stage_action(self.plan(), self.executor(), self.run, name, sources,
                                   info.get("soft_deps", []))
        if isinstance(outcome, dict):   # a child process sends task.values back with the task
            task.values.update(outcome)
            return None
        return outcome

    def _temp_files_in_build(self) -> None:
        """Every temporary file of this process and the tools it starts goes to build/.tmp
        (a killed run's leftovers stay inside build/, where prune removes them), never to
        /tmp: Python's tempfile, and TMPDIR for the tools (LLVM's linker writes there)."""
        scratch = self.build / SCRATCH_DIR
        if tempfile.tempdir != str(scratch):
            scratch.mkdir(parents=True, exist_ok=True)
            tempfile.tempdir = os.environ["TMPDIR"] = str(scratch)

    def settled(self, task, sources: KeySources | None = None) -> Settled | None:
        """The stage task's settled outcome, as this run reports it (uptodate.settled), or
        None; always None with retry= (retry=failed runs remembered failures again; another
        value is an error the plan reports). `doit explain` asks it too."""
        if "retry" in self.variables:
            return None
        return settled(Path(task.meta["kiln"]["entry"]), sources or KeySources.of(task), self.cache)

    def _report_settled(self, info: dict, known: Settled):
        """A settled outcome, reported as stage_action reports one: a failure fails the task
        (a variant's soft one, or one another stage diagnoses, does not), a skip leaves its
        entry in the task's values."""
        entry = known.entry
        if known.log is not None:
            self._write_settled(Path(info["entry"]), known)
        self.run.entries[entry.task] = entry
        self.run.settled.add(entry.task)
        if entry.failed and not (info.get("soft") or info.get("followed")):
            return TaskFailed(entry.failure_message())
        return {"entry": entry.to_dict(fingerprint=False, result_text=True)}

    def _write_settled(self, entry_file: Path, known: Settled) -> None:
        """The outcome's log and entry file, as the runner writes them for it: the first run
        that reports it so (a run after it finds them saying so, and writes nothing); with -n
        the record reads a child process's entry from its file."""
        if read_only():
            return
        entry = known.entry
        with contextlib.suppress(OSError):   # (the record still has it, from memory)
            if entry.log:
                atomic_write(self.root / entry.log, entry.log_text(known.log))
            atomic_write(entry_file, entry.to_json())

    @property
    def cache(self) -> Path:
        """The local cache this run uses, as the plan's layout has it."""
        return Path(os.environ.get("KILN_CACHE") or self.root / "cache").resolve()

    def prune(self):
        collector.resume()
        from .actions import prune
        return prune(self.cache, self.build, self.variables.get("days"))

    def up_to_date(self, task, values) -> bool | None:
        verdict = stage_check(task, values)
        if verdict is not False:
            self.run.previous[task.name] = values["entry"]   # the record's, without a file read
        return verdict

    def doit_config(self) -> dict:
        self._refuse_unknown_options()   # (first: `tragets=cpu` must not build the default)
        baseline = self._baseline()   # (a wrong baseline= stops the run before a plan)
        dep_file = self.root / ".doit.db"
        seal_file = self.build / ".kiln" / "doit-db.json"
        warning = set_aside_if_damaged(dep_file, seal_file)
        if warning:
            self.run.warnings.append(warning)
            print(f"kiln: warning: {warning}", file=sys.stderr)
        default_tasks = list(dict.fromkeys(s["basename"] for s in self.task_specs()
                                           if s.get("kiln_default")))
        # what the record of a no-op run is made from: the database before doit opens it,
        # the plan memo once the task list is read (a changed plan or kiln rewrites it), and
        # the baseline it is compared with
        plan_memo = identity(self.memo_file)
        compared = {} if baseline is None else \
            {"baseline": [identity(baseline.path), baseline.factor]}
        made_from = ({"db": identity(dep_file), "plan": plan_memo, **compared},
                     lambda: {"db": identity(dep_file), "plan": plan_memo, **compared})
        return {
            "backend": "sqlite3",
            "dep_file": str(dep_file),
            "continue": True,           # one failing model x target never stops the others
            "default_tasks": default_tasks,
            "reporter": make_reporter(self.build / "run.json", self.run,
                                      after=lambda: seal(dep_file, seal_file), made_from=made_from,
                                      strict=self._strict(), baseline=baseline),
        }

    def _refuse_unknown_options(self) -> None:
        """A key=value option kiln does not read stops the run before anything is built."""
        from ..stage import ConfigError
        try:
            refuse_unknown(given_variables())
        except ConfigError as err:
            self._stop(err)

    def _baseline(self) -> Baseline | None:
        """baseline= (and factor=): the earlier run this run's reports say what changed
        since, read now, so that a wrong path stops the run before it builds anything."""
        if "baseline" not in self.variables:
            return None
        from ..report.diff import load
        from ..stage import ConfigError
        try:
            return load(self.variables["baseline"], self.variables.get("factor"), self.root)
        except ConfigError as err:
            self._stop(err)

    def _stop(self, err: Exception) -> NoReturn:
        """Stop on bad input: a failed-run record first, so the previous run's never stays
        looking current, then the message (exit 1)."""
        write_failed_run(self.build / "run.json", str(err))
        sys.exit(f"kiln: {err}")

    def _strict(self) -> bool:
        """strict=1: an unexpected pass fails the run. Its value was checked when the plan was
        made (a plan memo is only ever saved by a run whose options parsed)."""
        if "strict" not in self.variables:
            return False
        from ..plan.options import parse_switch
        return bool(parse_switch("strict", self.variables["strict"]))


class StageCheck:
    """A stage task's up-to-date check (against the values its action left: run_stage).

    The signature is stated because doit works out each check's signature for every task: a
    fifth of a 600-task no-op otherwise."""
    __signature__ = CHECK_SIGNATURE

    def __init__(self, session: Session):
        self.session = session

    def __call__(self, task, values):
        return self.session.up_to_date(task, values)


