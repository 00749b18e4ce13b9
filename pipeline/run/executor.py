"""Dask as the engine that runs stages; doit stays the scheduler of record.

    doit -n 8 -P thread validate executor=local:2             # a LocalCluster, 2 processes
    doit -n 8 -P thread validate executor=tcp://host:8786     # an existing cluster

The runner decides restore-or-run as always; a stage that misses the cache is handed here
instead of running in the doit process. A Dask worker runs it in a fresh Python process in the
project directory (the project's own code, as doit would load it), into a private build
directory, and stores the outputs in the cache; the runner then restores them through the
normal verified path. So workers need the project at the same path and the same cache: one
machine, a shared file system, or the remote cache (KILN_REMOTE, set on the workers too).

A stage that needs a device goes only to workers that declare it as a Dask resource
(`dask worker --resources vulkan=1`); a LocalCluster declares the devices this machine has.
A worker that dies mid-stage: Dask reschedules the stage. No worker at all: a clear error
after KILN_EXECUTOR_TIMEOUT seconds (default 60), never a hang. A stage that fails is a
result, not an exception, so compile errors are never retried.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from .. import process
from ..stage import StageError
from ..vocab import Status


class DaskExecutor:
    def __init__(self, where, variables: dict[str, str], root: Path, cache: Path,
                 local_resources=None, script: str = ""):
        self.where = where
        self.variables = {k: v for k, v in variables.items() if k != "executor"}
        self.root, self.cache = root, cache
        self.local_resources = local_resources or (lambda: {})
        self.script = script   # what the worker's kiln process runs (argv[1]: the spec)
        self.timeout = float(os.environ.get("KILN_EXECUTOR_TIMEOUT", "60"))
        self._client = None
        self._lock = threading.Lock()   # two threads must not start two clusters

    def client(self):
        with self._lock:
            if self._client is None:
                from distributed import Client, LocalCluster
                if isinstance(self.where, int):
                    cluster = LocalCluster(n_workers=self.where, threads_per_worker=1,
                                           processes=True, host="127.0.0.1",
                                           dashboard_address=":0",
                                           resources=self.local_resources())
                    self._client = Client(cluster)
                else:
                    self._client = Client(self.where, timeout=self.timeout)
                try:
                    self._client.wait_for_workers(1, timeout=self.timeout)
                except Exception:   # distributed raises TimeoutError (builtins or asyncio's)
                    self._client.close()
                    self._client = None
                    raise StageError(f"executor={self._name()}: no Dask worker joined within "
                                     f"{self.timeout:g} s (KILN_EXECUTOR_TIMEOUT)") from None
            return self._client

    def _name(self) -> str:
        return f"local:{self.where}" if isinstance(self.where, int) else self.where

    def run(self, task_name: str, resources: dict[str, int]) -> dict:
        """Run one stage on a worker; its entry (status, why, result, log) plus 'worker'."""
        client = self.client()
        if resources:
            offered = [w.get("resources", {})
                       for w in client.scheduler_info()["workers"].values()]
            missing = [r for r in resources if not any(o.get(r, 0) >= 1 for o in offered)]
            if missing:
                raise StageError(f"no Dask worker declares {', '.join(f'{r}=1' for r in missing)}"
                                 f" (start one with dask worker --resources {missing[0]}=1)")
        spec = {"vars": self.variables, "task": task_name}
        future = client.submit(_on_worker, str(self.root), str(self.cache), self.script, spec,
                               resources=resources or None, pure=False, retries=0,
                               key=f"kiln-{task_name}-{os.urandom(4).hex()}")
        return future.result()


# a stage's own tools time out well before this (iree-compile after 30 minutes): the limit on
# the worker's whole kiln process, a stage and its tools together
WORKER_TIMEOUT_S = 4 * 3600


def _on_worker(root: str, cache: str, script: str, spec: dict) -> dict:
    """Runs inside a Dask worker: the stage in a fresh process, in the project directory."""
    from distributed import get_worker
    env = {**os.environ, "KILN_CACHE": cache}
    try:
        proc = process.run([sys.executable, "-c", script, json.dumps(spec)], WORKER_TIMEOUT_S,
                           fixed=True, tool="kiln's stage process", cwd=root, env=env)
    except process.ToolTimeout as err:
        return {"status": Status.FAILED, "error": str(err), "command": None, "log_text": "",
                "worker": get_worker().address}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("KILN-RESULT ")]
    if proc.returncode != 0 or not lines:
        result = {"status": Status.FAILED, "error": f"the worker's kiln process exited with "
                  f"{proc.returncode}: {(proc.stderr or proc.stdout).strip()[-800:]}",
                  "command": None, "log_text": proc.stderr[-20000:]}
    else:
        result = json.loads(lines[-1][len("KILN-RESULT "):])
    result["worker"] = get_worker().address
    return result


