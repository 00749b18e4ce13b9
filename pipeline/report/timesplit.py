"""Where a run's time went: per stage, how many tasks ran or were restored, the seconds they
took, how many of those the external tools took (iree-compile, iree-run-module, ...: each
entry's tool_seconds, from pipeline.process.tool_clock) and kiln's own rest (keys, the
cache's copies and hashes, and a framework's Python where a stage runs it in kiln's process:
capture). The answer to "what is my CI's hour spent on".

The record keeps it as "stage_times" (build/run.json); report.md, report.html and the
console show it. Only what this run did counts: an up-to-date task, one not run for an
upstream failure, a failure reported as it stood, took no time in this run (an up-to-date
row keeps its last run's tool_seconds: not this run's). Seconds are summed over tasks: with
several jobs they overlap, and the sum exceeds the run's wall time.
"""
from __future__ import annotations

from ..vocab import Status
from .units import duration

RAN = (Status.RAN, Status.FAILED)             # the stage ran (and its tools), whatever came of it
RESTORED = (Status.CACHED, Status.CACHED_FAILURE)   # its outputs or its failure came from the cache
FIELD = "stage_times"                         # the record's field
CONSOLE_STAGES = 4                            # the console names the costliest few stages
NOTE = ("Seconds are summed over the stages' tasks (with several jobs they overlap: the sum "
        "exceeds the run's wall time). Tools: the processes a stage started (iree-compile, "
        "iree-run-module, ...); kiln's own: the rest (keys, the cache, and a framework's "
        "Python where a stage runs it in kiln's process: capture).")


def split(tasks: list[dict]) -> dict | None:
    """{"seconds", "tool_seconds", "kiln_seconds", "stages": [one per stage, in the order
    the record first lists it: {"stage", "ran", "restored", "seconds", "tool_seconds",
    "kiln_seconds"}]}, or None where this run did nothing (a no-op run)."""
    per_stage: dict[str, dict] = {}
    for task in tasks:
        if not _did_something(task):
            continue
        row = per_stage.setdefault(task["stage"], {"stage": task["stage"], "ran": 0,
                                                   "restored": 0, "seconds": 0.0,
                                                   "tool_seconds": 0.0})
        row["ran"] += task["status"] in RAN
        row["restored"] += task["status"] in RESTORED
        row["seconds"] += _seconds(task.get("seconds"))
        row["tool_seconds"] += _seconds(task.get("tool_seconds"))
    if not per_stage:
        return None
    stages = [_rounded(row) for row in per_stage.values()]
    total = _rounded({"seconds": sum(s["seconds"] for s in stages),
                      "tool_seconds": sum(s["tool_seconds"] for s in stages)})
    return {**total, "stages": stages}


def of_record(record: dict) -> dict | None:
    """The record's split: as written in it, else (a record from before the field, or one
    a test made) from its tasks."""
    found = record.get(FIELD)
    return found if isinstance(found, dict) and isinstance(found.get("stages"), list) \
        else split(record.get("tasks") or [])


def _did_something(task: dict) -> bool:
    """The task took time in this run, or ran or was restored in it (in no measurable time).
    A skipped task did no stage work: what it took (a millisecond, now and then) was deciding
    not to run, and would list a stage that never ran (a bisect of a case that passed)."""
    if task.get("status") in (Status.UP_TO_DATE, Status.SKIPPED):
        return False
    return _seconds(task.get("seconds")) > 0 or task.get("status") in (Status.RAN, Status.CACHED)


def _seconds(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and value > 0 else 0.0


def _rounded(row: dict) -> dict:
    """row with its seconds to the millisecond and kiln's own share: what its tools did not
    take (never below 0: tools side by side in one stage add up past its wall time)."""
    seconds, tools = round(row["seconds"], 3), round(row["tool_seconds"], 3)
    return {**row, "seconds": seconds, "tool_seconds": tools,
            "kiln_seconds": round(max(seconds - tools, 0.0), 3)}


# --- how the reports say it ----------------------------------------------------------------

def console_lines(found: dict | None) -> list[str]:
    """Two lines: the total and the tools' share, then the costliest stages, each with its
    tools' share; none where the run did nothing."""
    if not found:
        return []
    tasks = sum(s["ran"] + s["restored"] for s in found["stages"])
    lines = [f"time in stages: {_s(found['seconds'])} over {tasks} tasks (summed over "
             f"parallel jobs), {_s(found['tool_seconds'])} of it in tools"
             f"{_share(found)}, {_s(found['kiln_seconds'])} kiln's own"]
    costliest = sorted((s for s in found["stages"] if s["seconds"] > 0),
                       key=lambda s: -s["seconds"])[:CONSOLE_STAGES]
    if costliest:
        more = len([s for s in found["stages"] if s["seconds"] > 0]) - len(costliest)
        lines.append("  " + ", ".join(f"{s['stage']} {_s(s['seconds'])} (tools {_percent(s)})"
                                      for s in costliest)
                     + (f", {more} more (report.md)" if more > 0 else ""))
    return lines


def markdown(found: dict | None) -> list[str]:
    """report.md's section: a row per stage and one for all of them, and what they mean."""
    if not found:
        return []
    return ["## Where the time went", "", table(found), "", NOTE, ""]


def table(found: dict, tablefmt: str = "github") -> str:
    """A row per stage and one for all of them (benchmarks/bench_suite.py prints it too)."""
    from tabulate import tabulate  # (here: the record's field is made on every run)
    return tabulate(
        [*map(_cells, found["stages"]), _cells({**found, "stage": "all stages", **_counts(found)})],
        headers=["stage", "ran", "restored", "seconds", "tools", "kiln's own"],
        tablefmt=tablefmt, disable_numparse=True)


def html_rows(found: dict | None) -> list[dict] | None:
    """report.html's table: a row per stage and a last one for all of them (None: nothing
    took time)."""
    if not found:
        return None
    rows = [*found["stages"], {**found, "stage": "all stages", **_counts(found)}]
    return [{"stage": r["stage"], "ran": r["ran"], "restored": r["restored"],
             "seconds": _s(r["seconds"]), "tools": _s(r["tool_seconds"]) + _share(r),
             "kiln": _s(r["kiln_seconds"])} for r in rows]


def _counts(found: dict) -> dict:
    return {key: sum(s[key] for s in found["stages"]) for key in ("ran", "restored")}


def _cells(row: dict) -> list:
    return [row["stage"], row["ran"], row["restored"], _s(row["seconds"]),
            _s(row["tool_seconds"]) + _share(row), _s(row["kiln_seconds"])]


def _s(seconds: float) -> str:
    return duration(seconds * 1000) if seconds > 0 else "0 s"


def _share(row: dict) -> str:
    """' (65%)': the tools' share of the row's seconds ('' where it took none)."""
    return f" ({_percent(row)})" if row["seconds"] > 0 else ""


def _percent(row: dict) -> str:
    return f"{100 * row['tool_seconds'] / row['seconds']:.0f}%"
