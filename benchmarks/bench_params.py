"""Real-size models through kiln, against a direct iree-compile of the same MLIR.

    .venv/bin/python benchmarks/bench_params.py [--models resnet,bert_base]

For each model (ResNet-18 from models/, a BERT-base-size encoder from benchmarks/models/),
in a throw-away copy of the project with an empty cache, on an llvm-cpu target:
  1. `doit validate` cold: wall time and the peak resident memory of its largest process;
  2. a direct `iree-compile` of the same legalized MLIR with the weights inline (what a user
     would run without kiln): wall time and peak memory;
  3. the sizes of kiln's .vmfb and .irpa against the direct, single-file .vmfb;
  4. whether validation passed, and its numbers.
Peak memory is ru_maxrss of the waited-for children (the largest single process), read
around each run by a fresh Python process so the runs do not see each other's peaks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import copy_project  # noqa: E402

ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
CONFIG = """\
targets:
  cpu: {backend: llvm-cpu, arch: host, atol: 1.0e-3, rtol: 1.0e-3}
matrices:
  default: {models: [resnet], targets: [cpu]}
models:
  bert_base: {factory: benchmarks/models/bert_base.py:build, framework: torch}
"""
# runs argv, then prints its wall seconds and the peak RSS (KiB) of its largest process
MEASURE = """
import resource, subprocess, sys, time
started = time.perf_counter()
with open(sys.argv[1], "rb") as stdin:
    code = subprocess.run(sys.argv[2:], stdin=stdin, stdout=subprocess.DEVNULL).returncode
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def measured(argv: list[str], cwd: Path, stdin: str = "/dev/null") -> tuple[float, float]:
    """(seconds, peak MB) of one command run in a fresh measuring process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, stdin, *argv], cwd=cwd, env=ENV,
                         capture_output=True, text=True, check=True).stdout.split()
    if out[2] != "0":
        sys.exit(f"{' '.join(argv)} failed with exit code {out[2]} (see {cwd}/build/logs)")
    return float(out[0]), float(out[1]) / 1024


def cpu_name() -> str:
    import llvmlite.binding as llvm
    return f"{llvm.get_host_cpu_name()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def bench(model: str, workdir: Path) -> dict:
    root = copy_project(workdir / model)
    shutil.copytree(REPO / "benchmarks" / "models", root / "benchmarks" / "models")
    (root / "targets.yaml").write_text(CONFIG)
    kiln_s, kiln_mb = measured([sys.executable, "-m", "doit", "validate", f"model={model}",
                                "target=cpu"], root)
    build = root / "build" / model
    tasks = json.loads((root / "build" / "run.json").read_text())["tasks"]
    result = next(t for t in tasks if t["stage"] == "validate")["result"]
    lower_log = (root / next(t for t in tasks if t["stage"] == "lower")["log"]).read_text()
    flags = next(line for line in lower_log.splitlines() if line.startswith("$ ")).split(" < ")[0]
    target_flags = [f for f in flags.split()[2:] if f.startswith("--iree-") and "compile-" not in f]
    direct = workdir / f"{model}.direct.vmfb"
    direct_s, direct_mb = measured([str(Path(sys.executable).parent / "iree-compile"), "-",
                                    *target_flags, "-o", str(direct)],
                                   root, str(build / "legalize" / "legalized.mlirbc"))
    stage_s = {t["stage"]: t["seconds"] for t in tasks}
    return {"model": model, "params (M)": _param_count(build) / 1e6,
            "kiln s": kiln_s, "kiln peak MB": kiln_mb,
            "of which lower+codegen s": stage_s["lower"] + stage_s["codegen"],
            "direct iree-compile s": direct_s, "direct peak MB": direct_mb,
            "kiln .vmfb MB": (build / "cpu" / "codegen" / "module.vmfb").stat().st_size / 1e6,
            "kiln .irpa MB": (build / "emit" / "model.irpa").stat().st_size / 1e6,
            "direct .vmfb MB": direct.stat().st_size / 1e6,
            "validated": f"{result['passed']} (max abs {result['max_abs_error']:.1e})"}


def _param_count(build: Path) -> int:
    """Elements moved to the archive (every weight but splats and tiny tensors)."""
    info = json.loads((build / "emit" / "model.json").read_text())
    return sum(math.prod(t["shape"]) for t in info["parameter_tensors"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet,bert_base")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench(model, Path(tmp)) for model in args.models.split(",")]
    print(tabulate(rows, headers="keys", floatfmt=".3g"))
    for row in rows:
        print(f"{row['model']}: kiln/direct time {row['kiln s'] / row['direct iree-compile s']:.2f}x "
              f"(kiln includes capture, import and validation), peak memory "
              f"{row['kiln peak MB'] / row['direct peak MB']:.2f}x")


if __name__ == "__main__":
    main()
