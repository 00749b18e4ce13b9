"""Suites at scale, measured in one run: (a) kiln's no-op over a folder of 500 ONNX cases, some
of them remembered failures, against bare doit with as many file_dep tasks; (b) a cold suite
of ONNX's own node test cases with timing off, in cases per minute, against IREE's own tools
doing the same work per case with as many jobs; (c) planning a 2,000-case folder, cold and
from the plan memo.

    .venv/bin/python benchmarks/bench_suite.py [--parts abc] [--cases 500] [--failing 5]
        [--kinds 5] [--repeat 5] [--node-cases 200] [--node-repeat 3] [--plan-cases 2000]
        [--jobs N] [--keep DIR]

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

(b) writes --node-cases seeded random node test cases (onnx_node_suite.py; -1: every one)
once, then --node-repeat times, interleaved (kiln first, then the direct tools; the next
repeat the other way round): kiln's cold run (a fresh project and cache: `doit -n J -P
thread validate model=DIR target=cpu variants=default timing=off`) and the same cases through
IREE's own tools (onnx_node_suite.direct_suite: iree-import-onnx as `python -m
iree.compiler.tools.import_onnx`, the real iree-compile to a .vmfb for llvm-cpu, the real
iree-run-module, the outputs compared with output_N.pb), J cases at a time in a process
pool. It prints each side's cases a minute (median, min-max), the ratio kiln / direct
(target: at least 0.8) and where kiln's time went, per stage (run.json's stage_times: the
tools' share and kiln's own), from its median run.

(c) writes --plan-cases tiny cases as (a) does and times `doit list` of the folder (the plan
made, nothing run), median and min-max of --repeat, interleaved: cold (no build/: no plan
memo, no remembered model facts), with the model facts remembered (the plan memo gone: what
an edit of targets.yaml costs), and from the plan memo (target: at most 2 s cold on 2 cores),
each in wall and in CPU seconds (user+sys of doit and the tools it starts: what other work on
the machine moves less). Profile a cold one with `python -m cProfile -o plan.prof -m doit
list model=DIR target=cpu timing=off variants=default` in --keep's plan/proj; count its
instructions, which no load moves, with `valgrind --tool=callgrind python -m doit list ...`
(docs/DESIGN.md §10.6).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import ENV, bare_project, cpu_name, doit, timed  # noqa: E402
from onnx_node_suite import direct_suite, run_kiln, write_cases  # noqa: E402

sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent)]
from conftest import copy_project  # noqa: E402

from pipeline.report import timesplit  # noqa: E402

OPS = ("Add", "Sub", "Mul", "Max", "Min")
SHARED = ("the machine's cores are shared with other work: figures vary from run to run; "
          "each ratio is of two sides timed in turn")


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


def pace(node_cases: int, repeat: int, jobs: int, root: Path) -> dict:
    """(b): kiln's cold run and IREE's own tools on the same node test cases, `repeat` times
    each, interleaved: their seconds, passes and kiln's time split per run."""
    chosen = write_cases(None if node_cases < 0 else node_cases, None, 0, root / "cases")
    names = [case.name for case in chosen]
    runs: dict[str, list] = {"kiln": [], "direct": []}
    for turn in range(repeat):
        for side in ("kiln", "direct") if turn % 2 == 0 else ("direct", "kiln"):
            runs[side].append(_kiln_cold(root, turn, jobs) if side == "kiln" else
                              _direct(root / "cases", names, jobs))
            seconds, passed = runs[side][-1][:2]
            print(f"  {side} {turn + 1}/{repeat}: {len(names)} cases in {seconds:.1f} s, "
                  f"{passed} passed", flush=True)
    return {"cases": len(names), **runs}


def _kiln_cold(root: Path, turn: int, jobs: int) -> tuple[float, int, dict | None]:
    """kiln's cold run in a fresh project (its own empty cache): (seconds, passes, stage_times)."""
    shutil.rmtree(root / f"kiln-{turn}", ignore_errors=True)   # (a --keep of an earlier run)
    project = copy_project(root / f"kiln-{turn}")
    found, seconds = run_kiln(project, root / "cases", jobs)
    split = json.loads((project / "build" / "run.json").read_text()).get(timesplit.FIELD)
    shutil.rmtree(project, ignore_errors=True)   # (its cache and build: a few hundred MB)
    return seconds, sum(passed for passed, *_ in found.values()), split


def _direct(folder: Path, names: list[str], jobs: int) -> tuple[float, int]:
    found, seconds = direct_suite(folder, names, jobs)
    return seconds, sum(found.values())


def pace_lines(found: dict, jobs: int) -> list[str]:
    """(b)'s figures: each side's rate, the ratio, and where kiln's median run spent it."""
    cases = found["cases"]
    rates = {side: [cases / run[0] * 60 for run in found[side]] for side in ("kiln", "direct")}
    ratios = [k / d for k, d in zip(rates["kiln"], rates["direct"])]
    lines = [f"(b) {cases} ONNX node test cases, cold, timing off, {jobs} jobs each, "
             f"{len(ratios)} runs each, interleaved:"]
    for side, words in (("kiln", "kiln (doit -n)"), ("direct", "IREE's tools (process pool)")):
        passed = sorted({run[1] for run in found[side]})
        lines.append(f"    {words}: {_spread(rates[side], '.1f')} cases a minute; passed "
                     f"{'/'.join(map(str, passed))} of {cases}")
    lines.append(f"    ratio kiln / direct: {_spread(ratios, '.2f')} (target: at least 0.8)")
    median_run = sorted(found["kiln"], key=lambda run: run[0])[len(found["kiln"]) // 2]
    if median_run[2]:
        lines += ["    where kiln's time went (its median run; seconds summed over jobs):",
                  *(f"      {line}" for line in
                    timesplit.table(median_run[2], "simple").splitlines())]
    return lines


def _spread(values: list[float], spec: str) -> str:
    """'41.2 (39.0-44.1)': the median and the range."""
    return f"{format(statistics.median(values), spec)} ({format(min(values), spec)}-" \
        f"{format(max(values), spec)})"


def planning(cases: int, repeat: int, root: Path) -> dict[str, list[tuple[float, float]]]:
    """(c): `doit list` of a folder of `cases` tiny cases, cold, with the model facts
    remembered and from the plan memo, `repeat` times each, interleaved: their (wall, CPU)
    seconds."""
    for old in (root / "cases", root / "proj"):   # (a --keep of an earlier run)
        shutil.rmtree(old, ignore_errors=True)
    for i in range(cases):
        write_case(root / "cases", i, len(OPS), False)
    project = copy_project(root / "proj")
    args = ("list", f"model={root / 'cases'}", "target=cpu", "timing=off", "variants=default")
    kiln = project / "build" / ".kiln"
    times: dict[str, list[tuple[float, float]]] = {"cold": [], "facts": [], "memo": []}
    for _ in range(repeat):
        shutil.rmtree(project / "build", ignore_errors=True)   # no memo, no facts
        for path in project.glob(".doit.db*"):
            path.unlink()
        times["cold"].append(_timed_once(project, args))
        (kiln / "plan-memo.marshal").unlink()   # (the facts stay)
        times["facts"].append(_timed_once(project, args))
        times["memo"].append(_timed_once(project, args))
    return times


def _timed_once(project: Path, args: tuple) -> tuple[float, float]:
    """(wall, CPU) seconds of one doit run: CPU is user + system time of doit and the tools it
    started, which other work on the machine moves less than the wall time."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    doit(project, *args)
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def planning_lines(times: dict[str, list[tuple[float, float]]], cases: int) -> list[str]:
    words = {"cold": "cold (no build/)", "facts": "model facts remembered, no plan memo",
             "memo": "from the plan memo"}
    return [f"(c) planning a {cases}-case folder for cpu, `doit list`, seconds, median "
            f"(min-max) of {len(times['cold'])}, target at most 2 s cold:",
            *(f"    {words[kind]}: {_spread([w for w, _ in runs], '.2f')}, CPU (user+sys) "
              f"{_spread([c for _, c in runs], '.2f')}" for kind, runs in times.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run")
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--failing", type=int, default=5, help="cases with a remembered failure")
    parser.add_argument("--kinds", type=int, default=5, choices=range(1, len(OPS) + 1))
    parser.add_argument("--repeat", type=int, default=5, help="(a)'s and (c)'s timings")
    parser.add_argument("--node-cases", type=int, default=200,
                        help="(b)'s seeded sample of node test cases; -1: every one")
    parser.add_argument("--node-repeat", type=int, default=3, help="(b)'s runs of each side")
    parser.add_argument("--plan-cases", type=int, default=2000, help="(c)'s folder")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2,
                        help="doit -n for the cold builds, and the direct tools' pool")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="kiln-bench-suite-"))
    root.mkdir(parents=True, exist_ok=True)
    said = []
    if "a" in args.parts:
        said += no_op_lines(args, root / "suite")
    if "b" in args.parts:
        said += pace_lines(pace(args.node_cases, args.node_repeat, args.jobs, root / "node"),
                           args.jobs)
    if "c" in args.parts:
        said += planning_lines(planning(args.plan_cases, args.repeat, root / "plan"),
                               args.plan_cases)
    print(f"\nCPU: {cpu_name()}, {os.cpu_count()} cores; {SHARED}")
    print("\n".join(said))


def no_op_lines(args, root: Path) -> list[str]:
    """(a): the no-op of the suite against bare doit."""
    suite, n_tasks, second = suite_project(root, args.cases, args.failing, args.kinds,
                                           args.jobs)
    bare_project(root.parent / "bare", n_tasks)
    what = check_no_op(root / "proj", suite, args.failing)
    kiln, bare = timed(root / "proj", suite, args.repeat), timed(root.parent / "bare", (),
                                                                args.repeat)
    return [f"(a) no-op of a {args.cases}-case ONNX suite with {args.failing} remembered "
            f"failures (xfail), {n_tasks} stage tasks ({what}; no plan made):",
            f"    kiln {kiln:.3f} s, bare doit {bare:.3f} s ({n_tasks} file_dep tasks), ratio "
            f"{kiln / bare:.2f}x (median of {args.repeat}); the first run after the build "
            f"{second:.3f} s (the failures first reported from the cache; it writes the record)"]


if __name__ == "__main__":
    main()
