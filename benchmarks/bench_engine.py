"""kiln's engine cost at scale: a no-op run and `doit list` of ~600 tasks, against bare doit
with the same number of trivial up-to-date tasks (file_dep + targets, sqlite3 backend).

    .venv/bin/python benchmarks/bench_engine.py [--models 60] [--repeat 5]

The kiln project is a throw-away copy with N hand-written .mlir models declared in a generated
targets.yaml (each enters at legalize: legalize, emit, then lower, codegen, validate and pick
per target, the default variant only, so 10 tasks a model on 2 targets; 60 models give 600
tasks). It is built once for
real: every model holds the same bytes, so after the first model's compiles the content-
addressed store turns the rest into cache hits (an honest build, just a cheap one). Then it
times (median of --repeat) `python -m doit` (no-op) and `python -m doit list` in both
projects and prints both ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import copy_project  # noqa: E402
from test_mlir_files import matmul_mlir  # noqa: E402

# KILN_TOOL_CACHE unset: the project's own probe cache (build/.kiln/), as a real run. Bytecode is
# written (PYTHONDONTWRITEBYTECODE unset), as on a normal install: otherwise every kiln
# module is compiled from source on every run (~0.1 s) while bare doit has one small dodo.py.
ENV = {k: v for k, v in os.environ.items()
       if not k.startswith("KILN_") and k != "PYTHONDONTWRITEBYTECODE"}
ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

TARGETS = """targets:
  cpu:
    backend: llvm-cpu
    arch: host
  vmvx:
    backend: vmvx
"""

BARE_DODO = '''DOIT_CONFIG = {{"backend": "sqlite3", "dep_file": ".doit.db", "default_tasks": ["t"]}}
N = {n}


def task_t():
    for i in range(N):
        yield {{"name": str(i), "actions": ["touch out/%d" % i], "file_dep": ["src/%d" % i],
               "targets": ["out/%d" % i]}}
'''


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def doit(root: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root, env=ENV,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"doit {' '.join(args)} in {root} failed:\n{proc.stdout[-3000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return proc


def timed(root: Path, args: tuple[str, ...], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        doit(root, *args)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def kiln_project(root: Path, n_models: int) -> int:
    copy_project(root)
    (root / "mlir").mkdir()
    lines = [TARGETS, "models:"]
    for i in range(n_models):
        (root / "mlir" / f"m{i:03d}.mlir").write_text(matmul_mlir())
        lines += [f"  m{i:03d}:", "    framework: mlir", f"    file: mlir/m{i:03d}.mlir"]
    names = ", ".join(f"m{i:03d}" for i in range(n_models))
    lines += ["matrices:", "  default:", f"    models: [{names}]", "    targets: [cpu, vmvx]",
              "    variants: [default]", ""]
    (root / "targets.yaml").write_text("\n".join(lines))
    started = time.perf_counter()
    doit(root, "-n", str(os.cpu_count() or 4))
    print(f"kiln: real build of the matrix took {time.perf_counter() - started:.1f} s "
          "(identical models: the store serves all but the first)")
    doit(root)  # settle doit's database (outputs_intact rewrites stats once)
    listed = doit(root, "list", "--all", "-q").stdout.split()
    return sum(1 for name in listed if ":" in name)


def bare_project(root: Path, n_tasks: int) -> None:
    root.mkdir(parents=True)
    (root / "src").mkdir()
    (root / "out").mkdir()
    for i in range(n_tasks):
        (root / "src" / str(i)).write_text(str(i))
    (root / "dodo.py").write_text(BARE_DODO.format(n=n_tasks))
    doit(root)
    doit(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-engine-") as tmp:
        kiln, bare = Path(tmp) / "kiln", Path(tmp) / "bare"
        n_tasks = kiln_project(kiln, args.models)
        bare_project(bare, n_tasks)
        out = doit(kiln).stdout
        record = json.loads((kiln / "build" / "run.json").read_text())["tasks"]
        ran = [t["task"] for t in record if t["status"] != "up-to-date"]
        if ran:   # (past KILN_CONSOLE_CASES cases the console lists no task: the record does)
            sys.exit(f"kiln's no-op run executed tasks: {ran[:10]}\n{out[-2000:]}")
        results = {}
        for label, cmd in (("no-op run", ()), ("doit list", ("list",))):
            results[label] = (timed(kiln, cmd, args.repeat), timed(bare, cmd, args.repeat))
    print(f"CPU: {cpu_name()}")
    print(f"tasks: {n_tasks} ({args.models} .mlir models x 2 targets; bare doit: {n_tasks})")
    for label, (k, b) in results.items():
        print(f"{label:10s}: kiln {k:.3f} s, bare doit {b:.3f} s, ratio {k / b:.2f}x "
              f"(median of {args.repeat})")


if __name__ == "__main__":
    main()
