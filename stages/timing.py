"""Honest speed figures for validate: the IREE module's time per call and the framework's own
time per call on the same inputs and the same number of threads.

Both are measured the same way: a warm-up that is not counted, then several repetitions (each
long enough for the clock to resolve it: many calls of a fast model, one of a slow one), and
the median with the spread (min, max). A timing has the machine to itself (no other stage
runs meanwhile: pipeline.run.machine): a compile or a timing sharing the cores would show. A
module so slow that one call exceeds the time budget (ResNet-18 on lavapipe: minutes) is not
repeated; its figure says so. KILN_TIMING_REPETITIONS sets how many repetitions at most (the
test suite times with 3: quicker, noisier figures); validate records it and keys by it.

The framework's time does not depend on the target: within one doit process it is measured
once per model (its captured files, by content) and thread count, and shared by the targets
timed with as many threads.

Run as `python -m stages.timing FRAMEWORK CAPTURE_DIR THREADS OUT.json [REPETITIONS]`, this
module is the fresh process that times a framework: its cores and threads are set before the
framework is imported, and the framework's thread pools never compete with doit's own threads.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from pipeline import process

REPETITIONS = 10     # at most; fewer when they would not fit the budget
REPETITIONS_ENV = "KILN_TIMING_REPETITIONS"   # a lower (or higher) "at most"
MAX_REPETITIONS = 100
BUDGET_S = 10.0      # about how long the repetitions of one measurement may take
REPETITION_S = 0.02  # a repetition lasts at least this long: many calls of a fast model
WARMUP_S = 0.1       # warm-up before the repetitions (at least one call)
FRAMEWORK_TIMEOUT_S = 900


def repetitions_setting(environ=None) -> int:
    """At most how many repetitions one measurement takes: KILN_TIMING_REPETITIONS, or
    REPETITIONS. A ValueError naming the variable and what is valid for anything else."""
    text = (os.environ if environ is None else environ).get(REPETITIONS_ENV, "").strip()
    if not text:
        return REPETITIONS
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_REPETITIONS:
        raise ValueError(f"{REPETITIONS_ENV}={text!r}: expected a whole number of timing "
                         f"repetitions from 1 to {MAX_REPETITIONS} (default {REPETITIONS})")
    return count


def spread(times_ms: list[float]) -> dict:
    """Median, min, max and count of per-call times (ms)."""
    if not times_ms:
        raise ValueError("no times to summarize")
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms),
            "max_ms": max(times_ms), "runs": len(times_ms)}


def ratio(latency: dict | None, framework: dict | None) -> float | None:
    """IREE's median over the framework's (> 1: IREE is slower), or None."""
    if not latency or not framework or not framework.get("median_ms"):
        return None
    return latency["median_ms"] / framework["median_ms"]


def cores() -> list[int]:
    """One logical CPU per physical core this process may run on. IREE's local-task, torch and
    onnxruntime all default to one thread per physical core; timing both sides with this many
    threads compares them on equal terms."""
    allowed = sorted(os.sched_getaffinity(0))
    seen, chosen = set(), []
    for cpu in allowed:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            core = (topology / "physical_package_id").read_text().strip(), \
                (topology / "core_id").read_text().strip()
        except OSError:
            core = ("cpu", str(cpu))   # no topology: count every logical CPU
        if core not in seen:
            seen.add(core)
            chosen.append(cpu)
    return chosen


def threads_for(driver: str) -> int:
    """The threads IREE computes with on this driver, which the framework gets too:
    local-sync runs inline (1), local-task one worker per core (pinned to that count),
    a GPU driver's host threads do no arithmetic (the framework gets one per core)."""
    return 1 if driver.split("://")[0] == "local-sync" else len(cores())


@contextlib.contextmanager
def one_at_a_time(ctx):
    """The machine to this measurement alone (pipeline.run.machine: the stages already running
    finish first, and none starts until it is done). Yields a phrase for the "how" of every
    figure measured under it."""
    started = time.monotonic()
    with ctx.alone():
        waited = time.monotonic() - started
        if waited > 1:
            ctx.log(f"waited {waited:.1f} s for the other stages to finish before timing")
        state = "no other stage running" if ctx.machine is not None else \
            "not serialized with other stages (no machine lock)"
        # a busy machine slows a framework's spinning thread pools far more than IREE's:
        # the load says how much to trust the figures
        yield f"{state}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


# --- the IREE module ---------------------------------------------------------------------

def iree_plan(call_ms: float, repetitions: int = REPETITIONS) -> int | None:
    """Repetitions (at most `repetitions`) for a module whose call takes about call_ms (an
    upper bound: process start and load included), or None when one call alone exceeds the
    budget."""
    if call_ms > BUDGET_S * 1000:
        return None
    return max(1, min(repetitions, int(BUDGET_S * 1000 // max(call_ms, 1e-3))))


def iree_benchmark_flags(repetitions: int, driver: str, threads: int) -> list[str]:
    flags = ["--benchmark_format=json", f"--benchmark_repetitions={repetitions}",
             f"--benchmark_min_time={REPETITION_S}s", f"--benchmark_min_warmup_time={WARMUP_S}"]
    if driver.split("://")[0] == "local-task":
        flags.append(f"--task_topology_group_count={threads}")
    return flags


def iree_latency(report: dict, driver: str, threads: int, serialized: str) -> dict:
    """The figure from iree-benchmark-module's JSON: one time per repetition (each the mean
    of that repetition's calls; the tool chooses how many calls reach REPETITION_S)."""
    times = iree_times(report)
    runs = [b for b in report["benchmarks"] if b.get("run_type", "iteration") == "iteration"]
    calls = sorted({b.get("iterations", 1) for b in runs})
    per = f"{calls[0]} call{'s' if calls[0] > 1 else ''}" if len(calls) == 1 else \
        f"{calls[0]}-{calls[-1]} calls"
    threading = f"{_threads(threads)} (--task_topology_group_count)" \
        if driver.split("://")[0] == "local-task" else f"{driver} device"
    how = (f"iree-benchmark-module: median of {len(times)} repetitions of {per} after a "
           f"{WARMUP_S:g} s warm-up, module load excluded; {threading}; {serialized}")
    return {**spread(times), "how": how}


def iree_times(report: dict) -> list[float]:
    """The per-call times (ms) of iree-benchmark-module's JSON, one per repetition (not the
    aggregates); a ValueError when it reported none."""
    unit = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1000.0}
    runs = [b for b in report.get("benchmarks", [])
            if b.get("run_type", "iteration") == "iteration"]   # not the aggregates
    if not runs:
        raise ValueError("iree-benchmark-module reported no runs")
    return [b["real_time"] * unit[b.get("time_unit", "ns")] for b in runs]


def iree_single_call(wall_ms: float) -> dict:
    """The figure for a module too slow to repeat: its one call, as iree-run-module took it."""
    return {**spread([wall_ms]),
            "how": f"one call, wall clock including module load: a call takes longer than the "
                   f"{BUDGET_S:g} s timing budget, so it was not repeated"}


# --- the framework -----------------------------------------------------------------------

def time_callable(run: Callable[[], object], budget_s: float = BUDGET_S,
                  repetitions: int = REPETITIONS) -> tuple[dict, str]:
    """(spread of per-call ms, how it was measured) for a zero-argument callable: a warm-up
    of WARMUP_S and at least two calls (the first compiles, caches, allocates), runs of
    doubling length to find how many calls last REPETITION_S, then repetitions of that many
    calls, as many as fit the budget. Only the repetitions are counted."""
    started = time.perf_counter()
    warm = 0
    while (time.perf_counter() - started < WARMUP_S or warm < 2) \
            and time.perf_counter() - started < budget_s / 2:
        run()
        warm += 1
    calls, took = 1, _seconds(run, 1)
    if took > budget_s:
        return spread([took * 1000]), (f"one call after a warm-up: a call takes longer than "
                                       f"the {budget_s:g} s timing budget")
    while took < REPETITION_S:                     # not counted either
        calls *= 2
        took = _seconds(run, calls)
    call = took / calls
    calls = max(1, math.ceil(REPETITION_S / call))
    count = max(1, min(repetitions, int(budget_s // (calls * call))))
    times = [_seconds(run, calls) / calls * 1000 for _ in range(count)]
    per = f"{calls} call{'s' if calls > 1 else ''}"
    return spread(times), f"median of {count} repetitions of {per} after a warm-up"


def _threads(count: int) -> str:
    return f"{count} thread{'s' if count != 1 else ''}"


def _seconds(run: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        run()
    return time.perf_counter() - started


# figures already measured by this process: (framework, captured files by content, threads,
# repetitions) -> (figure, the target it was measured for). A doit run validates every target
# in one process (-P thread): a model's second target gets its first's figure.
_measured: dict[tuple, tuple[dict, str]] = {}
_measuring = threading.Lock()


def framework_latency(framework: str, capture: Path, threads: int, serialized: str,
                      log: Callable[[str], None], repetitions: int = REPETITIONS,
                      measured_for: str = "") -> tuple[dict | None, str | None]:
    """(figure, None) for the framework's own run of the captured model, timed in a fresh
    process, or as already timed by this process for the same captured files, threads and
    repetitions (its how says which target it was measured for); (None, why) when it cannot
    be timed. Never raises: validate does not fail for want of a framework time."""
    key = (framework, _contents(capture), threads, repetitions)
    with _measuring:   # a second target waits for the first's figure rather than re-measure
        if key in _measured:
            figure, first = _measured[key]
            log(f"the framework's time: as measured for {first} in this run (same captured "
                f"model, {_threads(threads)}, {repetitions} repetitions at most)")
            return {**figure, "how": f"{figure['how']}; measured once for this model in this run, "
                                     f"with target {first}"}, None
        figure, why = _measure_framework(framework, capture, threads, serialized, log,
                                         repetitions)
        if figure is not None:   # a failure is never remembered: the next target tries again
            _measured[key] = (figure, measured_for or "another target")
    return figure, why


def _contents(capture: Path) -> tuple:
    """What the timing process may read of the captured model, by content."""
    from pipeline.cache.digest import digest_file
    return tuple((str(p.relative_to(capture)), digest_file(p))
                 for p in sorted(capture.rglob("*")) if p.is_file())


def _measure_framework(framework: str, capture: Path, threads: int, serialized: str,
                       log: Callable[[str], None], repetitions: int
                       ) -> tuple[dict | None, str | None]:
    """framework_latency's measurement: `python -m stages.timing` in a fresh process."""
    root = Path(__file__).resolve().parent.parent   # the project whose stages/ this is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "framework.json"
        argv = [sys.executable, "-m", "stages.timing", framework, str(capture), str(threads),
                str(out), str(repetitions)]
        log(f"$ {shlex.join(argv)}")
        try:
            proc = process.run(argv, FRAMEWORK_TIMEOUT_S, tool=f"{framework} timing",
                               cwd=root, env=env)
        except process.ToolTimeout as err:
            return None, str(err)
        except OSError as err:
            return None, f"cannot start the framework's timing: {err}"
        if proc.stderr.strip():
            log(proc.stderr.strip())
        try:
            figure = json.loads(out.read_text())
        except (OSError, ValueError):   # it crashed: its last words say why
            lines = proc.stderr.strip().splitlines()
            return None, (lines[-1] if lines else f"the timing process exited {proc.returncode}")
    if figure.get("why"):
        return None, figure["why"]
    figure["how"] += f"; {serialized}"
    return figure, None


def _pin_cores(threads: int) -> None:
    """Before the framework loads: at most `threads` cores for this process, and the thread
    counts the common runtimes read from the environment."""
    chosen = cores()
    if threads < len(chosen):
        os.sched_setaffinity(0, chosen[:threads])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def main(argv: list[str]) -> int:
    """The framework-timing process: writes {median_ms, min_ms, max_ms, runs, how} or {why}."""
    if len(argv) not in (4, 5):
        print("usage: python -m stages.timing FRAMEWORK CAPTURE_DIR THREADS OUT.json "
              "[REPETITIONS]", file=sys.stderr)
        return 2
    framework, capture, threads, out = argv[0], Path(argv[1]), int(argv[2]), Path(argv[3])
    repetitions = int(argv[4]) if len(argv) == 5 else REPETITIONS
    _pin_cores(threads)
    from pipeline.stage import StageError
    from stages import frameworks
    try:
        adapter = frameworks.get(framework)
        adapter.require()
        run = adapter.runner(capture, frameworks.load_arrays(capture / "inputs.npz"), threads)
        if run is None:
            figure = {"why": f"framework '{framework}' has no run of its own to time"}
        else:
            times, how = time_callable(run, repetitions=repetitions)
            figure = {**times, "how": f"{framework}: {how}; {_threads(threads)} "
                                      f"({adapter.timing_threads})"}
    except StageError as err:
        figure = {"why": str(err)}
    out.write_text(json.dumps(figure))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
