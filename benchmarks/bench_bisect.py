"""What bisect costs: ResNet-18 (and the mlp) on targets.yaml's cpu-bf16 target, whose matmul
inputs are demoted to bf16, so that validate fails and bisect runs; measured in one run on a
throw-away project copy.

    .venv/bin/python benchmarks/bench_bisect.py [--model resnet]

1. `doit validate model=M target=cpu-bf16 timing=off`: the front end, lower, codegen and
   validate of the target, then bisect against the first passing llvm-cpu/vmvx target.
2. From the record: bisect's seconds against the target's own lower + codegen + validate,
   what it named, and the peak memory of the doit process tree (its largest process).
3. The manual way it replaces, with the direct tools on the same MLIR: both builds compiled
   with `--iree-flow-trace-dispatch-tensors` and run, each trace written to a file (what a
   person then diffs by eye): its seconds and the traces' size on disk. kiln streams the
   traces and keeps none: its disk is the three files it leaves in build/.
Figures hold for this machine; the CPU is printed first.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from bench_variants import ENV, cpu  # noqa: E402
from conftest import copy_project  # noqa: E402


def doit(root: Path, *args: str) -> tuple[float, float]:
    """(wall seconds, peak resident MB of the doit process) of one doit run."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "doit", *args], cwd=root, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def manual(root: Path, model: str, failing: dict, reference: dict, tmp: Path) -> tuple[float, int]:
    """(seconds, bytes of trace on disk) of the direct tools doing what bisect does."""
    import numpy as np

    from stages.iree_tools import tool
    from stages.runtime import module_args
    emitted = root / "build" / model / "emit"
    info = json.loads((emitted / "model.json").read_text())
    inputs = list(np.load(root / "build" / model / "capture" / "inputs.npz").values())
    started, size = time.perf_counter(), 0
    for name, target in (("failing", failing), ("reference", reference)):
        module = tmp / f"{name}.vmfb"
        with open(emitted / "model.mlirbc", "rb") as stdin:
            subprocess.run([tool("iree-compile"), "-", "--compile-from=input", *target["flags"],
                            "--iree-flow-trace-dispatch-tensors", "-o", str(module)],
                           stdin=stdin, check=True)
        trace = tmp / f"{name}.trace.txt"
        args = module_args(tmp, module, emitted / "model.irpa", target["driver"],
                            info["entry"], inputs)
        with open(trace, "w") as out:
            subprocess.run([tool("iree-run-module"), *args], stderr=out, stdout=subprocess.DEVNULL,
                           check=True)
        size += trace.stat().st_size
    return time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet")
    args = parser.parse_args()
    print(f"CPU: {cpu()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        root = copy_project(Path(tmp) / "proj")
        wall, _ = doit(root, "validate", f"model={args.model}", "target=cpu-bf16", "timing=off")
        tasks = {t["task"]: t for t in json.loads((root / "build" / "run.json").read_text())["tasks"]}
        case = f"{args.model}@cpu-bf16"
        bisect = tasks[f"bisect:{case}"]
        if bisect["status"] != "ran":
            sys.exit(f"bisect did not run: {bisect.get('status')} {bisect.get('error') or bisect.get('reason')}")
        found = bisect["result"]
        build_s = sum(tasks[f"{stage}:{case}"]["seconds"] for stage in ("lower", "codegen", "validate"))
        kept = sum(f.stat().st_size for f in (root / "build" / args.model / "cpu-bf16" / "bisect").iterdir())
        first = found["first_bad_dispatch"] or {}
        print(f"{args.model}: validate fails on cpu-bf16; the whole run {wall:.1f} s")
        print(f"  bisect: {bisect['seconds']:.1f} s, {bisect['seconds'] / build_s:.1f}x the target's "
              f"lower + codegen + validate ({build_s:.1f} s)")
        print(f"  it named: {found['summary']}")
        print(f"  its own record of the cost: {found['seconds']:.1f} s "
              f"({', '.join(f'{k} {v:.1f} s' for k, v in found['seconds_by_step'].items())})")
        print(f"  dispatches traced: {found['dispatches']['failing']} (cpu-bf16), "
              f"{found['dispatches']['reference']} ({found['reference_target']}); unpaired: "
              f"{found['unpaired']['failing_count']} and {found['unpaired']['reference_count']}")
        print(f"  disk: {kept / 1e3:.0f} kB kept in build/ (no trace is written)")
        # bisect alone (against= names the same reference: another key, so it runs again;
        # the framework is not loaded): the peak memory of its doit process
        alone, peak_mb = doit(root, "bisect", f"model={args.model}", "target=cpu-bf16",
                              "timing=off", f"against={found['reference_target']}")
        print(f"  bisect alone (doit bisect ... against={found['reference_target']}): {alone:.1f} s "
              f"wall, peak memory {peak_mb:.0f} MB")
        params = json.loads((root / "build" / ".kiln" / "tasks" / f"bisect.{case}.json").read_text())
        flags = params["fingerprint"]["params"]
        reference = next(r for r in flags["references"] if r["name"] == found["reference_target"])
        seconds, size = manual(root, args.model, {"flags": flags["flags"], "driver": flags["driver"]},
                               reference, Path(tmp))
        print(f"  the direct tools (2 traced compiles, 2 runs to trace files): {seconds:.1f} s, "
              f"{size / 1e6:.0f} MB of traces on disk; kiln/direct time {bisect['seconds'] / seconds:.2f}x")
        if first:
            print(f"  first bad dispatch: #{first['ordinal']} {first['symbol']}, max abs error "
                  f"{first['max_abs_error']:.3g}, {first['agreeing_before']} agree before it")


if __name__ == "__main__":
    main()
