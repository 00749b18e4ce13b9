"""Stages run on a real Dask cluster on loopback: a LocalCluster of 2 worker processes, or a
`dask scheduler` with `dask worker` processes; doit stays the scheduler of record."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import needs_torch

pytest.importorskip("distributed", reason="needs kiln[dask]")
pytestmark = needs_torch
DASK = str(Path(sys.executable).parent / "dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """dask scheduler + dask worker processes (no nanny: a killed worker stays dead)."""

    def __init__(self, tmp_path):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.tmp = tmp_path
        self.procs = [self._start("scheduler", "--host", "127.0.0.1", "--port",
                                  self.address.rsplit(":", 1)[1], "--dashboard-address", ":0")]
        self.workers = []

    def _start(self, *args):
        return subprocess.Popen([DASK, *args], stdout=subprocess.DEVNULL,
                                stderr=open(self.tmp / f"dask-{len(os.listdir(self.tmp))}.log", "w"))

    def add_worker(self, *extra):
        worker = self._start("worker", self.address, "--nthreads", "1", "--no-nanny",
                             "--host", "127.0.0.1", "--dashboard-address", ":0", *extra)
        self.workers.append(worker)
        self.procs.append(worker)
        return worker

    def close(self):
        # killed, not terminated: a terminated worker spends 20 s trying to say goodbye to
        # a scheduler that is going too (two teardowns took 20 s each); nothing here is
        # about a graceful shutdown
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=20)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def test_a_matrix_runs_on_a_local_cluster_and_fills_the_remote(project, cache_server):
    proc = project.doit("-n", "2", "-P", "thread", "validate", "model=mlp", "target=cpu,vulkan",
                        "executor=local:2", env_extra=cache_server.env("write"))
    record = project.record()
    assert {t["status"] for t in record} == {"ran"}, proc.stdout
    assert all(t["worker"].startswith("tcp://127.0.0.1:") for t in record)
    assert all(t["result"]["passed"] for t in record if t["stage"] == "validate")
    assert all(t["remote"] == "stored" for t in record)
    assert (project.root / "build" / "mlp" / "vulkan" / "codegen" / "module.vmfb").is_file()
    proc = project.doit("validate", "model=mlp", "target=cpu,vulkan", "executor=local:2",
                        env_extra=cache_server.env("read"))
    assert set(project.statuses().values()) == {"up-to-date"}
    # an up-to-date task did nothing this run: no worker, no remote outcome, no remote line
    assert not any("worker" in t or "remote" in t for t in project.record())
    assert "remote cache:" not in proc.stdout


def _stage_process_of(worker_pid: int) -> int | None:
    """The kiln process a worker started for a stage, if one is running now."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == worker_pid and b"KILN-RESULT" in cmdline:
            return int(pid)
    return None


def test_a_worker_killed_mid_stage_is_rescheduled_and_the_run_completes(project, cluster):
    first, second = cluster.add_worker(), cluster.add_worker()
    run = subprocess.Popen([sys.executable, "-m", "doit", "-n", "2", "-P", "thread", "validate",
                            "model=mlp", "target=cpu", "variants=default",
                            f"executor={cluster.address}"],
                           cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    deadline = time.time() + 120
    victim = None
    while victim is None and time.time() < deadline and run.poll() is None:
        victim = next((w for w in (first, second) if _stage_process_of(w.pid)), None)
        time.sleep(0.02)
    assert victim is not None, "no stage started on a worker"
    os.kill(victim.pid, signal.SIGKILL)
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out
    record = project.record()
    assert len(record) == 9 and all(t["status"] == "ran" and t["worker"] for t in record)
    assert all(t["result"]["passed"] for t in record if t["stage"] == "validate")


def test_no_worker_is_a_clear_error_not_a_hang(project, cluster):
    started = time.time()
    proc = project.doit("validate", "model=mlp", "target=cpu", f"executor={cluster.address}",
                        check=False, timeout=120, env_extra={"KILN_EXECUTOR_TIMEOUT": "3"})
    assert proc.returncode != 0 and time.time() - started < 100
    capture = next(t for t in project.record() if t["stage"] == "capture")
    assert capture["status"] == "failed"
    assert f"executor={cluster.address}: no Dask worker joined within 3 s" in capture["error"]


def test_a_device_stage_goes_only_to_a_worker_that_declares_the_device(project, cluster):
    cluster.add_worker()       # declares no vulkan
    project.doit("validate", "model=mlp", "target=vulkan", f"executor={cluster.address}",
                 check=False)
    statuses = project.statuses()
    assert statuses["codegen:mlp@vulkan"] == "ran"
    validate = next(t for t in project.record() if t["stage"] == "validate")
    assert validate["status"] == "failed"
    assert "no Dask worker declares vulkan=1" in validate["error"]
    cluster.add_worker("--resources", "vulkan=1")
    project.doit("validate", "model=mlp", "target=vulkan", f"executor={cluster.address}")
    validate = next(t for t in project.record() if t["stage"] == "validate")
    assert validate["status"] == "ran" and validate["result"]["passed"]
    assert validate["worker"] == f"tcp://127.0.0.1:{cluster_worker_port(cluster, -1)}"


def cluster_worker_port(cluster, index) -> str:
    from distributed import Client
    with Client(cluster.address, timeout=10) as client:
        workers = client.scheduler_info()["workers"]
        return next(a for a, w in workers.items() if w.get("resources", {}).get("vulkan")
                    ).rsplit(":", 1)[1]
