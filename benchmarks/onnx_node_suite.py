"""ONNX's own node test cases through kiln, each failure checked against IREE's own tools.

    .venv/bin/python benchmarks/onnx_node_suite.py [--sample 50] [--cases a,b] [--keep DIR]
        [--jobs N] [--rate-only] [--iree 3.12.0,3.13.0]

Writes every node test case the installed onnx generates (onnx.backend.test.case.node) in
ONNX's test layout (<case>/model.onnx, test_data_set_0/input_N.pb, output_N.pb) into one
folder, and validates the folder with one command in a throw-away copy of this project:

    doit validate model=<folder> target=cpu variants=default [timing=off]

Then each case kiln did not pass is run through IREE's tools directly, as a user would
without kiln: iree-import-onnx, iree-compile for llvm-cpu on this machine's CPU,
iree-run-module on the test data's inputs, its outputs compared with output_N.pb within the
cpu target's atol/rtol (iree-compile and iree-run-module are the real binaries, as kiln starts
them; iree-import-onnx, a Python entry point, is `python -m iree.compiler.tools.import_onnx`). A case that fails there too is IREE's (or, where kiln stopped at
onnxruntime's answer, onnxruntime's); a case that passes there is kiln's own failure. It
prints the three counts, then every case that did not pass through kiln, with its stage and
error and the direct commands. Cases whose data are sequences or optionals (which the test
layout's TensorProto files cannot hold) are counted apart, not run. --rate-only stops after
kiln's run (its rate in cases per minute, and how many passed). --iree builds every case with
each release named (`iree=` on kiln's command line) and prints the upgrade's answer instead
(pipeline/report/upgrade.py: newly failing and newly passing cases, by name) and the run's cost. benchmarks/bench_suite.py
times a cold suite so, against direct_suite: the same cases through IREE's tools, as many at
a time as kiln's jobs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from bench_engine import cpu_name  # noqa: E402  (this script's own folder is on sys.path)
from conftest import copy_project  # noqa: E402
from iree_direct import commands, outputs_match, run_steps, tool  # noqa: E402
from onnx_node_cases import node_cases, writable, write_case  # noqa: E402

ENV = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
ENV["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
ENV["KILN_REPORT_CHARTS"] = "off"
DIRECT_TIMEOUT_S = 120
# iree-import-onnx is a Python entry point, not a binary: its module run by this interpreter
# (what the venv's bin/iree-import-onnx script runs, without depending on PATH)
IMPORT_ONNX = [sys.executable, "-m", "iree.compiler.tools.import_onnx"]


def choose(cases: list, sample: int | None, names: list[str] | None, seed: int) -> list:
    if names:
        by_name = {c.name: c for c in cases}
        return [by_name[n] for n in names]
    return sorted(random.Random(seed).sample(cases, sample), key=lambda c: c.name) \
        if sample and sample < len(cases) else cases


def run_kiln(project: Path, folder: Path, jobs: int, releases: str | None = None
             ) -> tuple[dict, float]:
    """kiln's verdict per case (its validate and pick entries), and the run's seconds."""
    from pipeline.plan.variables import VARIABLES
    args = [sys.executable, "-m", "doit", *(["-n", str(jobs), "-P", "thread"] if jobs > 1 else []),
            "validate", f"model={folder}", "target=cpu", "variants=default",
            *(["timing=off"] if "timing" in VARIABLES else []),
            *([f"iree={releases}"] if releases else [])]
    print("$", shlex.join(args), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=project, env=ENV, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    record = project / "build" / "run.json"
    if not record.exists():
        sys.exit(f"kiln wrote no record:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return verdicts(json.loads(record.read_text())["tasks"]), seconds


def verdicts(tasks: list[dict]) -> dict:
    """case -> (passed, stage it failed at, error, result of validate)."""
    by_model: dict[str, list[dict]] = {}
    for task in tasks:
        by_model.setdefault(task["model"], []).append(task)
    found = {}
    for model, entries in by_model.items():
        validate = next((t for t in entries if t["stage"] == "validate"), {})
        failed = next((t for t in entries if t["status"] == "failed"), None)
        passed = validate.get("status") in ("ran", "cached", "up-to-date") and failed is None
        found[model] = (passed, failed and failed["stage"],
                        failed and (failed.get("error") or "")[:300], validate.get("result"))
    return found


def direct(case_dir: Path, work: Path) -> tuple[bool, str, list[str]]:
    """(passed, what happened, the commands): the case through IREE's own tools."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(case_dir / "model.onnx"))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    mlir, vmfb = work / "model.mlir", work / "model.vmfb"
    data = case_dir / "test_data_set_0"
    inputs = sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    expected = sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    for i, pb in enumerate(inputs):
        np.save(work / f"in{i}.npy", numpy_helper.to_array(onnx.load_tensor(str(pb))))
    outs = [work / f"out{i}.npy" for i in range(len(model.graph.output))]
    steps = [
        [*IMPORT_ONNX, str(case_dir / "model.onnx"),
         *(["--opset-version", "17"] if opset < 17 else []), "-o", str(mlir)],
        [tool("iree-compile"), str(mlir), "--iree-hal-target-device=local",
         "--iree-hal-local-target-device-backends=llvm-cpu", "--iree-llvmcpu-target-cpu=host",
         "-o", str(vmfb)],
        [tool("iree-run-module"), "--device=local-sync", f"--module={vmfb}",
         f"--function={model.graph.name}", *(f"--input=@{work / f'in{i}.npy'}"
                                            for i in range(len(inputs))),
         *(f"--output=@{o}" for o in outs)]]
    ran, what = run_steps(steps, DIRECT_TIMEOUT_S)
    if not ran:
        return False, what, commands(steps)
    want = [numpy_helper.to_array(onnx.load_tensor(str(pb))) for pb in expected]
    got = [np.load(o) for o in outs[:len(want)]]
    # targets.yaml's cpu atol and rtol
    matched, what = outputs_match(got, want, 1e-4, 1e-3, against="output_*.pb")
    return matched, what, commands(steps)


def _direct_case(case_dir: str) -> tuple[str, bool, str]:
    """(the case, passed, what happened) through IREE's own tools, in a temp dir of its own:
    a process pool's unit of work."""
    with tempfile.TemporaryDirectory() as work:
        try:
            passed, what, _ = direct(Path(case_dir), Path(work))
        except Exception as err:   # (a case onnx or numpy cannot read: a failure, not a stop)
            passed, what = False, f"{type(err).__name__}: {err}"
    return Path(case_dir).name, passed, what


def direct_suite(folder: Path, names: list[str], jobs: int) -> tuple[dict[str, bool], float]:
    """IREE's own tools on each case (import, compile to a .vmfb, run, compare with
    output_N.pb), `jobs` cases at a time in a process pool, as kiln runs `jobs` stages at a
    time: (passed per case, the seconds, the pool's start included)."""
    started = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        found = {name: passed for name, passed, _ in
                 pool.map(_direct_case, [str(folder / name) for name in names])}
    return found, time.perf_counter() - started


def onnxruntimes(result: dict | None) -> bool:
    """Whether kiln's failure was only against onnxruntime's answer (the expected outputs
    matched)."""
    return bool(result and result.get("expected", {}).get("passed")
                and result.get("checked", "").startswith("against onnxruntime"))


def kiln_suite(sample: int | None, names: list[str] | None, seed: int, jobs: int,
               root: Path, releases: str | None = None) -> tuple[list, Path, dict, float]:
    """Write the chosen cases under root/cases and validate them in one run of a copy of
    this project at root/proj (its cache is empty unless root is kept from an earlier run):
    (the cases, their folder, kiln's verdicts, the run's seconds)."""
    folder, project = root / "cases", root / "proj"
    chosen = write_cases(sample, names, seed, folder)
    if not project.exists():
        copy_project(project)
    found, seconds = run_kiln(project, folder, jobs, releases)
    return chosen, folder, found, seconds


def write_cases(sample: int | None, names: list[str] | None, seed: int, folder: Path) -> list:
    """The chosen node test cases written afresh into folder, in ONNX's test layout."""
    cases = node_cases()
    runnable = [c for c in cases if writable(c)]
    chosen = choose(runnable, sample, names, seed)
    shutil.rmtree(folder, ignore_errors=True)
    for case in chosen:
        write_case(case, folder)
    print(f"{len(cases)} node test cases in onnx, {len(cases) - len(runnable)} with sequence "
          f"or optional data (not run); {len(chosen)} written to {folder}", flush=True)
    return chosen


def rate_line(cases: int, seconds: float, jobs: int) -> str:
    return (f"kiln: {cases} cases in {seconds:.0f} s ({cases / seconds * 60:.1f} cases per "
            f"minute, doit -n {jobs}), {time.strftime('%Y-%m-%d')}, {cpu_name()}, "
            f"{os.cpu_count()} cores")


def print_upgrade(run_file: Path, cases: int, seconds: float, jobs: int) -> None:
    """The run's upgrade answer: its counts, then each newly failing and newly passing case."""
    from pipeline.report import upgrade
    found = json.loads(run_file.read_text()).get("upgrade")
    print(f"\n{rate_line(cases, seconds, jobs)}")
    if not found:
        sys.exit("the run holds no upgrade answer (one release only?)")
    print(upgrade.summary_line(found))
    for name, aspect, verdict in upgrade.COUNTS:
        changed = [c for c in found["changes"] if (c[aspect] or {}).get("verdict") == verdict]
        for change in changed:
            print(f"  {name}: {change['case']}: {change[aspect]['text']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, help="a seeded random sample of this many cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", help="these cases, comma-separated")
    parser.add_argument("--jobs", type=int, default=1, help="doit -n (stages in parallel)")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    parser.add_argument("--rate-only", action="store_true",
                        help="stop after kiln's run: its rate and passes, no direct IREE check")
    parser.add_argument("--iree", help="releases to build each case with, e.g. 3.12.0,3.13.0: "
                        "print what changed from the oldest to the newest")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="onnx-node-suite-"))
    chosen, folder, found, seconds = kiln_suite(args.sample, args.cases and args.cases.split(","),
                                                args.seed, args.jobs, root, args.iree)
    if args.iree:
        print_upgrade(root / "proj" / "build" / "run.json", len(chosen), seconds, args.jobs)
        return
    if args.rate_only:
        print(f"\n{rate_line(len(chosen), seconds, args.jobs)}\n  passed through kiln: "
              f"{sum(found.get(c.name, (False,))[0] for c in chosen)} of {len(chosen)}")
        return
    rows, counts = [], {"passed through kiln": 0, "IREE's (or onnxruntime's)": 0, "kiln's own": 0}
    for case in chosen:
        passed, stage, error, result = found.get(case.name, (False, "plan", "not in the run", None))
        if passed:
            counts["passed through kiln"] += 1
            continue
        with tempfile.TemporaryDirectory() as work:
            ok, what, commands = direct(folder / case.name, Path(work))
        whose = "kiln's own" if ok and not onnxruntimes(result) else "IREE's (or onnxruntime's)"
        counts[whose] += 1
        rows.append((whose, case.name, stage, error, what, commands))
    print(f"\n{rate_line(len(chosen), seconds, args.jobs)}")
    for name, count in counts.items():
        print(f"  {name}: {count}")
    for whose, name, stage, error, what, commands in sorted(rows):
        print(f"\n[{whose}] {name}: kiln failed at {stage}: {error}\n  directly: {what}")
        for command in commands:
            print(f"    {command}")


if __name__ == "__main__":
    main()
