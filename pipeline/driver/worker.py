"""The worker side of the Dask executor (pipeline.run.executor): one stage of the plan, run in
a fresh kiln process on a worker, into a private build directory; its outputs go to the cache.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from ..plan.tasks import Plan
from ..run.runner import execute

# run in the project directory by the worker: the plan exactly as doit loads it (dodo.py with
# the same command-line variables), then one node of it
WORKER_SCRIPT = """
import json, runpy, sys
import doit.doit_cmd as cmd
spec = json.loads(sys.argv[1])
cmd.reset_vars()
for name, value in spec["vars"].items():
    cmd.set_var(name, value)
plan = runpy.run_path("dodo.py")["SESSION"].plan()
from pipeline.driver.worker import run_node
print("KILN-RESULT " + json.dumps(run_node(plan, spec["task"])))
"""


def run_node(plan: Plan, task_name: str) -> dict:
    """Worker side: run one node of the plan into a private build directory, the cache (and
    the remote, in write mode) receiving its outputs. The entry comes back (as
    StageEntry.to_dict) with its log as "log_text"."""
    node = plan.nodes_by_task[task_name]
    # (inside this project's build/.tmp: a killed worker leaves nothing outside build/)
    with tempfile.TemporaryDirectory(prefix="kiln-worker-", dir=plan.layout.scratch()) as tmp:
        layout = dataclasses.replace(plan.layout, root=Path(tmp), build=Path(tmp) / "build")
        previous = plan.layout.entry_file(node)   # for the 'why': this project's last build
        if previous.is_file():
            layout.entry_file(node).parent.mkdir(parents=True, exist_ok=True)
            layout.entry_file(node).write_bytes(previous.read_bytes())
        entry = execute(plan.job(node), layout)
        log = layout.log_file(node)
        log_text = log.read_text() if log.is_file() else ""
    # (its outputs' stats are of the private build directory: the coordinator takes its own)
    return {**entry.to_dict(outputs=False), "log_text": log_text}

