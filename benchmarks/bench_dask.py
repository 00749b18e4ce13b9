"""The speed-up of running stages on Dask workers, measured in one run.

    .venv/bin/python benchmarks/bench_dask.py [--models mlp,resnet] [--targets cpu,vmvx,vulkan]

Compiles the same matrix (cold: a fresh copy of the project, empty cache) three ways:
in the doit process (`-n N -P thread`, no executor), on `executor=local:1` and on
`executor=local:2`, and prints each wall time and the speed-up of 2 worker processes over 1.
On a 2-core machine the ceiling is 2x; the front end of one model is a chain, so the gain
comes from per-target stages and from different models overlapping.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import copy_project  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cold_compile(models: str, targets: str, executor: str | None, jobs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp) / "proj")
        args = [sys.executable, "-m", "doit", "-n", str(jobs), "-P", "thread", "compile",
                f"model={models}", f"target={targets}"] + ([f"executor={executor}"] if executor else [])
        started = time.perf_counter()
        proc = subprocess.run(args, cwd=root, env=ENV, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"{' '.join(args[3:])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mlp,resnet")
    parser.add_argument("--targets", default="cpu,vmvx,vulkan")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; compile model={args.models} "
          f"target={args.targets}, cold")
    local = cold_compile(args.models, args.targets, None, 2)
    one = cold_compile(args.models, args.targets, "local:1", 2)
    two = cold_compile(args.models, args.targets, "local:2", 2)
    print(f"in the doit process (-n 2 -P thread): {local:7.1f} s")
    print(f"executor=local:1 (1 worker process):   {one:7.1f} s")
    print(f"executor=local:2 (2 worker processes): {two:7.1f} s")
    print(f"speed-up of 2 worker processes over 1: {one / two:.2f}x")


if __name__ == "__main__":
    main()
