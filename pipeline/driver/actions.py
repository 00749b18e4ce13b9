"""What doit runs for kiln's tasks: a stage node (through the runner, here or on a Dask
worker) and `doit prune`; the entry a stage leaves goes to the reporter and to doit's values.
"""
from __future__ import annotations

from pathlib import Path

from doit.exceptions import TaskFailed

from ..cache.store import Store, prune_scratch
from ..names import SCRATCH_DIR
from ..plan.options import parse_days
from ..plan.tasks import Plan, upstream_of
from ..report.record import RunLog
from ..run.executor import DaskExecutor
from ..run.runner import execute
from ..run.uptodate import KeySources, input_state
from ..stage import ConfigError, Node
from ..vocab import Status


def stage_action(plan: Plan, executor: DaskExecutor | None, run: RunLog, task: str,
                 sources: KeySources, soft_deps: list[str] = ()):
    """A stage task's action: the runner's entry goes to the reporter and, as the task's
    values, into doit's database, where the next run's up-to-date check finds it. sources:
    what the task's key is made of (uptodate.KeySources)."""
    node = plan.nodes_by_task[task]
    data = plan.graph.nodes[node]
    job = plan.job(node)
    delegate = None
    # a stage that follows another's failure reads that node's record entry, which only
    # this machine's build/ is sure to hold: it runs here
    if executor is not None and not job.stage.follows:
        resources = job.stage.resources(job.target)
        delegate = lambda: executor.run(node.task_name, resources)  # noqa: E731
    entry = execute(job, plan.layout, delegate=delegate, sources=sources)
    run.entries[node.task_name] = entry   # the reporter's copy, even where build/ is full
    # (see plan.graph; an unfinished stage, soft or not, must not be saved as done)
    if entry.unfinished or entry.failed and not (data["soft"] or data["followed"]):
        return TaskFailed(entry.failure_message())
    values = {"entry": entry.to_dict(fingerprint=False, result_text=True)}
    if soft_deps:   # what the session's check compares next time
        values["soft_inputs"] = _soft_inputs(plan, node, entry.fingerprint, soft_deps)
    if not entry.failed and entry.status != Status.SKIPPED:   # those come back to the runner
        values["watched"] = sources.watched
    return values


def _soft_inputs(plan: Plan, node: Node, fingerprint: dict | None,
                 soft_deps: list[str]) -> dict[str, list | None]:
    """The state of the inputs soft upstreams left, with the digests the runner took for the
    key ('<upstream>/<rel>'); a file is hashed again only where it took none."""
    dirs = {name: up_dir for name, (_, up_dir) in upstream_of(plan, node).items()}
    taken = {}
    for part, digest in ((fingerprint or {}).get("inputs") or {}).items():
        name, _, rel = part.partition("/")
        if name in dirs and digest != "absent":
            taken[str(dirs[name] / rel)] = digest
    return {f: input_state(f, taken.get(f)) for f in soft_deps}


def prune(cache: Path, build: Path, days: str | None):
    try:
        max_age = parse_days(days)
    except ConfigError as err:
        return TaskFailed(str(err))
    print(f"kiln: {Store(cache).prune(max_age)} (unused for {max_age:g} days)")
    scratch = prune_scratch(build / SCRATCH_DIR)
    if scratch:
        print(f"kiln: removed {scratch} temp directories killed runs left in build/.tmp")
    return None

