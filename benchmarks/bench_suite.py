"""Suites at scale, measured in one run: (a) kiln's no-op over a folder of 500 ONNX cases, some
of them remembered failures, against bare doit with as many file_dep tasks; (b) a cold suite
of ONNX's own node test cases with timing off, in cases per minute.

    .venv/bin/python benchmarks/bench_suite.py [--cases 500] [--failing 5] [--kinds 5]
        [--repeat 5] [--node-cases 100] [--jobs N] [--keep DIR]

(a) writes --cases tiny ONNX cases in ONNX's test layout (<case>/model.onnx and
test_data_set_0/input_0.pb, input_1.pb, output_0.pb: one elementwise op, of --kinds kinds, on
two 4-element inputs). The first --failing carry a wrong output_0.pb: validate fails them with
a verdict kiln remembers, and an xfail file lists them, so the suite exits 0 as a CI job
with known failures would. Cases of one kind hold the same bytes, so after each kind's first
case the store serves the rest (an honest build, just a cheap one, as in bench_engine.py).
The suite is built once (doit -n <cores> -P thread), run a second time (the failures now come
from the cache: that run is timed alone), then

    doit model=DIR target=cpu timing=off variants=default xfail=FILE

is timed (median of --repeat) against bench_engine.py's bare doit project with as many
file_dep tasks, and checked: every task up to date or its failure reported from the cache,
and no plan made (no stage module or graph library imported).

(b) is onnx_node_suite.py's cold run (a fresh project and cache) of --node-cases seeded random
node test cases with timing off, stopped after kiln's run (--rate-only there); --node-cases 0
leaves it out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import ENV, bare_project, cpu_name, doit, timed  # noqa: E402
from onnx_node_suite import kiln_suite, rate_line  # noqa: E402

sys.path.insert(0, str(HERE.parent / "tests"))
from conftest import copy_project  # noqa: E402

OPS = ("Add", "Sub", "Mul", "Max", "Min")
SHARED = ("the machine's cores are shared with other work: figures vary from run to run; "
          "the ratio is of two projects timed in turn")


def write_case(folder: Path, index: int, kinds: int, wrong: bool) -> str:
    """Case <index>: OPS[index % kinds] of x = [0 1 2 3] and y = [2 2 2 2], in ONNX's test
    layout; wrong: its expected output is off by 100 + index (a failure of its own key)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    op = OPS[index % kinds]
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in "xyz"]
    graph = helper.make_graph([helper.make_node(op, ["x", "y"], ["z"])], "main", values[:2],
                              values[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x, y = np.arange(4, dtype=np.float32), np.full(4, 2, np.float32)
    z = {"Add": x + y, "Sub": x - y, "Mul": x * y, "Max": np.maximum(x, y),
         "Min": np.minimum(x, y)}[op] + (100 + index if wrong else 0)
    name = f"case_{index:04d}"
    data = folder / name / "test_data_set_0"
    data.mkdir(parents=True)
    (folder / name / "model.onnx").write_bytes(model.SerializeToString())
    for file, array in (("input_0", x), ("input_1", y), ("output_0", z)):
        (data / f"{file}.pb").write_bytes(numpy_helper.from_array(array, file).SerializeToString())
    return name


def suite_project(root: Path, cases: int, failing: int, kinds: int, jobs: int) -> tuple:
    """The kiln project with its suite built and run once more: (the no-op's arguments, how
    many stage tasks it has, the second run's seconds)."""
    copy_project(root / "proj")
    names = [write_case(root / "cases", i, kinds, i < failing) for i in range(cases)]
    (root / "xfail.yaml").write_text("cpu:\n" + "".join(
        f"  {name}: a wrong output_0.pb (bench_suite.py)\n" for name in names[:failing]))
    args = (f"model={root / 'cases'}", "target=cpu", "timing=off", "variants=default",
            f"xfail={root / 'xfail.yaml'}")
    started = time.perf_counter()
    doit(root / "proj", "-n", str(jobs), "-P", "thread", *args)
    print(f"(a) cold build of {cases} cases: {time.perf_counter() - started:.0f} s", flush=True)
    started = time.perf_counter()
    doit(root / "proj", *args)
    second = time.perf_counter() - started
    listed = doit(root / "proj", "list", "--all", "-q", *args).stdout.split()
    return args, sum(1 for name in listed if ":" in name), second


def check_no_op(project: Path, args: tuple, failing: int) -> str:
    """What a no-op run did, checked: every task up to date, a remembered failure, or not run
    after one; and no plan made."""
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=project, check=False,
                          text=True, capture_output=True,
                          env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"})
    statuses = Counter(t["status"] for t in
                       json.loads((project / "build" / "run.json").read_text())["tasks"])
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    planned = sorted(m for m in imported if m.split(".")[0] in ("networkx", "yaml", "stages"))
    if proc.returncode or set(statuses) - {"up-to-date", "failed (cached)", "skipped"} or \
            statuses["failed (cached)"] != failing or planned:
        sys.exit(f"not a no-op (exit {proc.returncode}, {dict(statuses)}, imported "
                 f"{planned[:5]}):\n{proc.stdout[-2000:]}")
    return ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--failing", type=int, default=5, help="cases with a remembered failure")
    parser.add_argument("--kinds", type=int, default=5, choices=range(1, len(OPS) + 1))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--node-cases", type=int, default=100, help="(b)'s sample; 0: no (b)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="doit -n for the cold builds")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="kiln-bench-suite-"))
    root.mkdir(parents=True, exist_ok=True)

    suite, n_tasks, second = suite_project(root / "suite", args.cases, args.failing, args.kinds,
                                           args.jobs)
    bare_project(root / "bare", n_tasks)
    what = check_no_op(root / "suite" / "proj", suite, args.failing)
    kiln, bare = (timed(root / "suite" / "proj", suite, args.repeat),
                  timed(root / "bare", (), args.repeat))
    rate = None
    if args.node_cases:
        chosen, _, found, seconds = kiln_suite(args.node_cases, None, 0, args.jobs, root / "node")
        rate = (rate_line(len(chosen), seconds, args.jobs),
                sum(found.get(c.name, (False,))[0] for c in chosen))

    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores; {SHARED}")
    print(f"(a) no-op of a {args.cases}-case ONNX suite with {args.failing} remembered failures "
          f"(xfail), {n_tasks} stage tasks ({what}; no plan made):")
    print(f"    kiln {kiln:.3f} s, bare doit {bare:.3f} s ({n_tasks} file_dep tasks), ratio "
          f"{kiln / bare:.2f}x (median of {args.repeat}); the first run after the build "
          f"{second:.3f} s (the failures first reported from the cache; it writes the record)")
    if rate:
        print(f"(b) cold ONNX node test cases, timing off: {rate[0]}; {rate[1]} passed")


if __name__ == "__main__":
    main()
